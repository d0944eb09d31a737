package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memtest"
)

func TestTokenBucket(t *testing.T) {
	clock := newFakeClock()
	b := herald.NewTokenBucket(2, 3, clock.Now) // 2 a second, 3 at once
	var waits []time.Duration
	for range 5 {
		waits = append(waits, b.Reserve())
	}
	// The burst runs at once; then one token every 500 ms, reserved ahead.
	if got, want := fmt.Sprint(waits), "[0s 0s 0s 500ms 1s]"; got != want {
		t.Fatalf("waits %s, want %s", got, want)
	}
	clock.Advance(time.Second) // pays the debt of the two reserved ahead
	if d := b.Reserve(); d != 500*time.Millisecond {
		t.Errorf("after paying the debt: wait %v, want 500ms", d)
	}
	clock.Advance(time.Hour) // a long quiet spell refills the burst, no more
	for i := range 3 {
		if d := b.Reserve(); d != 0 {
			t.Errorf("burst token %d: wait %v", i, d)
		}
	}
	if d := b.Reserve(); d != 500*time.Millisecond {
		t.Errorf("past the burst: wait %v, want 500ms", d)
	}
}

// TestTokenBucketCancelledWaitGivesTheTokenBack: a run whose context ends
// while it waits leaves its token to the next.
func TestTokenBucketCancelledWaitGivesTheTokenBack(t *testing.T) {
	clock := newFakeClock()
	b := herald.NewTokenBucket(1, 1, clock.Now)
	if d := b.Reserve(); d != 0 {
		t.Fatalf("first token: wait %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait: %v, want the end of its context", err)
	}
	if d := b.Reserve(); d != time.Second {
		t.Errorf("after a cancelled wait: wait %v, want 1s (the token given back)", d)
	}
}

// TestThrottleBoundsHandlerRuns: through a Bus with several workers, the
// handler never runs more often than the bucket allows: at any moment at
// most burst + rate x elapsed runs have started, elapsed counted from
// before the bucket was made (a safe upper bound on a noisy machine: a
// slow one only runs fewer). And the throttle loses nothing.
func TestThrottleBoundsHandlerRuns(t *testing.T) {
	const (
		rate  = 200.0
		burst = 5
		n     = 100
	)
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders", herald.WithKey(func(e OrderPlaced) string { return e.ID }))
	var started, over atomic.Int32
	var mu sync.Mutex
	var worst float64 // most runs started beyond rate x elapsed
	begin := time.Now()
	must(t, herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error {
		k := started.Add(1)
		allowed := burst + rate*time.Since(begin).Seconds()
		mu.Lock()
		worst = max(worst, float64(k)-rate*time.Since(begin).Seconds())
		mu.Unlock()
		if float64(k) > allowed+1e-9 {
			over.Add(1)
		}
		return nil
	}, herald.WithConcurrency(8), herald.WithThrottle(rate, burst)))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	events := make([]any, n)
	for i := range events {
		events[i] = OrderPlaced{ID: fmt.Sprintf("o-%d", i)}
	}
	must(t, bus.Publish(ctx, events...))
	eventually(t, "every event handled", func() bool { return started.Load() == n })
	if k := over.Load(); k > 0 {
		t.Errorf("%d runs started beyond burst + rate x elapsed", k)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d runs in %v; at most %.2f ahead of the rate (burst %d)", n, time.Since(begin).Round(time.Millisecond), worst, burst)
}

// TestThrottleShutdownWhileWaiting: a run waiting for a token does not
// hold up Shutdown; its message is delivered again.
func TestThrottleShutdownWhileWaiting(t *testing.T) {
	broker := memtest.Broker(t)
	ctx := testContext(t)
	var mu sync.Mutex
	got := map[string]int{}
	subscribe := func(opts ...herald.SubscribeOption) *herald.Bus {
		bus, err := herald.NewBus(broker, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
		must(t, err)
		herald.MustRegister[OrderPlaced](bus, "orders", herald.WithKey(func(e OrderPlaced) string { return e.ID }))
		must(t, herald.Subscribe(bus, "billing", func(_ context.Context, e OrderPlaced, _ *herald.Message) error {
			mu.Lock()
			got[e.ID]++
			mu.Unlock()
			return nil
		}, opts...))
		must(t, bus.Start(ctx))
		return bus
	}
	handled := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
	}
	first := subscribe(herald.WithConcurrency(2), herald.WithThrottle(0.001, 1)) // one token, the next in 1000 s
	must(t, first.Publish(ctx, OrderPlaced{ID: "o-1"}, OrderPlaced{ID: "o-2"}))
	eventually(t, "the first event handled", func() bool { return handled() == 1 })
	shutdownCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := first.Shutdown(shutdownCtx); err != nil {
		t.Fatalf("Shutdown with a run waiting for a token: %v, want nil", err)
	}
	if n := handled(); n != 1 {
		t.Fatalf("%d handled, want 1", n)
	}
	second := subscribe()
	defer func() { must(t, second.Shutdown(ctx)) }()
	eventually(t, "the waiting event delivered again", func() bool { return handled() == 2 })
}

// TestThrottleWaitIsNotBoundedByAttemptTimeout: RetryConfig.AttemptTimeout
// bounds the handler, not the wait for a token, so a run that waits
// longer than the timeout is not a failed attempt.
func TestThrottleWaitIsNotBoundedByAttemptTimeout(t *testing.T) {
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	var runs, retried atomic.Int32
	must(t, herald.Subscribe(bus, "billing", func(ctx context.Context, _ OrderPlaced, _ *herald.Message) error {
		runs.Add(1)
		return ctx.Err()
	}, herald.WithThrottle(5, 1), // a token every 200 ms
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, AttemptTimeout: 50 * time.Millisecond, InitialBackoff: time.Millisecond,
			OnRetry: func(context.Context, *herald.Message, int, error) { retried.Add(1) }})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "o-1"}, OrderPlaced{ID: "o-2"}, OrderPlaced{ID: "o-3"}))
	eventually(t, "three runs", func() bool { return runs.Load() == 3 })
	if n := retried.Load(); n != 0 {
		t.Errorf("%d retried attempts: the wait for a token counted against the attempt timeout", n)
	}
}
