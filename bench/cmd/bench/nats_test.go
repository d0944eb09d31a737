package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// natsTestURL returns HERALD_NATS_URL (default defaultNATSURL), as the
// driver's tests do, after checking that a server with JetStream answers
// there: a one-line skip on a developer machine without one, a failure
// under CI.
func natsTestURL(t *testing.T) string {
	t.Helper()
	url := testenv.Getenv("HERALD_NATS_URL", defaultNATSURL)
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.NoReconnect())
	if err != nil {
		testenv.Unavailable(t, "nats not reachable at "+url+": "+err.Error())
		return ""
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
	}
	if err != nil {
		testenv.Unavailable(t, "nats at "+url+" has no JetStream: "+err.Error())
	}
	return url
}

// testToken is a run token of the test's own, so that it can name every
// topic its runs may have used.
func testToken() string { return fmt.Sprintf("test-%d", time.Now().UnixNano()) }

// runTopics lists every topic a run of cases under token may have used.
func runTopics(cases []benchCase, token string, runs int) []string {
	var topics []string
	for _, c := range cases {
		for round := range runs {
			topics = append(topics, fmt.Sprintf("bench.%s.%s.%d", c.id, token, round))
		}
	}
	return topics
}

// natsRun runs the nats scenario with small counts against the test
// server and checks that no stream or bucket any run may have created is
// left.
func natsRun(t *testing.T, extra ...string) (table, progress string) {
	t.Helper()
	url := natsTestURL(t)
	t.Setenv("HERALD_NATS_URL", url)
	token := testToken()

	var out, prog bytes.Buffer
	args := slices.Concat([]string{"-scenario", "nats", "-run-token", token}, small, extra)
	if err := run(args, &out, &prog); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, prog.String())
	}

	c, err := dialNATS(config{natsURL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, topic := range runTopics(natsCases(config{batch: 10, keys: 50}), token, 1) {
		tok := natsdriver.Token(topic)
		for _, name := range []string{tok, natsStreamPrefix + tok, "KV_" + natsStreamPrefix + "REL_" + tok} {
			if _, err := c.js.Stream(ctx, name); !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("stream %s: %v, want it deleted", name, err)
			}
		}
	}
	return out.String(), prog.String()
}

func TestNATSScenarioInProcess(t *testing.T) {
	out, progress := natsRun(t, "-isolate=false")
	cases := natsCases(config{messages: 3000, batch: 10, keys: 50, publishers: 4})
	rows := checkRows(t, out, cases)
	checkSlowRows(t, rows, cases, "nats", 1)
	for _, want := range []string{
		"#### " + brokerTablePublish, "#### " + brokerTablePublishBatch, "#### " + brokerTableConsume, "#### " + brokerTableSlow,
		publishOnly.timed(), consumeOnly.timed(), "Servers: NATS ", " with JetStream at ",
		"github.com/ThreeDotsLabs/watermill-nats/v2 v", "github.com/nats-io/nats.go v",
		"| vs reference |", "| handler time (mean) | of nominal ceiling | of bare-sleeper ceiling |",
		"| bare goroutines | 64 goroutines each sleeping 1 ms in a loop, no broker",
		"(1,500 messages)", // the consume rows run half of -n
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(progress, "msgs/s"); got != len(cases) {
		t.Errorf("progress shows %d runs, want %d:\n%s", got, len(cases), progress)
	}
	if got := strings.Count(progress, "ms handler"); got != 4 {
		t.Errorf("progress shows the handler time of %d runs, want 4 (the 1 ms handler rows and the ceiling):\n%s", got, progress)
	}
}

// TestNATSScenarioIsolated runs a case of each mode, a reference and the
// ceiling in child processes.
func TestNATSScenarioIsolated(t *testing.T) {
	out, _ := natsRun(t, "-case", "nats-publish-batch,herald-consume,watermill-consume,nats-slow-c64,ceiling-c64")
	rows := tableRows(out)
	if len(rows) != 5 {
		t.Fatalf("rows = %q, want 5", rows)
	}
	for _, r := range rows {
		checkCPU(t, r)
	}
	if cs := cells(rows[3]); len(cs) < 10 || !strings.HasSuffix(cs[9], "%") || cs[9] == "-" {
		t.Errorf("row %q lacks its share of the bare-sleeper ceiling", rows[3])
	}
}

func TestNATSUnreachable(t *testing.T) {
	// Nothing listens on port 1: the scenario fails before any run, and says
	// where it looked.
	t.Setenv("HERALD_NATS_URL", "nats://127.0.0.1:1")
	var out, progress bytes.Buffer
	err := run(slices.Concat([]string{"-scenario", "nats"}, small), &out, &progress)
	if err == nil || !strings.Contains(err.Error(), "nats at nats://127.0.0.1:1 (HERALD_NATS_URL)") {
		t.Fatalf("run = %v, want an error naming the address", err)
	}
	if progress.Len() > 0 {
		t.Errorf("runs happened:\n%s", progress.String())
	}
}
