package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/memory/memdedup"
)

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

func TestDedupKey(t *testing.T) {
	redrive := func(group, n string) *herald.Message {
		return &herald.Message{ID: "m-1", Headers: herald.Headers{herald.HeaderRedriveGroup: group, herald.HeaderRedriveCount: n}}
	}
	for _, c := range []struct {
		m    *herald.Message
		want string
	}{
		{&herald.Message{ID: "m-1"}, "m-1"},
		{&herald.Message{}, ""},
		{redrive("g", "2"), "m-1#redrive-2"},
		{redrive("other", "2"), "m-1"}, // addressed to another group
		{&herald.Message{ID: "m-1", Headers: herald.Headers{herald.HeaderRedriveGroup: "g"}}, "m-1"}, // no count
	} {
		if got := herald.DedupKey("g", c.m); got != c.want {
			t.Errorf("DedupKey(g, %s %v) = %q, want %q", c.m.ID, c.m.Headers, got, c.want)
		}
	}
}
