package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memtest"
	"go.opentelemetry.io/otel/attribute"
)

// breakerOutage is the outage of TestBreakerOutageMemory; CI runs 2 s,
// -breaker-outage=10s runs the full figure.
var breakerOutage = flag.Duration("breaker-outage", 2*time.Second, "downstream outage of TestBreakerOutageMemory")

var errDown = errors.New("downstream unavailable")

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// transitions records a breaker's changes of state.
type transitions struct {
	mu     sync.Mutex
	states []string
}

func (r *transitions) record(from, to herald.BreakerState) {
	r.mu.Lock()
	r.states = append(r.states, from.String()+">"+to.String())
	r.mu.Unlock()
}

func (r *transitions) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.states, " ")
}

// heldCall runs h in the background with a context the test cancels; done
// receives what h returned.
func heldCall(h herald.HandlerFunc) (cancel func(), done <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- h(ctx, msg("held")) }()
	return cancel, ch
}

func TestBreakerStateMachine(t *testing.T) {
	clock := newFakeClock()
	var changes transitions
	c, attempts := herald.NewCircuit(herald.BreakerConfig{Failures: 3, CoolDown: time.Minute, OnStateChange: changes.record}, clock.Now)
	var down atomic.Bool
	var calls atomic.Int32
	h := attempts(func(context.Context, *herald.Message) error {
		calls.Add(1)
		if down.Load() {
			return errDown
		}
		return nil
	})
	ctx := context.Background()
	state := func() herald.BreakerState { return c.Health(clock.Now()).State }

	t.Run("a success resets the count of failures in a row", func(t *testing.T) {
		down.Store(true)
		for range 2 {
			if err := h(ctx, msg("1")); !errors.Is(err, errDown) {
				t.Fatalf("closed breaker: %v, want the handler's error", err)
			}
		}
		if got := c.Health(clock.Now()); got.Failures != 2 || got.State != herald.BreakerClosed || got.LastError != errDown.Error() {
			t.Fatalf("after 2 failures: %+v", got)
		}
		down.Store(false)
		if err := h(ctx, msg("2")); err != nil {
			t.Fatal(err)
		}
		if got := c.Health(clock.Now()); got.Failures != 0 || got.State != herald.BreakerClosed {
			t.Fatalf("after a success: %+v", got)
		}
	})
	t.Run("permanent errors do not count", func(t *testing.T) {
		perm := herald.Permanent(errors.New("bad order"))
		hp := attempts(func(context.Context, *herald.Message) error { return perm })
		for range 5 {
			if err := hp(ctx, msg("p")); !errors.Is(err, herald.ErrPermanent) {
				t.Fatalf("got %v", err)
			}
		}
		if state() != herald.BreakerClosed {
			t.Fatalf("state %v after permanent errors", state())
		}
	})
	t.Run("the third failure in a row opens it and holds the message", func(t *testing.T) {
		down.Store(true)
		for range 2 {
			if err := h(ctx, msg("1")); !errors.Is(err, errDown) {
				t.Fatal(err)
			}
		}
		before := calls.Load()
		cancel, done := heldCall(h)
		eventually(t, "the breaker opens", func() bool { return state() == herald.BreakerOpen })
		got := c.Health(clock.Now())
		if !got.ProbeAt.Equal(clock.Now().Add(time.Minute)) || got.LastError != errDown.Error() {
			t.Errorf("open: %+v, want the probe a cool-down from now", got)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("held call returned %v, want the end of its context", err)
		}
		if n := calls.Load() - before; n != 1 {
			t.Errorf("the handler ran %d times for the held call, want once (the failure that opened it)", n)
		}
	})
	t.Run("after the cool-down a failed probe reopens it", func(t *testing.T) {
		clock.Advance(time.Minute)
		if state() != herald.BreakerHalfOpen {
			t.Fatalf("state %v after the cool-down, want half-open", state())
		}
		before := calls.Load()
		cancel, done := heldCall(h)
		eventually(t, "the probe fails and reopens the breaker", func() bool { return state() == herald.BreakerOpen })
		cancel()
		<-done
		if n := calls.Load() - before; n != 1 {
			t.Errorf("%d calls, want the one probe", n)
		}
	})
	t.Run("a successful probe closes it", func(t *testing.T) {
		down.Store(false)
		clock.Advance(time.Minute)
		if err := h(ctx, msg("ok")); err != nil {
			t.Fatal(err)
		}
		if state() != herald.BreakerClosed {
			t.Fatalf("state %v after a good probe", state())
		}
	})
	want := "closed>open open>half-open half-open>open open>half-open half-open>closed"
	if got := changes.String(); got != want {
		t.Errorf("transitions %q, want %q", got, want)
	}
}

// TestBreakerHalfOpenRunsOneProbe: when the cool-down ends, one attempt
// probes while the others wait for its outcome, and they run once it
// closed the breaker.
func TestBreakerHalfOpenRunsOneProbe(t *testing.T) {
	c, attempts := herald.NewCircuit(herald.BreakerConfig{Failures: 1, CoolDown: 20 * time.Millisecond}, nil)
	ctx := testContext(t)
	var down atomic.Bool
	down.Store(true)
	var running, most atomic.Int32
	release := make(chan struct{})
	h := attempts(func(ctx context.Context, _ *herald.Message) error {
		if down.Load() {
			return errDown
		}
		n := running.Add(1)
		defer running.Add(-1)
		for old := most.Load(); n > old && !most.CompareAndSwap(old, n); old = most.Load() {
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	errs := make(chan error, 6)
	call := func() { errs <- h(ctx, msg("m")) }
	go call() // fails, opens the breaker, is held and probes again after each cool-down
	eventually(t, "the breaker opens", func() bool { return c.Health(time.Now()).State != herald.BreakerClosed })
	down.Store(false)
	for range 5 {
		go call()
	}
	eventually(t, "a probe runs", func() bool { return running.Load() == 1 })
	// Give a breaker that let more than the probe through the time to do
	// it: several cool-downs.
	time.Sleep(100 * time.Millisecond)
	if n := most.Load(); n != 1 {
		t.Errorf("%d attempts ran at once while half-open, want the one probe", n)
	}
	if st := c.Health(time.Now()).State; st != herald.BreakerHalfOpen {
		t.Errorf("state %v while the probe runs, want half-open", st)
	}
	close(release)
	for range 6 {
		if err := <-errs; err != nil {
			t.Errorf("call returned %v after the breaker closed", err)
		}
	}
	if st := c.Health(time.Now()).State; st != herald.BreakerClosed {
		t.Errorf("state %v after the probe succeeded", st)
	}
}

// TestBreakerOutageMemory is the outage scenario on the memory driver.
func TestBreakerOutageMemory(t *testing.T) {
	drivertest.BreakerOutage(t, memtest.Broker(t), *breakerOutage)
}

// TestBreakerShutdownWhileOpen: a Shutdown while the breaker holds
// messages returns at once, without the deadline of its context, dead-
// letters nothing and leaves the held messages to the group, which
// delivers them again.
func TestBreakerShutdownWhileOpen(t *testing.T) {
	broker := memtest.Broker(t)
	newBus := func() *herald.Bus {
		bus, err := herald.NewBus(broker, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
		must(t, err)
		herald.MustRegister[OrderPlaced](bus, "orders", herald.WithKey(func(e OrderPlaced) string { return e.ID }))
		return bus
	}
	ctx := testContext(t)
	var deadLettered atomic.Int32
	var failedCalls atomic.Int32
	first := newBus()
	must(t, herald.Subscribe(first, "billing", func(context.Context, OrderPlaced, *herald.Message) error {
		failedCalls.Add(1)
		return errDown
	}, herald.WithConcurrency(2), herald.WithRetry(fastRetry(3)),
		herald.WithDeadLetterConfig(herald.DeadLetterConfig{OnDeadLetter: func(*herald.Message, error) { deadLettered.Add(1) }}),
		herald.WithBreaker(herald.BreakerConfig{Failures: 2, CoolDown: time.Hour})))
	must(t, first.Start(ctx))
	must(t, first.Publish(ctx, OrderPlaced{ID: "o-1"}, OrderPlaced{ID: "o-2"}, OrderPlaced{ID: "o-3"}))
	eventually(t, "the breaker opens", func() bool {
		st := first.CheckHealth(ctx)
		return strings.Contains(strings.Join(st.Problems, ";"), `OrderPlaced" open since`)
	})
	shutdownCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := first.Shutdown(shutdownCtx); err != nil {
		t.Fatalf("Shutdown while the breaker is open: %v, want nil (the waits end at once)", err)
	}
	if n := deadLettered.Load(); n != 0 {
		t.Fatalf("%d dead-lettered", n)
	}
	if n := failedCalls.Load(); n > 2+1 {
		t.Errorf("%d handler calls, want at most the 2 that opened the breaker and one more in flight", n)
	}

	second := newBus()
	var mu sync.Mutex
	got := map[string]int{}
	must(t, herald.Subscribe(second, "billing", func(_ context.Context, e OrderPlaced, _ *herald.Message) error {
		mu.Lock()
		got[e.ID]++
		mu.Unlock()
		return nil
	}))
	must(t, second.Start(ctx))
	defer func() { must(t, second.Shutdown(ctx)) }()
	eventually(t, "the held messages delivered again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 3
	})
}

// TestBreakerTelemetry: each change of state is counted by the state it
// entered, and is a span event on the delivery that caused it.
func TestBreakerTelemetry(t *testing.T) {
	h := newOTelHarness(t)
	bus, _ := newTestBus(t, h.options()...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	var calls atomic.Int32
	must(t, herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error {
		if calls.Add(1) == 1 {
			return errDown
		}
		return nil
	}, herald.WithBreaker(herald.BreakerConfig{Failures: 1, CoolDown: 10 * time.Millisecond})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "o-1"}))
	eventually(t, "the breaker closed again", func() bool {
		return h.sum(t, "herald.breaker.transitions", attribute.String("herald.breaker.state", "closed")) == 1
	})
	for _, state := range []string{"open", "half-open"} {
		if n := h.sum(t, "herald.breaker.transitions", attribute.String("herald.breaker.state", state)); n != 1 {
			t.Errorf("%d transitions to %s, want 1", n, state)
		}
	}
	eventually(t, "the delivery's span", func() bool { return len(h.spans.GetSpans()) > 0 })
	var events []string
	for _, e := range h.span(t, "process orders").Events {
		if e.Name == "herald.breaker" {
			for _, a := range e.Attributes {
				if a.Key == "herald.breaker.state" {
					events = append(events, a.Value.AsString())
				}
			}
		}
	}
	if got := strings.Join(events, " "); got != "open half-open closed" {
		t.Errorf("span events %q, want open half-open closed", got)
	}
}

func TestBreakerAndThrottleOptionErrors(t *testing.T) {
	cases := []struct {
		name   string
		opt    herald.SubscribeOption
		option string
	}{
		{"zero cool-down", herald.WithBreaker(herald.BreakerConfig{}), "BreakerConfig.CoolDown"},
		{"negative cool-down", herald.WithBreaker(herald.BreakerConfig{CoolDown: -time.Second}), "BreakerConfig.CoolDown"},
		{"negative failures", herald.WithBreaker(herald.BreakerConfig{Failures: -1, CoolDown: time.Second}), "BreakerConfig.Failures"},
		{"zero rate", herald.WithThrottle(0, 1), "WithThrottle rate"},
		{"negative rate", herald.WithThrottle(-5, 1), "WithThrottle rate"},
		{"NaN rate", herald.WithThrottle(math.NaN(), 1), "WithThrottle rate"},
		{"infinite rate", herald.WithThrottle(math.Inf(1), 1), "WithThrottle rate"},
		{"zero burst", herald.WithThrottle(10, 0), "WithThrottle burst"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bus, _ := newTestBus(t)
			herald.MustRegister[OrderPlaced](bus, "orders")
			err := herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error { return nil }, tc.opt)
			var oe *herald.OptionError
			if !errors.Is(err, herald.ErrInvalidOption) || !errors.As(err, &oe) || oe.Option != tc.option {
				t.Fatalf("Subscribe: %v, want an *OptionError for %s", err, tc.option)
			}
		})
	}
	t.Run("every problem at once", func(t *testing.T) {
		bus, _ := newTestBus(t)
		err := bus.Handle("orders", "billing", func(context.Context, *herald.Message) error { return nil },
			herald.WithBreaker(herald.BreakerConfig{Failures: -1}), herald.WithThrottle(0, 0))
		for _, want := range []string{"BreakerConfig.Failures", "BreakerConfig.CoolDown", "WithThrottle rate", "WithThrottle burst"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v does not name %s", err, want)
			}
		}
	})
}

func TestBreakerStateJSON(t *testing.T) {
	b, err := json.Marshal(herald.BreakerHealth{State: herald.BreakerHalfOpen})
	if err != nil || !strings.Contains(string(b), `"state":"half-open"`) {
		t.Fatalf("%s %v", b, err)
	}
}
