package main

import (
	"regexp"
	"strings"
	"testing"
)

func TestObservability(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	// One trace, each hop indented under the one before.
	chain := regexp.MustCompile(`(?s)\n  checkout transaction \[internal\][^\n]*\n` +
		`    send orders \[producer\][^\n]*messaging.system=herald.outbox[^\n]*\n` +
		`      relay orders \[producer\][^\n]*\n` +
		`        process orders \[consumer\][^\n]*messaging.consumer.group.name=billing \(linked to [0-9a-f]{16}\)\n` +
		`          · event herald.retry herald.attempt=2 herald.previous_error=payment service busy\n` +
		`          charge card \[internal\]`)
	if !chain.MatchString(got) {
		t.Errorf("no trace tree checkout -> send -> relay -> process -> charge card:\n%s", got)
	}
	if n := strings.Count(got, "trace "); n != 1 {
		t.Errorf("%d traces, want 1:\n%s", n, got)
	}
	for _, want := range []string{
		"bus                    ready=true",
		"outbox relay outbox    ready=true",
		`herald.outbox.relayed {"herald.outbox.table":"outbox"} = 1`,
		`herald.outbox.backlog {"herald.outbox.table":"outbox"} = 0`,
		`herald.messages.retried {`,
		`"herald.outcome":"ok"`,
		"messaging.process.duration {",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
}
