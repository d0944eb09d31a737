package herald_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/heraldbus/herald"
)

func TestRecover(t *testing.T) {
	h := herald.Recover()(func(context.Context, *herald.Message) error { panic("boom") })
	err := h(context.Background(), msg("1"))
	var pe *herald.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" || !strings.Contains(string(pe.Stack), "middleware_recover_test.go") {
		t.Fatalf("got %v", err)
	}
	// Retry sees the panic as a failure and runs again.
	var calls int
	h = herald.Retry(fastRetry(2))(herald.Recover()(func(context.Context, *herald.Message) error {
		calls++
		if calls == 1 {
			panic("once")
		}
		return nil
	}))
	if err := h(context.Background(), msg("1")); err != nil || calls != 2 {
		t.Fatalf("err %v calls %d", err, calls)
	}
}
