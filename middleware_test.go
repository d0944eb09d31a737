package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/memory/memdedup"
)

func msg(id string) *herald.Message {
	return &herald.Message{ID: id, Topic: "orders", Key: "k", Headers: herald.Headers{"h": "v"}, Data: []byte("{}")}
}

func TestChainOrder(t *testing.T) {
	var trace []string
	mark := func(name string) herald.Middleware {
		return func(next herald.HandlerFunc) herald.HandlerFunc {
			return func(ctx context.Context, m *herald.Message) error {
				trace = append(trace, name+">")
				err := next(ctx, m)
				trace = append(trace, "<"+name)
				return err
			}
		}
	}
	h := herald.Chain(func(context.Context, *herald.Message) error { trace = append(trace, "h"); return nil },
		mark("a"), nil, mark("b"))
	_ = h(context.Background(), msg("1"))
	if got := strings.Join(trace, " "); got != "a> b> h <b <a" {
		t.Fatalf("got %q", got)
	}
}

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

func TestRecover(t *testing.T) {
	h := herald.Recover()(func(context.Context, *herald.Message) error { panic("boom") })
	err := h(context.Background(), msg("1"))
	var pe *herald.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" || !strings.Contains(string(pe.Stack), "middleware_test.go") {
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

func TestDeadLetter(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	newDL := func(w herald.Writer, onlyUndecodable bool) herald.Middleware {
		return herald.DeadLetterMiddleware(herald.DeadLetterConfig{Writer: w}, "billing", func() time.Time { return now }, onlyUndecodable)
	}
	t.Run("writes the message with its reason after retries give up", func(t *testing.T) {
		w := &recordingWriter{}
		h := newDL(w, false)(herald.Retry(fastRetry(3))(func(context.Context, *herald.Message) error {
			return errors.New("card declined")
		}))
		if err := h(context.Background(), msg("m-1")); err != nil {
			t.Fatalf("a dead-lettered message must be acknowledged: %v", err)
		}
		got := w.all()
		if len(got) != 1 {
			t.Fatalf("%d dead letters", len(got))
		}
		dl := got[0]
		want := map[string]string{
			herald.HeaderDeadLetterAttempts: "3",
			herald.HeaderDeadLetterTopic:    "orders",
			herald.HeaderDeadLetterGroup:    "billing",
			herald.HeaderDeadLetterTime:     "2026-11-23T12:00:00Z",
			"h":                             "v",
		}
		for k, v := range want {
			if dl.Headers[k] != v {
				t.Errorf("header %s = %q, want %q", k, dl.Headers[k], v)
			}
		}
		if dl.Topic != "orders.dlq" || dl.ID != "m-1" || dl.Key != "k" ||
			!strings.Contains(dl.Headers[herald.HeaderDeadLetterReason], "card declined") {
			t.Fatalf("dead letter %+v", dl)
		}
	})
	t.Run("a failed dead-letter write leaves the message unacknowledged", func(t *testing.T) {
		w := &recordingWriter{failures: 1}
		h := newDL(w, false)(func(context.Context, *herald.Message) error { return errors.New("x") })
		if err := h(context.Background(), msg("m-1")); !errors.Is(err, errWrite) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("only undecodable payloads when so configured", func(t *testing.T) {
		w := &recordingWriter{}
		h := newDL(w, true)(
			func(context.Context, *herald.Message) error { return errors.New("plain failure") })
		if err := h(context.Background(), msg("m-1")); err == nil {
			t.Fatal("a plain failure was dead-lettered")
		}
		h = newDL(w, true)(
			func(context.Context, *herald.Message) error { return &herald.DecodeError{Err: errors.New("bad json")} })
		if err := h(context.Background(), msg("m-1")); err != nil || len(w.all()) != 1 {
			t.Fatalf("undecodable: %v, %d dead letters", err, len(w.all()))
		}
	})
	t.Run("shutdown and in-progress errors pass through", func(t *testing.T) {
		w := &recordingWriter{}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		h := newDL(w, false)(func(context.Context, *herald.Message) error { return errors.New("x") })
		if err := h(ctx, msg("1")); err == nil {
			t.Fatal("dead-lettered during shutdown")
		}
		h = newDL(w, false)(func(context.Context, *herald.Message) error { return herald.ErrInProgress })
		if err := h(context.Background(), msg("1")); !errors.Is(err, herald.ErrInProgress) {
			t.Fatalf("got %v", err)
		}
		if len(w.all()) != 0 {
			t.Fatal("something was dead-lettered")
		}
	})
}

func newDedupStore(t testing.TB) dedup.Storage {
	t.Helper()
	s, err := memdedup.New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestDeduplicate(t *testing.T) {
	t.Run("a processed message is skipped", func(t *testing.T) {
		var calls, dups int
		h := herald.Deduplicate(herald.DedupConfig{Storage: newDedupStore(t),
			OnDuplicate: func(*herald.Message) { dups++ }}, "g")(
			func(context.Context, *herald.Message) error { calls++; return nil })
		for range 3 {
			if err := h(context.Background(), msg("m-1")); err != nil {
				t.Fatal(err)
			}
		}
		if calls != 1 || dups != 2 {
			t.Fatalf("calls %d duplicates %d", calls, dups)
		}
	})
	t.Run("a failure releases the claim so the redelivery runs", func(t *testing.T) {
		var calls int
		h := herald.Deduplicate(herald.DedupConfig{Storage: newDedupStore(t)}, "g")(
			func(context.Context, *herald.Message) error {
				calls++
				if calls == 1 {
					return errors.New("fail once")
				}
				return nil
			})
		if err := h(context.Background(), msg("m-1")); err == nil {
			t.Fatal("the failure was swallowed")
		}
		if err := h(context.Background(), msg("m-1")); err != nil || calls != 2 {
			t.Fatalf("redelivery: %v, calls %d", err, calls)
		}
	})
	t.Run("a redrive to the group runs once more, once", func(t *testing.T) {
		var calls int
		h := herald.Deduplicate(herald.DedupConfig{Storage: newDedupStore(t)}, "g")(
			func(context.Context, *herald.Message) error { calls++; return nil })
		redrive := func(group, n string) *herald.Message {
			m := msg("m-1")
			m.Headers = herald.Headers{herald.HeaderRedriveGroup: group, herald.HeaderRedriveCount: n}
			return m
		}
		// The original (dead-lettered: done), two copies of the first
		// redrive, the second redrive, and a redrive meant for another
		// group, which this group's key does not change for.
		for _, m := range []*herald.Message{msg("m-1"), redrive("g", "1"), redrive("g", "1"), redrive("g", "2"), redrive("other", "3")} {
			if err := h(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		}
		if calls != 3 {
			t.Fatalf("handler ran %d times, want 3 (the original and each redrive once)", calls)
		}
	})
	t.Run("groups are deduplicated separately", func(t *testing.T) {
		store := newDedupStore(t)
		var calls int
		handler := func(context.Context, *herald.Message) error { calls++; return nil }
		a := herald.Deduplicate(herald.DedupConfig{Storage: store}, "a")(handler)
		b := herald.Deduplicate(herald.DedupConfig{Storage: store}, "b")(handler)
		_ = a(context.Background(), msg("m-1"))
		_ = b(context.Background(), msg("m-1"))
		if calls != 2 {
			t.Fatalf("calls %d", calls)
		}
	})
	t.Run("concurrent deliveries run the handler once", func(t *testing.T) {
		store := newDedupStore(t)
		for round := range 20 {
			var running, calls atomic.Int32
			release := make(chan struct{})
			h := herald.Deduplicate(herald.DedupConfig{Storage: store}, "g")(
				func(context.Context, *herald.Message) error {
					calls.Add(1)
					running.Add(1)
					<-release
					return nil
				})
			id := fmt.Sprintf("m-%d", round)
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() { errs <- h(context.Background(), msg(id)) })
			}
			eventually(t, "one delivery to claim", func() bool { return running.Load() == 1 })
			close(release)
			wg.Wait()
			close(errs)
			for err := range errs {
				// Deliveries that found the claim taken are told to come back.
				if err != nil && !errors.Is(err, herald.ErrInProgress) {
					t.Fatal(err)
				}
			}
			if calls.Load() != 1 {
				t.Fatalf("round %d: handler ran %d times", round, calls.Load())
			}
			// Those that found the claim busy are redelivered and then skipped.
			if err := h(context.Background(), msg(id)); err != nil || calls.Load() != 1 {
				t.Fatalf("redelivery after commit: %v, calls %d", err, calls.Load())
			}
		}
	})
}

func TestObserve(t *testing.T) {
	var got []herald.HandleResult
	h := herald.Observe("orders", "g", quiet, func(r herald.HandleResult) { got = append(got, r) })(
		func(_ context.Context, m *herald.Message) error {
			if m.ID == "bad" {
				return errors.New("x")
			}
			return nil
		})
	_ = h(context.Background(), msg("ok"))
	_ = h(context.Background(), msg("bad"))
	if len(got) != 2 || got[0].Err != nil || got[1].Err == nil || got[0].Topic != "orders" || got[1].Message.ID != "bad" {
		t.Fatalf("got %+v", got)
	}
}

func TestObserveLogsFailureAttributes(t *testing.T) {
	var buf strings.Builder
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	h := herald.Chain(func(context.Context, *herald.Message) error { return errors.New("boom") },
		herald.Observe("orders", "billing", logger, nil), herald.Retry(fastRetry(2)))
	if err := h(context.Background(), &herald.Message{ID: "m-1", Topic: "orders"}); err == nil {
		t.Fatal("want the error")
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &rec); err != nil {
		t.Fatalf("log %q: %v", buf.String(), err)
	}
	for k, want := range map[string]any{"topic": "orders", "group": "billing", "message_id": "m-1", "attempts": 2.0, "delivery": 1.0, "level": "WARN"} {
		if rec[k] != want {
			t.Errorf("log %s = %v, want %v (%s)", k, rec[k], want, buf.String())
		}
	}
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
