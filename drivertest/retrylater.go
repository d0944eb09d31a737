package drivertest

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// RetryLaterRestart checks herald.WithRetryLater through Buses on the
// drivers newDriver makes, for a driver whose delayed messages are
// durable (another driver on the same store, as another process would
// have, sees them). Message 1 of a key fails in round 0 and is re-published
// as a copy due backoff later; message 2 of the key is handled meanwhile;
// the first Bus shuts down and its driver is closed (when it is an
// io.Closer) while the copy waits; a second Bus on a new driver handles
// the copy in round 1, not before it was due, in the failing group only:
// another group of the topic handled both messages once and skips the
// copy. backoff must outlast the first Bus's shutdown (the test logs how
// long the copy still had to wait).
func RetryLaterRestart(t *testing.T, newDriver func(t *testing.T) herald.Driver, backoff time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topic, group, other := Name(t, "t"), Name(t, "g"), Name(t, "o")
	s := &retryLaterScenario{t: t, topic: topic, group: group, other: other, backoff: backoff, written: make(chan time.Time, 4)}

	d1 := newDriver(t)
	first := s.start(ctx, d1, true)
	if err := first.Publish(ctx, Event{Key: "k", Seq: 1}, Event{Key: "k", Seq: 2}); err != nil {
		t.Fatal(err)
	}
	var due time.Time
	select {
	case due = <-s.written:
	case <-ctx.Done():
		t.Fatal("no retry copy written")
	}
	Eventually(t, 30*time.Second, "the key's next message handled", func() bool { return len(s.runsOf(2)) == 1 })
	Eventually(t, 30*time.Second, "group other handled both", func() bool { return s.otherRuns.Load() == 2 })
	Shutdown(t, first)
	if c, ok := d1.(io.Closer); ok {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if waiting := time.Until(due); waiting > 0 {
		t.Logf("bus stopped with the copy due in %v", waiting.Round(time.Millisecond))
	} else {
		t.Logf("the first bus stopped only after the copy was due (slow machine); the restart still checks durability")
	}

	second := s.start(ctx, newDriver(t), false)
	defer Shutdown(t, second)
	Eventually(t, 30*time.Second, "round 1 handled after the restart", func() bool { return len(s.runsOf(1)) == 2 })
	ones := s.runsOf(1)
	if ones[0].round != 0 || ones[1].round != 1 {
		t.Errorf("runs of message 1 %+v, want round 0 then round 1", ones)
	}
	if d := ones[1].at.Sub(ones[0].at); d < backoff {
		t.Errorf("round 1 ran %v after round 0 failed, before its backoff %v", d, backoff)
	}
	if ones[1].at.Before(due) {
		t.Errorf("round 1 ran %v before it was due", due.Sub(ones[1].at))
	}
	Eventually(t, 30*time.Second, "group other skipped the copy", func() bool { return s.otherSkipped.Load() == 1 })
	if n := s.otherRuns.Load(); n != 2 {
		t.Errorf("group other ran %d messages, want 2 (not the copy)", n)
	}
	if n := len(s.runsOf(2)); n != 1 {
		t.Errorf("message 2 ran %d times, want 1", n)
	}
}

type retryLaterRun struct {
	seq, round int
	at         time.Time
}

type retryLaterScenario struct {
	t                   *testing.T
	topic, group, other string
	backoff             time.Duration
	written             chan time.Time // due times of the copies written
	otherRuns           atomic.Int32
	otherSkipped        atomic.Int32
	mu                  sync.Mutex
	runs                []retryLaterRun
}

// start runs a Bus on d with the failing group (failing message 1 in
// round 0 when fail) and the other group.
func (s *retryLaterScenario) start(ctx context.Context, d herald.Driver, fail bool) *herald.Bus {
	t := s.t
	t.Helper()
	bus, err := herald.NewBus(d, herald.WithErrorHandler(func(error) {}), herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Group == s.other && r.Skipped {
			s.otherSkipped.Add(1)
		}
	}))
	must(t, err)
	must(t, herald.Register[Event](bus, s.topic, herald.WithKey(func(e Event) string { return e.Key })))
	must(t, herald.Subscribe(bus, s.group, func(ctx context.Context, e Event, _ *herald.Message) error {
		s.mu.Lock()
		s.runs = append(s.runs, retryLaterRun{seq: e.Seq, round: herald.RetryRound(ctx), at: time.Now()})
		s.mu.Unlock()
		if fail && e.Seq == 1 {
			return errors.New("not yet")
		}
		return nil
	}, herald.WithRetryLater(herald.RetryLaterConfig{Rounds: 2, Backoff: s.backoff, Jitter: -1,
		OnRetryLater: func(_ *herald.Message, _ int, due time.Time, _ error) { s.written <- due }}),
		herald.WithDeadLetter()))
	must(t, herald.Subscribe(bus, s.other, func(context.Context, Event, *herald.Message) error {
		s.otherRuns.Add(1)
		return nil
	}))
	must(t, bus.Start(ctx))
	return bus
}

func (s *retryLaterScenario) runsOf(seq int) []retryLaterRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []retryLaterRun
	for _, r := range s.runs {
		if r.seq == seq {
			out = append(out, r)
		}
	}
	return out
}
