package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

func newTestBus(t *testing.T, opts ...herald.Option) (*herald.Bus, *memdriver.Broker) {
	t.Helper()
	b := memtest.Broker(t)
	opts = append([]herald.Option{herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {})}, opts...)
	bus, err := herald.NewBus(b, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Shutdown(context.Background()) })
	return bus, b
}

func TestBusSharedTopicDeliversEachTypeToItsHandler(t *testing.T) {
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	herald.MustRegister[OrderShipped](bus, "orders")
	var placed, shipped atomic.Int32
	var onlyShipped atomic.Int32
	must(t, herald.Subscribe(bus, "billing", func(_ context.Context, e OrderPlaced, _ *herald.Message) error {
		placed.Add(1)
		return nil
	}))
	must(t, herald.Subscribe(bus, "billing", func(_ context.Context, e OrderShipped, _ *herald.Message) error {
		shipped.Add(1)
		return nil
	}))
	// Another group with only one of the types acknowledges the others.
	must(t, herald.Subscribe(bus, "tracking", func(_ context.Context, e OrderShipped, _ *herald.Message) error {
		onlyShipped.Add(1)
		return nil
	}))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "1"}, OrderShipped{ID: "1"}, OrderPlaced{ID: "2"}))
	eventually(t, "all handlers", func() bool {
		return placed.Load() == 2 && shipped.Load() == 1 && onlyShipped.Load() == 1
	})
}

func TestBusSubscribeErrors(t *testing.T) {
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	h := func(context.Context, OrderPlaced, *herald.Message) error { return nil }
	must(t, herald.Subscribe(bus, "g", h))
	if err := herald.Subscribe(bus, "g", h); !errors.Is(err, herald.ErrDuplicateHandler) {
		t.Fatalf("second handler for one type and group: %v", err)
	}
	if err := herald.Subscribe(bus, "bad group", h); !errors.Is(err, herald.ErrInvalidName) {
		t.Fatalf("bad group: %v", err)
	}
	if err := herald.Subscribe(bus, "g", func(context.Context, OrderShipped, *herald.Message) error { return nil }); !errors.Is(err, herald.ErrUnregisteredEvent) {
		t.Fatalf("unregistered type: %v", err)
	}
	var nilTyped func(context.Context, OrderPlaced, *herald.Message) error
	if err := herald.Subscribe(bus, "nil", nilTyped); !errors.Is(err, herald.ErrNilHandler) {
		t.Fatalf("nil typed handler: %v", err)
	}
	if err := bus.Handle("orders", "nil", nil); !errors.Is(err, herald.ErrNilHandler) {
		t.Fatalf("nil raw handler: %v", err)
	}
	if err := bus.Handle("orders", "g", func(context.Context, *herald.Message) error { return nil }); !errors.Is(err, herald.ErrDuplicateHandler) {
		t.Fatalf("raw handler next to a typed one: %v", err)
	}
	must(t, bus.Start(testContext(t)))
	if err := herald.Subscribe(bus, "g", func(context.Context, OrderShipped, *herald.Message) error { return nil }); err == nil {
		t.Fatal("joined a running subscription")
	}
	// A new group after Start starts at once.
	got := make(chan struct{}, 1)
	must(t, herald.Subscribe(bus, "late", func(context.Context, OrderPlaced, *herald.Message) error {
		got <- struct{}{}
		return nil
	}))
	must(t, bus.Publish(testContext(t), OrderPlaced{ID: "1"}))
	select {
	case <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("a subscription added after Start never ran")
	}
	must(t, bus.Shutdown(testContext(t)))
	if err := herald.Subscribe(bus, "after", h); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("subscribe after shutdown: %v", err)
	}
}

func TestNewBusAndPublisherRefuseNilDriver(t *testing.T) {
	if bus, err := herald.NewBus(nil); !errors.Is(err, herald.ErrNilDriver) || bus != nil {
		t.Errorf("NewBus(nil) = %v, %v; want nil, ErrNilDriver", bus, err)
	}
	if p, err := herald.NewPublisher(nil); !errors.Is(err, herald.ErrNilDriver) || p != nil {
		t.Errorf("NewPublisher(nil) = %v, %v; want nil, ErrNilDriver", p, err)
	}
	var typedNil *memdriver.Broker
	if _, err := herald.NewBus(typedNil); !errors.Is(err, herald.ErrNilDriver) {
		t.Errorf("NewBus((*memdriver.Broker)(nil)): %v, want ErrNilDriver", err)
	}
}

func TestBusRetryThenDeadLetter(t *testing.T) {
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	var attempts atomic.Int32
	must(t, herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		attempts.Add(1)
		if e.ID == "poison" {
			return errors.New("card declined")
		}
		return nil
	}, herald.WithRetry(fastRetry(3)), herald.WithDeadLetter()))
	dead := make(chan *herald.Message, 1)
	must(t, bus.Handle("orders.dlq", "ops", func(_ context.Context, m *herald.Message) error {
		dead <- m
		return nil
	}))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "poison"}))
	select {
	case m := <-dead:
		if m.Headers[herald.HeaderDeadLetterAttempts] != "3" || m.Headers[herald.HeaderDeadLetterGroup] != "billing" {
			t.Fatalf("headers %v", m.Headers)
		}
		// The dead letter still decodes as the original event.
		if m.Event() == "" || string(m.Data) != `{"id":"poison","amount":0}` {
			t.Fatalf("payload changed: %s", m.Data)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no dead letter")
	}
	if attempts.Load() != 3 {
		t.Fatalf("%d attempts, want 3", attempts.Load())
	}
}

func TestBusDedupSkipsRepublishedMessage(t *testing.T) {
	bus, b := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	var calls atomic.Int32
	must(t, herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error {
		calls.Add(1)
		return nil
	}, herald.WithDedup(newDedupStore(t))))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	msgs, err := bus.Publisher().Encode(ctx, OrderPlaced{ID: "1"})
	must(t, err)
	// The same message (same ID) arrives three times, as after a relay crash.
	for range 3 {
		must(t, bus.PublishMessages(ctx, msgs[0].Clone()))
	}
	eventually(t, "all three acknowledged", func() bool { return b.Backlog("orders", "billing") == 0 && calls.Load() > 0 })
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times", calls.Load())
	}
}

func TestBusPublishWriter(t *testing.T) {
	w := &recordingWriter{}
	bus, _ := newTestBus(t, herald.WithPublishWriter(w))
	herald.MustRegister[OrderPlaced](bus, "orders")
	must(t, bus.Publish(testContext(t), OrderPlaced{ID: "1"}))
	if len(w.all()) != 1 {
		t.Fatal("publish did not go to the publish writer")
	}
}

func TestBusHandleHookAndConcurrency(t *testing.T) {
	var mu sync.Mutex
	results := 0
	bus, _ := newTestBus(t, herald.WithHandleHook(func(r herald.HandleResult) {
		mu.Lock()
		results++
		mu.Unlock()
	}))
	herald.MustRegister[OrderPlaced](bus, "orders")
	var active, peak atomic.Int32
	must(t, herald.Subscribe(bus, "g", func(context.Context, OrderPlaced, *herald.Message) error {
		n := active.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(time.Millisecond)
		active.Add(-1)
		return nil
	}, herald.WithConcurrency(4)))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	for i := range 40 {
		must(t, bus.Publish(ctx, OrderPlaced{ID: strconv.Itoa(i)}))
	}
	eventually(t, "every result", func() bool { mu.Lock(); defer mu.Unlock(); return results == 40 })
	if peak.Load() > 4 {
		t.Fatalf("%d handlers ran at once with concurrency 4", peak.Load())
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A publish right after Start reaches the subscription: Start has joined
// the group before it returns, so the ring cannot drop the messages as it
// drops messages of a topic no group has joined yet.
func TestBusPublishRightAfterStartIsNotLost(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1), memdriver.WithCapacity(4))
	bus, err := herald.NewBus(b, herald.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	herald.MustRegister[OrderPlaced](bus, "orders")
	var got atomic.Int32
	must(t, herald.Subscribe(bus, "g", func(context.Context, OrderPlaced, *herald.Message) error {
		got.Add(1)
		return nil
	}))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	defer bus.Shutdown(ctx)
	for i := range 100 {
		must(t, bus.Publish(ctx, OrderPlaced{ID: strconv.Itoa(i)}))
	}
	eventually(t, "all 100", func() bool { return got.Load() == 100 })
}

// A message a redrive addressed to one group runs there only; the other
// groups of the topic acknowledge it as skipped, typed and raw alike.
func TestBusRedriveRunsOnlyInItsGroup(t *testing.T) {
	var mu sync.Mutex
	skipped := map[string]int{}
	bus, _ := newTestBus(t, herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Skipped {
			mu.Lock()
			skipped[r.Group]++
			mu.Unlock()
		}
	}))
	herald.MustRegister[OrderPlaced](bus, "orders")
	var billing, shipping, audit atomic.Int32
	must(t, herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error { billing.Add(1); return nil }))
	must(t, herald.Subscribe(bus, "shipping", func(context.Context, OrderPlaced, *herald.Message) error { shipping.Add(1); return nil }))
	must(t, bus.Handle("orders", "audit", func(context.Context, *herald.Message) error { audit.Add(1); return nil }))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	msgs, err := bus.Publisher().Encode(ctx, OrderPlaced{ID: "1"})
	must(t, err)
	msgs[0].Headers[herald.HeaderRedriveGroup] = "billing"
	msgs[0].Headers[herald.HeaderRedriveCount] = "1"
	must(t, bus.PublishMessages(ctx, msgs[0]))
	eventually(t, "the redrive settled in every group", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return billing.Load() == 1 && skipped["shipping"] == 1 && skipped["audit"] == 1
	})
	if shipping.Load() != 0 || audit.Load() != 0 {
		t.Errorf("groups the redrive was not for ran it: shipping %d, audit %d", shipping.Load(), audit.Load())
	}
}

// An event published from a handler continues the delivered message's
// chain: same correlation id (or the first message's ID when it had none),
// the delivered message's ID as its causation id, typed and raw alike.
func TestHandlerContextCarriesCorrelationAndCausation(t *testing.T) {
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	herald.MustRegister[OrderShipped](bus, "shipments")
	must(t, herald.Subscribe(bus, "shipping", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		if err := bus.Publish(ctx, OrderShipped{ID: e.ID}); err != nil {
			return err
		}
		return bus.PublishMessages(ctx, &herald.Message{Topic: "raw.followups", Data: []byte(e.ID)})
	}))
	got := make(chan *herald.Message, 4)
	must(t, herald.Subscribe(bus, "tracking", func(ctx context.Context, e OrderShipped, m *herald.Message) error {
		got <- m
		return nil
	}))
	must(t, bus.Handle("raw.followups", "audit", func(ctx context.Context, m *herald.Message) error {
		got <- m
		return nil
	}))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	placed, err := bus.Publisher().Encode(herald.WithCorrelationID(ctx, "checkout-7"), OrderPlaced{ID: "1"})
	must(t, err)
	uncorrelated, err := bus.Publisher().Encode(ctx, OrderPlaced{ID: "2"})
	must(t, err)
	must(t, bus.PublishMessages(ctx, placed[0], uncorrelated[0]))
	want := map[string][2]string{ // by payload order ID: correlation, causation
		"1": {"checkout-7", placed[0].ID},
		"2": {uncorrelated[0].ID, uncorrelated[0].ID},
	}
	for range 4 {
		select {
		case m := <-got:
			id := string(m.Data)
			if m.Topic == "shipments" {
				var e OrderShipped
				must(t, json.Unmarshal(m.Data, &e))
				id = e.ID
			}
			w := want[id]
			if c := m.Headers.Get(herald.HeaderCorrelationID); c != w[0] {
				t.Errorf("%s for order %s: correlation %q, want %q", m.Topic, id, c, w[0])
			}
			if c := m.Headers.Get(herald.HeaderCausationID); c != w[1] {
				t.Errorf("%s for order %s: causation %q, want %q", m.Topic, id, c, w[1])
			}
		case <-time.After(20 * time.Second):
			t.Fatal("follow-up events never arrived")
		}
	}
}

// TestHandlerContextsOutliveTheirHandlers keeps every handler's context
// past its return, as a handler that starts work it does not wait for
// would: each still names its own message (the scheduler carves contexts
// from shared slabs, never reusing one), across more deliveries than a
// slab holds.
func TestHandlerContextsOutliveTheirHandlers(t *testing.T) {
	bus, _ := newTestBus(t)
	type kept struct {
		ctx context.Context
		id  string
	}
	const n = 200
	got := make(chan kept, n)
	must(t, bus.Handle("raw.kept", "g", func(ctx context.Context, m *herald.Message) error {
		got <- kept{ctx, m.ID}
		return nil
	}, herald.WithConcurrency(3)))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	for i := range n {
		must(t, bus.PublishMessages(ctx, &herald.Message{Topic: "raw.kept", Key: strconv.Itoa(i % 7)}))
	}
	var all []kept
	for range n {
		select {
		case k := <-got:
			all = append(all, k)
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d handled", len(all), n)
		}
	}
	for _, k := range all {
		if c := herald.CorrelationID(k.ctx); c != k.id {
			t.Errorf("a kept context names %q, its message was %q", c, k.id)
		}
		if d := herald.DeliveryCount(k.ctx); d != 1 {
			t.Errorf("a kept context of a first delivery counts %d", d)
		}
	}
}
