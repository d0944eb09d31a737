package herald_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

func fastRetry(attempts int) herald.RetryConfig {
	return herald.RetryConfig{MaxAttempts: attempts, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
}

func TestRetry(t *testing.T) {
	t.Run("succeeds on a later attempt and tells the handler which", func(t *testing.T) {
		var seen []int
		h := herald.Retry(fastRetry(5))(func(ctx context.Context, m *herald.Message) error {
			seen = append(seen, herald.Attempt(ctx))
			if len(seen) < 3 {
				return errors.New("transient")
			}
			return nil
		})
		if err := h(context.Background(), msg("1")); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(seen) != "[1 2 3]" {
			t.Fatalf("attempts %v", seen)
		}
	})
	t.Run("gives up after MaxAttempts with a RetryError", func(t *testing.T) {
		var calls int
		cause := errors.New("always")
		h := herald.Retry(fastRetry(4))(func(context.Context, *herald.Message) error { calls++; return cause })
		err := h(context.Background(), msg("1"))
		var re *herald.RetryError
		if !errors.As(err, &re) || re.Attempts != 4 || calls != 4 || !errors.Is(err, cause) {
			t.Fatalf("err %v, calls %d", err, calls)
		}
	})
	t.Run("a permanent error is not retried", func(t *testing.T) {
		var calls int
		h := herald.Retry(fastRetry(5))(func(context.Context, *herald.Message) error {
			calls++
			return herald.Permanent(errors.New("bad input"))
		})
		err := h(context.Background(), msg("1"))
		if calls != 1 || !herald.IsPermanent(err) {
			t.Fatalf("calls %d err %v", calls, err)
		}
	})
	t.Run("the attempt timeout applies per attempt", func(t *testing.T) {
		var calls int
		cfg := fastRetry(3)
		cfg.AttemptTimeout = 20 * time.Millisecond
		h := herald.Retry(cfg)(func(ctx context.Context, m *herald.Message) error {
			calls++
			if calls < 3 {
				<-ctx.Done() // the first two attempts hang until their own deadline
				return ctx.Err()
			}
			return ctx.Err() // the third runs with a live context
		})
		if err := h(context.Background(), msg("1")); err != nil || calls != 3 {
			t.Fatalf("err %v calls %d: a timed-out attempt must not poison later ones", err, calls)
		}
	})
	t.Run("stops when the delivery context ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var calls int
		h := herald.Retry(herald.RetryConfig{MaxAttempts: 100, InitialBackoff: 10 * time.Millisecond})(
			func(context.Context, *herald.Message) error { calls++; cancel(); return errors.New("x") })
		if err := h(ctx, msg("1")); err == nil || calls != 1 {
			t.Fatalf("err %v calls %d", err, calls)
		}
	})
}

// A permanent error is not retried, and its reason says so rather than
// "gave up after 1 attempt(s)".
func TestRetryPermanentReason(t *testing.T) {
	h := herald.Retry(fastRetry(5))(func(context.Context, *herald.Message) error {
		return herald.Permanent(errors.New("card declined"))
	})
	err := h(context.Background(), msg("1"))
	if got, want := err.Error(), "herald: not retried: permanent: card declined"; got != want {
		t.Errorf("reason %q, want %q", got, want)
	}
	var re *herald.RetryError
	if !errors.As(err, &re) || re.Attempts != 1 {
		t.Errorf("%v: want a RetryError with 1 attempt", err)
	}
}
