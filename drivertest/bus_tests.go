package drivertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// Event is the event type the Bus checks publish.
type Event struct {
	Key string `json:"key"`
	Seq int    `json:"seq"`
}

// RunBus runs the checks that go through a herald.Bus on the driver.
func RunBus(t *testing.T, cfg Config) {
	cfg = cfg.withDefaults()
	tests := []struct {
		name string
		fn   func(*testing.T, Config)
	}{
		{"TypedRoundTrip", testBusRoundTrip},
		{"HandlerErrorIsRedelivered", testBusRedelivery},
		{"PerKeyOrderWithConcurrency", testBusPerKeyOrder},
		{"ShutdownWithInFlightLosesNothing", testBusShutdownInFlight},
		{"UndecodableGoesToDeadLetter", testBusPoison},
		{"RollingRestartsCountOnlyAttempts", testBusRollingRestarts},
		{"AckOnlyAfterHandlerReturns", testBusAckAfterReturn},
		{"ShutdownWaitsForRunningHandlers", testBusShutdownWaits},
		{"ConcurrencyIsHonoured", testBusConcurrency},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // every case has a driver, topics and groups of its own
			tc.fn(t, cfg)
		})
	}
}

// NewBus returns a Bus on d that discards logs and errors, with Event
// registered on topic and keyed by Event.Key: the set-up of the suite's Bus
// checks, for drivers' own Bus tests.
func NewBus(t testing.TB, d herald.Driver, topic string) *herald.Bus {
	t.Helper()
	bus, err := herald.NewBus(d, herald.WithErrorHandler(func(error) {}), herald.WithLogger(slog.New(slog.DiscardHandler)))
	must(t, err)
	must(t, herald.Register[Event](bus, topic, herald.WithKey(func(e Event) string { return e.Key })))
	return bus
}

// Shutdown shuts bus down within 30 s and fails t if that fails.
func Shutdown(t testing.TB, bus *herald.Bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// waitFor is Eventually bounded by the suite's timeout.
func waitFor(t *testing.T, cfg Config, what string, cond func() bool) {
	t.Helper()
	Eventually(t, cfg.Timeout, what, cond)
}

func testBusRoundTrip(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	ctx := context4(t, cfg)
	topic := Name(t, "t")
	bus := NewBus(t, d, topic)
	got := make(chan Event, 10)
	var meta atomic.Pointer[herald.Message]
	err := herald.Subscribe(bus, Name(t, "g"), func(ctx context.Context, e Event, m *herald.Message) error {
		meta.Store(m)
		got <- e
		return nil
	})
	must(t, err)
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	must(t, bus.Publish(herald.WithCorrelationID(ctx, "corr-1"), Event{Key: "k", Seq: 7}))
	select {
	case e := <-got:
		if e != (Event{Key: "k", Seq: 7}) {
			t.Fatalf("got %+v", e)
		}
	case <-time.After(cfg.Timeout):
		t.Fatal("event not delivered")
	}
	m := meta.Load()
	if m.Key != "k" || m.Topic != topic || m.ID == "" || m.Headers[herald.HeaderCorrelationID] != "corr-1" || m.Event() == "" {
		t.Fatalf("message metadata lost: %+v", m)
	}
}

func testBusRedelivery(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	bus := NewBus(t, d, topic)
	var calls, done atomic.Int32
	err := herald.Subscribe(bus, group, func(ctx context.Context, e Event, m *herald.Message) error {
		if calls.Add(1) == 1 {
			return errors.New("first delivery fails")
		}
		if herald.DeliveryCount(ctx) < 2 {
			t.Errorf("redelivery has DeliveryCount %d", herald.DeliveryCount(ctx))
		}
		done.Add(1)
		return nil
	}, herald.WithScheduler(herald.SchedulerConfig{RedeliveryBackoff: 10 * time.Millisecond}))
	must(t, err)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, Event{Key: "k"}))
	waitFor(t, cfg, "the redelivery to succeed", func() bool { return done.Load() == 1 })
	Shutdown(t, bus)

	// It was acknowledged: a new member of the group gets nothing more.
	again := NewBus(t, d, topic)
	var extra atomic.Int32
	_ = herald.Subscribe(again, group, func(ctx context.Context, e Event, m *herald.Message) error {
		extra.Add(1)
		return nil
	})
	_ = again.Start(ctx)
	must(t, again.Publish(ctx, Event{Key: "marker", Seq: 1}))
	waitFor(t, cfg, "the marker", func() bool { return extra.Load() >= 1 })
	Shutdown(t, again)
	if n := extra.Load(); n != 1 {
		t.Fatalf("the acknowledged message came back: %d deliveries after restart, want only the marker", n)
	}
}

// testBusPerKeyOrder runs 16 handlers over 40 keys, each handler taking a
// random short while, with events published by 4 publishers in batches
// that mix keys (each publisher owns its keys, so a key's publish order is
// defined), and checks with KeyOrder that every key's events run one at a
// time and in publish order while handlers do run in parallel.
func testBusPerKeyOrder(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	ctx := context4(t, cfg)
	topic := Name(t, "t")
	bus := NewBus(t, d, topic)
	const keys, perKey, publishers = 40, 50, 4
	order := NewKeyOrder(t)
	err := herald.Subscribe(bus, Name(t, "g"), func(ctx context.Context, e Event, m *herald.Message) error {
		order.Run(e, func() { time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond) })
		return nil
	}, herald.WithConcurrency(16))
	must(t, err)
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range perKey {
				var batch []any
				for k := p; k < keys; k += publishers {
					batch = append(batch, Event{Key: fmt.Sprintf("k%02d", k), Seq: i})
				}
				if err := bus.Publish(ctx, batch...); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, cfg, "every event", func() bool { return order.Handled() == keys*perKey })
	if order.MaxParallel() < 2 {
		t.Errorf("handlers never ran in parallel (max %d) with concurrency 16", order.MaxParallel())
	}
}

func testBusShutdownInFlight(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	const n = 200
	var mu sync.Mutex
	handled := map[int]bool{}
	release := make(chan struct{})
	var started atomic.Int32

	first := NewBus(t, d, topic)
	_ = herald.Subscribe(first, group, func(ctx context.Context, e Event, m *herald.Message) error {
		if started.Add(1) > 20 {
			<-release // hold some handlers in flight across the shutdown
		}
		mu.Lock()
		handled[e.Seq] = true
		mu.Unlock()
		return nil
	}, herald.WithConcurrency(4))
	must(t, first.Start(ctx))
	for i := range n {
		must(t, first.Publish(ctx, Event{Key: fmt.Sprintf("k%d", i%16), Seq: i}))
	}
	waitFor(t, cfg, "handlers in flight", func() bool { return started.Load() > 20 })
	stopped := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		stopped <- first.Shutdown(sctx)
	}()
	time.Sleep(50 * time.Millisecond)
	close(release) // in-flight handlers finish during the shutdown
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	second := NewBus(t, d, topic)
	_ = herald.Subscribe(second, group, func(ctx context.Context, e Event, m *herald.Message) error {
		mu.Lock()
		handled[e.Seq] = true
		mu.Unlock()
		return nil
	}, herald.WithConcurrency(4))
	must(t, second.Start(ctx))
	defer Shutdown(t, second)
	waitFor(t, cfg, "every event after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == n
	})
}

func testBusPoison(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	bus := NewBus(t, d, topic)
	var good atomic.Int32
	_ = herald.Subscribe(bus, group, func(ctx context.Context, e Event, m *herald.Message) error {
		good.Add(1)
		return nil
	})
	dlq := make(chan *herald.Message, 1)
	if err := bus.Handle(herald.DeadLetterTopic(topic), Name(t, "dlq"), func(ctx context.Context, m *herald.Message) error {
		dlq <- m
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	et, _ := bus.Registry().ByName(eventName(t, bus))
	poison := &herald.Message{
		Topic: topic, Key: "k", ContentType: "application/json", Data: []byte("{not json"),
		Headers: herald.Headers{herald.HeaderEvent: et.Name},
	}
	must(t, bus.PublishMessages(ctx, poison))
	// The key is not blocked: the next event of the same key is handled.
	must(t, bus.Publish(ctx, Event{Key: "k", Seq: 1}))
	select {
	case m := <-dlq:
		if m.ID != poison.ID || m.Headers[herald.HeaderDeadLetterReason] == "" ||
			m.Headers[herald.HeaderDeadLetterTopic] != topic || m.Headers[herald.HeaderDeadLetterGroup] != group {
			t.Fatalf("dead letter lacks its headers: %+v", m.Headers)
		}
	case <-time.After(cfg.Timeout):
		t.Fatal("poison message never reached the dead-letter topic")
	}
	waitFor(t, cfg, "the good event after the poison one", func() bool { return good.Load() == 1 })
}

// testBusRollingRestarts restarts the only member of a group again and
// again while most of the backlog waits, fetched but not started, behind
// one key: no message may come to a handler with a delivery count above 1,
// and with DeadLetterConfig.MaxDeliveries 1 none is dead-lettered (a
// driver that counted hand-backs would dead-letter never-handled messages
// on routine restarts).
func testBusRollingRestarts(t *testing.T, cfg Config) {
	r := &rollingRestarts{t: t, cfg: cfg, d: cfg.NewDriver(t), topic: Name(t, "t"), group: Name(t, "g"),
		handled: map[int]int{}, all: make(chan struct{}), dead: make(chan struct{})}
	ctx := context4(t, cfg)
	for instance := 0; r.remaining() > 0; instance++ {
		if instance > rollingEvents/rollingPerInstance+2 {
			t.Fatalf("%d of %d messages never handled after %d restarts", r.remaining(), rollingEvents, instance)
		}
		in := r.start(ctx, instance)
		if instance == 0 {
			r.publish(ctx, in.bus)
		}
		r.stop(in)
	}
	if c := r.deadLettered.Load(); c != 0 {
		t.Errorf("%d never-failed messages dead-lettered for too many deliveries", c)
	}
	for seq, c := range r.handled {
		if c != 1 {
			t.Errorf("event %d handled %d times", seq, c)
		}
	}
}

const (
	rollingEvents      = 40 // all on one key
	rollingPerInstance = 6  // handled by each instance before it restarts
)

// rollingRestarts is the state of testBusRollingRestarts across the
// instances of the group's only member.
type rollingRestarts struct {
	t            *testing.T
	cfg          Config
	d            herald.Driver
	topic, group string
	mu           sync.Mutex
	handled      map[int]int   // by Seq
	all          chan struct{} // closed when every event was handled
	dead         chan struct{} // closed at the first dead letter
	deadLettered atomic.Int32
}

// instance is one run of the member: its bus, and the handler that holds
// the instance's last event across the shutdown.
type instance struct {
	n             int
	bus           *herald.Bus
	hold, release chan struct{}
	ran           atomic.Int32
}

func (r *rollingRestarts) remaining() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return rollingEvents - len(r.handled)
}

func (r *rollingRestarts) publish(ctx context.Context, bus *herald.Bus) {
	events := make([]any, rollingEvents)
	for i := range events {
		events[i] = Event{Key: "k", Seq: i}
	}
	if err := bus.Publish(ctx, events...); err != nil {
		r.t.Fatal(err)
	}
}

// start runs instance n: its handler counts each event and, at its
// rollingPerInstance-th, signals hold and waits for release.
func (r *rollingRestarts) start(ctx context.Context, n int) *instance {
	in := &instance{n: n, bus: NewBus(r.t, r.d, r.topic), hold: make(chan struct{}), release: make(chan struct{})}
	err := herald.Subscribe(in.bus, r.group, func(ctx context.Context, e Event, m *herald.Message) error {
		if c := herald.DeliveryCount(ctx); c > 1 {
			r.t.Errorf("instance %d: event %d arrived with delivery count %d; no handler had run it before", n, e.Seq, c)
		}
		r.mu.Lock()
		r.handled[e.Seq]++
		if len(r.handled) == rollingEvents && r.handled[e.Seq] == 1 {
			close(r.all)
		}
		r.mu.Unlock()
		if in.ran.Add(1) == rollingPerInstance {
			close(in.hold)
			<-in.release // held across the shutdown, then acknowledged
		}
		return nil
	}, herald.WithDeadLetterConfig(herald.DeadLetterConfig{
		MaxDeliveries: 1,
		OnDeadLetter: func(*herald.Message, error) {
			if r.deadLettered.Add(1) == 1 {
				close(r.dead)
			}
		},
	}))
	if err != nil {
		r.t.Fatal(err)
	}
	if err := in.bus.Start(ctx); err != nil {
		r.t.Fatal(err)
	}
	return in
}

// stop shuts in down while its handler holds an event (which it then
// acknowledges), or once every event was handled.
func (r *rollingRestarts) stop(in *instance) {
	select {
	case <-in.hold:
		stopped := make(chan error, 1)
		go func() {
			sctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
			defer cancel()
			stopped <- in.bus.Shutdown(sctx)
		}()
		time.Sleep(20 * time.Millisecond) // let the shutdown begin
		close(in.release)
		if err := <-stopped; err != nil {
			r.t.Fatalf("Shutdown: %v", err)
		}
	case <-r.all: // the last instance had fewer than rollingPerInstance left
		close(in.release)
		Shutdown(r.t, in.bus)
	case <-r.dead:
		close(in.release)
		Shutdown(r.t, in.bus)
		r.t.Fatalf("instance %d dead-lettered a message for too many deliveries; no handler had run it more than once", in.n)
	case <-time.After(r.cfg.Timeout):
		r.t.Fatalf("instance %d handled %d messages, then nothing for %v", in.n, in.ran.Load(), r.cfg.Timeout)
	}
}

// testBusAckAfterReturn holds a handler until a graceful shutdown has
// begun and then fails it: the scheduler must not have acknowledged the
// message before the handler returned, so the group's next member gets it,
// before the marker published after it on the same key.
func testBusAckAfterReturn(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	started, release := make(chan struct{}), make(chan struct{})
	first := NewBus(t, d, topic)
	err := herald.Subscribe(first, group, func(ctx context.Context, e Event, m *herald.Message) error {
		close(started)
		<-release
		return errors.New("failed as the service stopped")
	})
	must(t, err)
	must(t, first.Start(ctx))
	must(t, first.Publish(ctx, Event{Key: "k", Seq: 0}))
	select {
	case <-started:
	case <-time.After(cfg.Timeout):
		t.Fatal("the handler never started")
	}
	// Long enough for an early acknowledgment to be flushed or committed
	// (the drivers batch them), if the scheduler sent one.
	time.Sleep(300 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		stopped <- first.Shutdown(sctx)
	}()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	second := NewBus(t, d, topic)
	got := make(chan int, 4)
	err = herald.Subscribe(second, group, func(ctx context.Context, e Event, m *herald.Message) error {
		got <- e.Seq
		return nil
	})
	must(t, err)
	must(t, second.Start(ctx))
	defer Shutdown(t, second)
	must(t, second.Publish(ctx, Event{Key: "k", Seq: 1}))
	select {
	case seq := <-got:
		if seq != 0 {
			t.Fatalf("the next member got event %d first: the failed event 0 was acknowledged before its handler returned", seq)
		}
	case <-time.After(cfg.Timeout):
		t.Fatal("the next member got nothing")
	}
}

// testBusShutdownWaits checks that a graceful Shutdown returns only after
// the handlers it found running have returned, and does not cancel their
// context while its own has time left.
func testBusShutdownWaits(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	bus := NewBus(t, d, topic)
	const n = 3
	var running atomic.Int32
	release := make(chan struct{})
	var returned, cancelled atomic.Int32
	err := herald.Subscribe(bus, group, func(ctx context.Context, e Event, m *herald.Message) error {
		running.Add(1)
		<-release
		if ctx.Err() != nil {
			cancelled.Add(1)
		}
		returned.Add(1)
		return nil
	}, herald.WithConcurrency(n))
	must(t, err)
	must(t, bus.Start(ctx))
	for i := range n {
		must(t, bus.Publish(ctx, Event{Key: fmt.Sprintf("k%d", i), Seq: i}))
	}
	waitFor(t, cfg, "every handler running", func() bool { return running.Load() == n })
	stopped := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		stopped <- bus.Shutdown(sctx)
	}()
	// A Shutdown that does not wait returns within this time: once the
	// subscription's Fetch has returned (Redis blocks in a read for up to
	// half a second) and its Close is done.
	select {
	case err := <-stopped:
		close(release)
		t.Fatalf("Shutdown returned (%v) while %d handlers were still running", err, n)
	case <-time.After(1500 * time.Millisecond):
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if r, c := returned.Load(), cancelled.Load(); r != n || c != 0 {
		t.Fatalf("when Shutdown returned: %d of %d handlers had returned, %d saw their context cancelled; want all returned, none cancelled", r, n, c)
	}
}

// testBusConcurrency checks WithConcurrency(n) both ways: with more keys
// than n waiting, n handlers run at once, and no more.
func testBusConcurrency(t *testing.T, cfg Config) {
	for _, n := range []int{1, 4} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			d := cfg.NewDriver(t)
			ctx := context4(t, cfg)
			topic, group := Name(t, "t"), Name(t, "g")
			bus := NewBus(t, d, topic)
			var running, peak, handled atomic.Int32
			release := make(chan struct{})
			var releaseOnce sync.Once
			releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
			err := herald.Subscribe(bus, group, func(ctx context.Context, e Event, m *herald.Message) error {
				r := running.Add(1)
				for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
				}
				<-release
				running.Add(-1)
				handled.Add(1)
				return nil
			}, herald.WithConcurrency(n))
			must(t, err)
			must(t, bus.Start(ctx))
			defer Shutdown(t, bus)
			defer releaseAll()
			events := make([]any, 4*n)
			for i := range events {
				events[i] = Event{Key: fmt.Sprintf("k%d", i), Seq: i}
			}
			must(t, bus.Publish(ctx, events...))
			waitFor(t, cfg, fmt.Sprintf("%d handlers running at once", n), func() bool { return running.Load() >= int32(n) })
			// Room for a scheduler with more workers than n to start more.
			time.Sleep(100 * time.Millisecond)
			releaseAll()
			waitFor(t, cfg, "every event", func() bool { return handled.Load() == int32(len(events)) })
			if p := peak.Load(); p != int32(n) {
				t.Errorf("with concurrency %d and %d keys waiting, %d handlers ran at once", n, len(events), p)
			}
		})
	}
}

func eventName(t *testing.T, bus *herald.Bus) string {
	t.Helper()
	msgs, err := bus.Publisher().Encode(context.Background(), Event{})
	must(t, err)
	return msgs[0].Event()
}
