package herald_test

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/memory/memtest"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

func TestBatchBadOptions(t *testing.T) {
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	h := func(context.Context, []herald.Item[OrderPlaced]) error { return nil }
	raw := func(context.Context, []*herald.Message) error { return nil }
	for _, c := range []struct {
		name   string
		err    error
		option string // the OptionError's, when one is wanted
	}{
		{"size 0", herald.SubscribeBatch(bus, "a", h, herald.WithBatch(0, time.Millisecond)), "WithBatch size"},
		{"negative linger", herald.SubscribeBatch(bus, "b", h, herald.WithBatch(10, -time.Millisecond)), "WithBatch linger"},
		{"raw, size -1", bus.HandleBatch("orders", "c", raw, herald.WithBatch(-1, 0)), "WithBatch size"},
		{"middleware", herald.SubscribeBatch(bus, "d", h, herald.WithMiddleware(herald.Recover())), "WithMiddleware"},
		{"breaker", herald.SubscribeBatch(bus, "d2", h, herald.WithBreaker(herald.BreakerConfig{CoolDown: time.Second})), "WithBreaker"},
		{"throttle", bus.HandleBatch("orders", "d3", raw, herald.WithThrottle(10, 1)), "WithThrottle"},
		{"size above MaxInFlight", herald.SubscribeBatch(bus, "e", h, herald.WithBatch(300, 0),
			herald.WithScheduler(herald.SchedulerConfig{MaxInFlight: 256})), "WithBatch size"},
		{"WithBatch on Subscribe", herald.Subscribe(bus, "f", func(context.Context, OrderPlaced, *herald.Message) error { return nil },
			herald.WithBatch(10, 0)), "WithBatch"},
		{"WithBatch on Handle", bus.Handle("orders", "g", func(context.Context, *herald.Message) error { return nil },
			herald.WithBatch(10, 0)), "WithBatch"},
	} {
		var oe *herald.OptionError
		if !errors.Is(c.err, herald.ErrInvalidOption) || !errors.As(c.err, &oe) || oe.Option != c.option {
			t.Errorf("%s: %v, want an *OptionError for %s", c.name, c.err, c.option)
		}
	}
	var nilTyped func(context.Context, []herald.Item[OrderPlaced]) error
	if err := herald.SubscribeBatch(bus, "h", nilTyped); !errors.Is(err, herald.ErrNilHandler) {
		t.Errorf("nil typed batch handler: %v", err)
	}
	if err := bus.HandleBatch("orders", "h", nil); !errors.Is(err, herald.ErrNilHandler) {
		t.Errorf("nil raw batch handler: %v", err)
	}
	if err := herald.SubscribeBatch(bus, "bad group", h); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("bad group: %v", err)
	}
	if err := herald.SubscribeBatch(bus, "x", func(context.Context, []herald.Item[OrderShipped]) error { return nil }); !errors.Is(err, herald.ErrUnregisteredEvent) {
		t.Errorf("unregistered type: %v", err)
	}
	// A batch handler takes its topic and group alone.
	must(t, herald.SubscribeBatch(bus, "billing", h))
	if err := herald.SubscribeBatch(bus, "billing", h); !errors.Is(err, herald.ErrDuplicateHandler) {
		t.Errorf("second batch handler: %v", err)
	}
	if err := herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error { return nil }); !errors.Is(err, herald.ErrDuplicateHandler) {
		t.Errorf("single handler beside a batch handler: %v", err)
	}
	must(t, herald.Subscribe(bus, "shipping", func(context.Context, OrderPlaced, *herald.Message) error { return nil }))
	if err := bus.HandleBatch("orders", "shipping", raw); !errors.Is(err, herald.ErrDuplicateHandler) {
		t.Errorf("batch handler beside a single handler: %v", err)
	}
}

func TestBatchError(t *testing.T) {
	var none herald.BatchError
	if none.Err() != nil {
		t.Errorf("empty BatchError.Err() = %v, want nil", none.Err())
	}
	declined := errors.New("declined")
	var be herald.BatchError
	err := be.Fail(4, declined).Fail(1, herald.Permanent(errors.New("bad row"))).Err()
	if !errors.Is(err, declined) || !errors.Is(err, herald.ErrPermanent) {
		t.Errorf("errors.Is does not see the items' errors: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "2 item(s)") || strings.Index(msg, "item 1") > strings.Index(msg, "item 4") {
		t.Errorf("message %q", msg)
	}
}

// TestBatchTelemetry: one process span per batch, linked to each sender's
// span, in the handler's context; outcomes counted per message, one
// duration per batch; the hook sees every message.
func TestBatchTelemetry(t *testing.T) {
	h := newOTelHarness(t)
	var hooked atomic.Int32
	bus, _ := newTestBus(t, append(h.options(), herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Err == nil && r.Topic == "orders" {
			hooked.Add(1)
		}
	}))...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	ctx := testContext(t)
	// Three publishes, three send spans, before the group reads: the
	// batch fills at once (the linger is longer than any test).
	for _, id := range []string{"1", "2", "3"} {
		must(t, bus.Publish(ctx, OrderPlaced{ID: id}))
	}
	inHandler := make(chan trace.SpanContext, 1)
	must(t, herald.SubscribeBatch(bus, "billing", func(ctx context.Context, batch []herald.Item[OrderPlaced]) error {
		if len(batch) != 3 {
			t.Errorf("batch of %d, want 3", len(batch))
		}
		inHandler <- trace.SpanContextFromContext(ctx)
		return nil
	}, herald.WithBatch(3, time.Hour)))
	must(t, bus.Start(ctx))
	var sc trace.SpanContext
	select {
	case sc = <-inHandler:
	case <-ctx.Done():
		t.Fatal("not handled")
	}
	eventually(t, "every message hooked", func() bool { return hooked.Load() == 3 })
	must(t, bus.Shutdown(ctx))

	process := h.span(t, "process orders")
	if process.SpanContext.SpanID() != sc.SpanID() {
		t.Error("the handler's context does not carry the batch's process span")
	}
	sends := map[trace.SpanID]bool{}
	for _, s := range h.spans.GetSpans() {
		if s.Name == "send orders" {
			sends[s.SpanContext.SpanID()] = true
		}
	}
	if len(sends) != 3 || len(process.Links) != 3 {
		t.Fatalf("%d send spans, %d links; want 3 and 3", len(sends), len(process.Links))
	}
	for _, l := range process.Links {
		if !sends[l.SpanContext.SpanID()] {
			t.Errorf("link %v is not a send span", l.SpanContext.SpanID())
		}
	}
	wantAttr(t, process, "messaging.consumer.group.name", "billing")
	if v, ok := attr(process, "messaging.batch.message_count"); !ok || v.AsInt64() != 3 {
		t.Errorf("messaging.batch.message_count = %v", v)
	}
	topic := attribute.String("messaging.destination.name", "orders")
	for _, c := range []struct {
		name string
		want int64
		with []attribute.KeyValue
	}{
		{"herald.messages.processed", 3, []attribute.KeyValue{topic, attribute.String("herald.outcome", "ok")}},
		{"herald.messages.processed", 0, []attribute.KeyValue{attribute.String("herald.outcome", "error")}},
		{"messaging.process.duration", 1, []attribute.KeyValue{topic}},
	} {
		if got := h.sum(t, c.name, c.with...); got != c.want {
			t.Errorf("%s%v = %d, want %d", c.name, c.with, got, c.want)
		}
	}
}

// TestBatchRedeliveredInPlace: without retry or dead letter, a failed item
// is redelivered in place until it succeeds, its key held; the others are
// acknowledged once; a panic fails the whole batch.
func TestBatchRedeliveredInPlace(t *testing.T) {
	var mu sync.Mutex
	results := map[string][]error{}
	bus, _ := newTestBus(t, herald.WithHandleHook(func(r herald.HandleResult) {
		mu.Lock()
		results[r.Message.ID] = append(results[r.Message.ID], r.Err)
		mu.Unlock()
	}))
	var calls atomic.Int32
	var fails atomic.Int32
	must(t, bus.HandleBatch("jobs", "workers", func(ctx context.Context, msgs []*herald.Message) error {
		if calls.Add(1) == 1 {
			panic("first batch")
		}
		var be herald.BatchError
		for i, m := range msgs {
			if m.ID == "a-0" && fails.Add(1) <= 2 {
				be.Fail(i, errors.New("not yet"))
			}
		}
		return be.Err()
	}, herald.WithBatch(4, time.Hour), herald.WithScheduler(herald.SchedulerConfig{RedeliveryBackoff: time.Millisecond})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.PublishMessages(ctx,
		&herald.Message{ID: "a-0", Topic: "jobs", Key: "a"}, &herald.Message{ID: "a-1", Topic: "jobs", Key: "a"},
		&herald.Message{ID: "b-0", Topic: "jobs", Key: "b"}, &herald.Message{ID: "c-0", Topic: "jobs"}))
	ok := func(id string) bool {
		rs := results[id]
		return len(rs) > 0 && rs[len(rs)-1] == nil
	}
	eventually(t, "every message settled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return ok("a-0") && ok("a-1") && ok("b-0") && ok("c-0")
	})
	mu.Lock()
	defer mu.Unlock()
	checkRedeliveredInPlace(t, results)
}

// checkRedeliveredInPlace checks the outcomes of TestBatchRedeliveredInPlace.
func checkRedeliveredInPlace(t *testing.T, results map[string][]error) {
	t.Helper()
	var pe *herald.PanicError
	for id, rs := range results {
		// a-1 is held behind a-0 instead: its outcome does not count
		// while an earlier message of its key failed.
		if len(rs) < 2 || id != "a-1" && !errors.As(rs[0], &pe) || id == "a-1" && !errors.Is(rs[0], herald.ErrHeldBehind) {
			t.Errorf("%s: %v, want the panic first (a-1: ErrHeldBehind)", id, rs)
		}
		for _, err := range rs[:len(rs)-1] {
			if err == nil {
				t.Errorf("%s acknowledged more than once: %v", id, rs)
			}
		}
	}
	// a-0 failed twice after the panic; a-1 waited behind it each time.
	if len(results["a-0"]) != 4 || len(results["a-1"]) != 4 || len(results["b-0"]) != 2 {
		t.Errorf("results %v", results)
	}
}

// TestBatchSkipsOtherEventTypes: a typed batch handler on a shared topic
// gets its type only; the others are acknowledged as skipped.
func TestBatchSkipsOtherEventTypes(t *testing.T) {
	var skipped atomic.Int32
	bus, _ := newTestBus(t, herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Skipped {
			skipped.Add(1)
		}
	}))
	herald.MustRegister[OrderPlaced](bus, "orders")
	herald.MustRegister[OrderShipped](bus, "orders")
	var placed atomic.Int32
	must(t, herald.SubscribeBatch(bus, "billing", func(ctx context.Context, batch []herald.Item[OrderPlaced]) error {
		for _, it := range batch {
			if et, ok := bus.Registry().ByName(it.Message.Event()); !ok || et.Type != reflect.TypeFor[OrderPlaced]() {
				t.Errorf("got an event %q", it.Message.Event())
			}
		}
		placed.Add(int32(len(batch)))
		return nil
	}, herald.WithBatch(10, 5*time.Millisecond)))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "1"}, OrderShipped{ID: "1"}, OrderPlaced{ID: "2"}))
	eventually(t, "placed handled, shipped skipped", func() bool { return placed.Load() == 2 && skipped.Load() == 1 })
}

// TestBatchHealth: a batch subscription whose window is held by a batch
// that does not finish is reported stalled, and ready once it finishes.
func TestBatchHealth(t *testing.T) {
	bus, _ := newTestBus(t, herald.WithHealth(herald.HealthConfig{StallAfter: time.Nanosecond}))
	herald.MustRegister[OrderPlaced](bus, "orders")
	release := make(chan struct{})
	must(t, herald.SubscribeBatch(bus, "billing", func(ctx context.Context, _ []herald.Item[OrderPlaced]) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}, herald.WithBatch(2, 0), herald.WithScheduler(herald.SchedulerConfig{MaxInFlight: 2})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	if st := bus.CheckHealth(ctx); len(st.Details.(herald.BusHealth).Subscriptions) != 1 {
		t.Fatalf("subscriptions %+v", st.Details)
	}
	must(t, bus.Publish(ctx, OrderPlaced{ID: "1"}, OrderPlaced{ID: "2"}, OrderPlaced{ID: "3"}))
	eventually(t, "stalled", func() bool {
		return strings.Contains(strings.Join(bus.CheckHealth(ctx).Problems, ";"), "stalled")
	})
	close(release)
	eventually(t, "ready again", func() bool { return bus.CheckHealth(ctx).Ready })
}

// recordingStore is a dedup.Storage that records the calls it passes on.
type recordingStore struct {
	dedup.Storage
	mu    sync.Mutex
	calls []string
}

func (s *recordingStore) record(op, key string) {
	s.mu.Lock()
	s.calls = append(s.calls, op+" "+key)
	s.mu.Unlock()
}

func (s *recordingStore) Commit(ctx context.Context, key, token string, window time.Duration) error {
	s.record("commit", key)
	return s.Storage.Commit(ctx, key, token, window)
}

func (s *recordingStore) Release(ctx context.Context, key, token string) error {
	s.record("release", key)
	return s.Storage.Release(ctx, key, token)
}

// TestBatchDedupMarksAfterSuccess: a batch that fails releases its items'
// claims, so that their redelivery runs them; the marks are written once
// the handler succeeded, and only for the items it handled.
func TestBatchDedupMarksAfterSuccess(t *testing.T) {
	store := &recordingStore{Storage: newDedupStore(t)}
	var settled atomic.Int32
	bus, _ := newTestBus(t, herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Err == nil {
			settled.Add(1)
		}
	}))
	var calls atomic.Int32
	must(t, bus.HandleBatch("jobs", "workers", func(ctx context.Context, msgs []*herald.Message) error {
		switch calls.Add(1) {
		case 1:
			return errors.New("database down") // the whole batch
		case 2:
			var be herald.BatchError
			for i, m := range msgs {
				if m.ID == "b" {
					be.Fail(i, errors.New("not b yet"))
				}
			}
			return be.Err()
		}
		return nil
	}, herald.WithDedup(store), herald.WithBatch(2, time.Hour),
		herald.WithScheduler(herald.SchedulerConfig{RedeliveryBackoff: time.Millisecond})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.PublishMessages(ctx, &herald.Message{ID: "a", Topic: "jobs", Key: "a"}, &herald.Message{ID: "b", Topic: "jobs", Key: "b"}))
	eventually(t, "both settled", func() bool { return settled.Load() == 2 })
	store.mu.Lock()
	got := strings.Join(store.calls, ", ")
	store.mu.Unlock()
	// Pass 1 fails both; pass 2 handles a and fails b; pass 3 handles b.
	if want := "release workers:a, release workers:b, commit workers:a, release workers:b, commit workers:b"; got != want {
		t.Errorf("dedup calls %q, want %q", got, want)
	}
}

// TestBatchShutdownReleasesUnstarted: a shutdown lets the running batch
// finish and hands the batch still filling back uncounted (Releaser):
// the next member sees those messages as first deliveries.
func TestBatchShutdownReleasesUnstarted(t *testing.T) {
	b := memtest.Broker(t)
	ctx := testContext(t)
	newBus := func() *herald.Bus {
		bus, err := herald.NewBus(b, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
		must(t, err)
		herald.MustRegister[OrderPlaced](bus, "orders")
		return bus
	}
	first := newBus()
	running := make(chan int, 1)
	release := make(chan struct{})
	must(t, herald.SubscribeBatch(first, "billing", func(ctx context.Context, batch []herald.Item[OrderPlaced]) error {
		running <- len(batch)
		<-release
		return nil
	}, herald.WithBatch(10, time.Hour)))
	must(t, first.Start(ctx))
	var events []any
	for i := range 15 {
		events = append(events, OrderPlaced{ID: strconv.Itoa(i)})
	}
	must(t, first.Publish(ctx, events...))
	if n := <-running; n != 10 {
		t.Fatalf("first batch of %d, want 10", n)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- first.Shutdown(ctx) }()
	close(release)
	must(t, <-stopped)

	second := newBus()
	defer func() { must(t, second.Shutdown(ctx)) }()
	got := make(chan []int, 1)
	must(t, herald.SubscribeBatch(second, "billing", func(ctx context.Context, batch []herald.Item[OrderPlaced]) error {
		got <- []int{len(batch), herald.DeliveryCount(ctx)}
		return nil
	}, herald.WithBatch(5, time.Hour)))
	must(t, second.Start(ctx))
	select {
	case r := <-got:
		if r[0] != 5 || r[1] != 1 {
			t.Errorf("after the restart: a batch of %d with delivery count %d, want the 5 unstarted ones, first deliveries", r[0], r[1])
		}
	case <-ctx.Done():
		t.Fatal("the unstarted messages did not come back")
	}
}

// TestBatchMaxDeliveries: a message that comes back beyond
// DeadLetterConfig.MaxDeliveries (its handler was cut off by an abrupt
// shutdown, as a crash would) is dead-lettered without running again.
func TestBatchMaxDeliveries(t *testing.T) {
	b := memtest.Broker(t)
	ctx := testContext(t)
	var runs atomic.Int32
	started := make(chan struct{}, 1)
	newBus := func() *herald.Bus {
		bus, err := herald.NewBus(b, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
		must(t, err)
		must(t, bus.HandleBatch("jobs", "workers", func(ctx context.Context, msgs []*herald.Message) error {
			runs.Add(1)
			started <- struct{}{}
			<-ctx.Done() // hangs until the shutdown cuts it off
			return ctx.Err()
		}, herald.WithBatch(1, 0), herald.WithDeadLetterConfig(herald.DeadLetterConfig{MaxDeliveries: 1})))
		return bus
	}
	first := newBus()
	must(t, first.Start(ctx))
	must(t, first.PublishMessages(ctx, &herald.Message{ID: "m", Topic: "jobs", Key: "k"}))
	<-started
	expired, cancel := context.WithCancel(ctx)
	cancel()
	_ = first.Shutdown(expired)

	second := newBus()
	dead := make(chan *herald.Message, 1)
	must(t, second.Handle("jobs.dlq", "ops", func(_ context.Context, m *herald.Message) error {
		dead <- m
		return nil
	}))
	must(t, second.Start(ctx))
	defer func() { must(t, second.Shutdown(ctx)) }()
	select {
	case m := <-dead:
		if r := herald.ReadDeadLetter(m); !strings.Contains(r.Reason, "delivered 2 times, more than the limit of 1") || r.Group != "workers" {
			t.Errorf("dead letter %+v", r)
		}
	case <-ctx.Done():
		t.Fatal("no dead letter")
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("%d runs, want 1: the second delivery ran", n)
	}
}

// TestBatchErrorOutsideTheBatchFailsAll: a BatchError naming an index the
// batch does not have (a handler bug) acknowledges nothing.
func TestBatchErrorOutsideTheBatchFailsAll(t *testing.T) {
	var mu sync.Mutex
	results := map[string][]error{}
	bus, _ := newTestBus(t, herald.WithHandleHook(func(r herald.HandleResult) {
		mu.Lock()
		results[r.Message.ID] = append(results[r.Message.ID], r.Err)
		mu.Unlock()
	}))
	var calls atomic.Int32
	must(t, bus.HandleBatch("jobs", "workers", func(ctx context.Context, msgs []*herald.Message) error {
		if calls.Add(1) == 1 {
			var be herald.BatchError
			return be.Fail(len(msgs), errors.New("off by one")).Err()
		}
		return nil
	}, herald.WithBatch(2, time.Hour), herald.WithScheduler(herald.SchedulerConfig{RedeliveryBackoff: time.Millisecond})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.PublishMessages(ctx, &herald.Message{ID: "a", Topic: "jobs"}, &herald.Message{ID: "b", Topic: "jobs"}))
	eventually(t, "both settled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(results["a"]) == 2 && len(results["b"]) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	var be *herald.BatchError
	for id, rs := range results {
		if !errors.As(rs[0], &be) || rs[1] != nil {
			t.Errorf("%s: %v, want the BatchError, then acknowledged", id, rs)
		}
	}
}
