package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestInbox(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"billing: charged o-1 42 (attempt 1), PaymentCaptured in the same transaction",
		"billing: o-2 attempt 1 failed after charging: charge, event and mark rolled back",
		"billing: charged o-2 7 (attempt 2)",
		"shipping: o-1 paid 42, packing",
		"shipping: o-2 paid 7, packing",
		"billing: o-1 delivered again: already handled, skipped",
		"o-1: 1 charge, marked handled: true",
		"o-2: 1 charge, marked handled: true",
		"billing attempts: o-1 1, o-2 2; outbox rows left: 0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "shipping: o-2 paid"); n != 1 {
		t.Errorf("o-2 shipped %d times, want once (its failed attempt's event was rolled back):\n%s", n, got)
	}
}
