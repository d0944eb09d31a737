package main

import (
	"strings"
	"testing"
)

func TestQuickstart(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "charged o-4"); n != 1 {
		t.Errorf("o-4 charged %d times, want once", n)
	}
	for _, want := range []string{
		"charged o-1 for 42",
		"o-2 attempt 1 failed",
		"charged o-2 for 7 (attempt 2)",
		"o-3 attempt 1 rejected",
		"dead letter",
		"charged o-4 for 9 (attempt 1)",
		"skipped duplicate delivery",
		"refused an unregistered event type",
		"nothing left unacknowledged: true",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
