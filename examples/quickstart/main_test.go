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
	got := out.String()
	for _, want := range []string{
		"charged o-1 for 42 (attempt 1)",
		"o-2 attempt 1 failed",
		"charged o-2 for 7 (attempt 2)",
		"o-3 rejected",
		"dead letter",
		"skipped a duplicate delivery",
		"o-5 rolled back",
		"refused an unregistered event type",
		"refused to publish outside a transaction",
		"rows left in the outbox: 0; unacknowledged: 0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "charged o-5") {
		t.Errorf("a rolled-back order was charged:\n%s", got)
	}
	for _, order := range []string{"o-1", "o-2", "o-4", "o-6"} {
		if n := strings.Count(got, "charged "+order+" "); n != 1 {
			t.Errorf("%s charged %d times, want once:\n%s", order, n, got)
		}
	}
}
