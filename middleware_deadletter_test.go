package herald_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

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
