package drivertest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// BreakerOutage checks herald.WithBreaker through a Bus on d: a downstream
// that fails every call for outage (a real window of wall-clock time,
// which begins once the breaker has opened) while events of 8 keys are
// consumed with retries, a dead-letter topic and 4 workers. It checks
// that the breaker opens and shows in CheckHealth, that the handler is
// called at most Failures + concurrency + one probe per cool-down during
// the outage, that nothing is dead-lettered, and that after the outage
// the subscription resumes by itself and handles every event exactly
// once, in per-key order, with the breaker closed again and the Bus
// ready.
func BreakerOutage(t *testing.T, d herald.Driver, outage time.Duration) {
	const (
		keys, perKey = 8, 25
		concurrency  = 4
		failures     = 3
		coolDown     = 100 * time.Millisecond
	)
	topic, group := Name(t, "t"), Name(t, "g")
	ctx := Context(t, outage+2*time.Minute)
	bus := NewBus(t, d, topic)
	defer Shutdown(t, bus)

	var (
		down                      atomic.Bool
		calls, failed, deadLetter atomic.Int32
		mu                        sync.Mutex
		handled                   = make(map[Event]int)
		states                    []string
	)
	down.Store(true)
	order := NewKeyOrder(t)
	errDown := errors.New("downstream unavailable")
	must(t, herald.Subscribe(bus, group, func(ctx context.Context, e Event, m *herald.Message) error {
		calls.Add(1)
		if down.Load() {
			failed.Add(1)
			return errDown
		}
		order.Run(e, func() {
			mu.Lock()
			handled[e]++
			mu.Unlock()
		})
		return nil
	},
		herald.WithConcurrency(concurrency),
		herald.WithRetry(herald.RetryConfig{MaxAttempts: failures, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}),
		herald.WithDeadLetterConfig(herald.DeadLetterConfig{OnDeadLetter: func(*herald.Message, error) { deadLetter.Add(1) }}),
		herald.WithBreaker(herald.BreakerConfig{Failures: failures, CoolDown: coolDown, OnStateChange: func(from, to herald.BreakerState) {
			mu.Lock()
			states = append(states, to.String())
			mu.Unlock()
		}})))
	must(t, bus.Start(ctx))
	events := make([]any, 0, keys*perKey)
	for seq := range perKey {
		for k := range keys {
			events = append(events, Event{Key: fmt.Sprintf("k%d", k), Seq: seq})
		}
	}
	began := time.Now() // no call fails before
	must(t, bus.Publish(ctx, events...))

	Eventually(t, time.Minute, "the breaker opens and the bus reports it", func() bool {
		st := bus.CheckHealth(ctx)
		return !st.Ready && strings.Contains(strings.Join(st.Problems, "\n"), "circuit breaker")
	})
	time.Sleep(outage)
	// Read the count before the downstream comes back: calls made later
	// may succeed.
	failedInOutage := failed.Load()
	down.Store(false)
	elapsed := time.Since(began) // at least the time the calls counted had

	Eventually(t, time.Minute, "every event handled after the outage", func() bool { return order.Handled() >= len(events) })
	Eventually(t, time.Minute, "the bus ready again", func() bool { return bus.CheckHealth(ctx).Ready })

	if n := deadLetter.Load(); n != 0 {
		t.Errorf("%d messages dead-lettered during the outage, want none", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != len(events) {
		t.Errorf("%d events handled, want %d", len(handled), len(events))
	}
	for e, n := range handled {
		if n != 1 {
			t.Errorf("event %+v handled %d times, want once", e, n)
		}
	}
	// Every failed call is one of: the Failures that open the breaker,
	// one per other worker whose attempt was admitted before it opened,
	// and one probe per cool-down. A slow machine makes fewer calls, never
	// more: this is an upper bound.
	probes := int32(elapsed/coolDown) + 1
	if limit := failures + concurrency + probes; failedInOutage > limit {
		t.Errorf("%d failed calls in an outage of %v, want at most %d: the breaker let too many through", failedInOutage, elapsed, limit)
	}
	if failedInOutage < failures {
		t.Errorf("%d failed calls, want at least %d (the breaker opened before the handler failed?)", failedInOutage, failures)
	}
	got := strings.Join(states, " ")
	if !strings.HasPrefix(got, "open half-open") || !strings.HasSuffix(got, "half-open closed") {
		t.Errorf("breaker states %q, want open, half-open, ..., half-open, closed", got)
	}
	st := bus.CheckHealth(ctx)
	subs := st.Details.(herald.BusHealth).Subscriptions
	if len(subs) != 1 || len(subs[0].Breakers) != 1 || subs[0].Breakers[0].State != herald.BreakerClosed {
		t.Errorf("health after the outage: %+v", subs)
	}
	t.Logf("outage %v: %d calls (%d failed), breaker states %s", elapsed.Round(time.Millisecond), calls.Load(), failedInOutage, got)
}
