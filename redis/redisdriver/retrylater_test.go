package redisdriver_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// TestRetryLaterCopySurvivesRestart: with WithRetryLater a failing
// message is acknowledged and re-published as a delayed copy in Redis;
// the key's next message is handled meanwhile; the bus stops (and its
// driver with it) while the copy waits, and a new bus on a new driver
// runs the copy once it is due, not before, in the failing group only.
func TestRetryLaterCopySurvivesRestart(t *testing.T) {
	env := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topic, group, other := drivertest.Name(t, "t"), drivertest.Name(t, "g"), drivertest.Name(t, "o")
	// Longer than the other tests' backoffs: the first bus's shutdown
	// (which waits out a blocking read) must end while the copy waits.
	const backoff = 3 * time.Second

	type run struct {
		seq, round int
		at         time.Time
	}
	var mu sync.Mutex
	var runs []run
	var otherRuns, otherSkipped atomic.Int32
	written := make(chan time.Time, 4)
	subscribe := func(d *redisdriver.Driver, fail bool) *herald.Bus {
		bus, err := herald.NewBus(d, herald.WithErrorHandler(func(error) {}), herald.WithHandleHook(func(r herald.HandleResult) {
			if r.Group == other && r.Skipped {
				otherSkipped.Add(1)
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
		if err := herald.Register[drivertest.Event](bus, topic, herald.WithKey(func(e drivertest.Event) string { return e.Key })); err != nil {
			t.Fatal(err)
		}
		err = herald.Subscribe(bus, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
			mu.Lock()
			runs = append(runs, run{seq: e.Seq, round: herald.RetryRound(ctx), at: time.Now()})
			mu.Unlock()
			if fail && e.Seq == 1 {
				return errors.New("not yet")
			}
			return nil
		}, herald.WithRetryLater(herald.RetryLaterConfig{Rounds: 2, Backoff: backoff, Jitter: -1,
			OnRetryLater: func(_ *herald.Message, _ int, due time.Time, _ error) { written <- due }}),
			herald.WithDeadLetter())
		if err != nil {
			t.Fatal(err)
		}
		if err := herald.Subscribe(bus, other, func(context.Context, drivertest.Event, *herald.Message) error {
			otherRuns.Add(1)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := bus.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return bus
	}
	runsOf := func(seq int) []run {
		mu.Lock()
		defer mu.Unlock()
		var out []run
		for _, r := range runs {
			if r.seq == seq {
				out = append(out, r)
			}
		}
		return out
	}

	d1 := env.driver(t, redisdriver.WithDelayPollInterval(20*time.Millisecond))
	first := subscribe(d1, true)
	if err := first.Publish(ctx, drivertest.Event{Key: "k", Seq: 1}, drivertest.Event{Key: "k", Seq: 2}); err != nil {
		t.Fatal(err)
	}
	var due time.Time
	select {
	case due = <-written:
	case <-ctx.Done():
		t.Fatal("no retry copy written")
	}
	drivertest.Eventually(t, 30*time.Second, "the key's next message handled", func() bool { return len(runsOf(2)) == 1 })
	drivertest.Eventually(t, 30*time.Second, "group other handled both", func() bool { return otherRuns.Load() == 2 })
	drivertest.Shutdown(t, first)
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if waiting := time.Until(due); waiting > 0 {
		t.Logf("bus stopped with the copy due in %v", waiting.Round(time.Millisecond))
	} else {
		t.Logf("the first bus stopped only after the copy was due (slow machine); the restart still checks durability")
	}

	d2 := env.driver(t, redisdriver.WithDelayPollInterval(20*time.Millisecond))
	t.Cleanup(func() { _ = d2.Close() })
	second := subscribe(d2, false)
	defer drivertest.Shutdown(t, second)
	drivertest.Eventually(t, 30*time.Second, "round 1 handled after the restart", func() bool { return len(runsOf(1)) == 2 })
	ones := runsOf(1)
	if ones[0].round != 0 || ones[1].round != 1 {
		t.Errorf("runs of message 1 %+v, want round 0 then round 1", ones)
	}
	if d := ones[1].at.Sub(ones[0].at); d < backoff {
		t.Errorf("round 1 ran %v after round 0 failed, before its backoff %v", d, backoff)
	}
	if ones[1].at.Before(due) {
		t.Errorf("round 1 ran %v before it was due", due.Sub(ones[1].at))
	}
	drivertest.Eventually(t, 30*time.Second, "group other skipped the copy", func() bool { return otherSkipped.Load() == 1 })
	if n := otherRuns.Load(); n != 2 {
		t.Errorf("group other ran %d messages, want 2 (not the copy)", n)
	}
	if n := len(runsOf(2)); n != 1 {
		t.Errorf("message 2 ran %d times, want 1", n)
	}
}
