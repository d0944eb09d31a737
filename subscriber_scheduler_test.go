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
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

// flakyReader is the memory driver with injected faults: Subscribe fails
// subscribeFailures times, then Fetch fails fetchFailures times.
type flakyReader struct {
	*memdriver.Broker
	subscribeFailures atomic.Int32
	fetchFailures     atomic.Int32
}

func (r *flakyReader) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	if r.subscribeFailures.Add(-1) >= 0 {
		return nil, errors.New("connection refused")
	}
	sub, err := r.Broker.Subscribe(ctx, topic, group)
	if err != nil {
		return nil, err
	}
	return &flakySubscription{Subscription: sub, r: r}, nil
}

type flakySubscription struct {
	herald.Subscription
	r *flakyReader
}

func (s *flakySubscription) Fetch(ctx context.Context, dst []herald.Delivery) (int, error) {
	if s.r.fetchFailures.Add(-1) >= 0 {
		return 0, errors.New("connection reset")
	}
	return s.Subscription.Fetch(ctx, dst)
}

func publishRaw(t *testing.T, w herald.Writer, topic string, keys ...string) {
	t.Helper()
	msgs := make([]*herald.Message, len(keys))
	for i, k := range keys {
		msgs[i] = &herald.Message{ID: fmt.Sprintf("%s-%d", k, i), Topic: topic, Key: k, Data: []byte(fmt.Sprint(i))}
	}
	if err := w.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
}

func startScheduler(t *testing.T, r herald.Reader, h herald.HandlerFunc, cfg herald.SchedulerConfig) *herald.Scheduler {
	t.Helper()
	s, err := herald.NewScheduler(r, "jobs", "workers", h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s
}

func TestSchedulerRejectsBadConfig(t *testing.T) {
	b := memtest.Broker(t)
	h := func(context.Context, *herald.Message) error { return nil }
	if _, err := herald.NewScheduler(b, "bad topic", "g", h, herald.SchedulerConfig{}); !errors.Is(err, herald.ErrInvalidName) {
		t.Fatalf("bad topic: %v", err)
	}
	if _, err := herald.NewScheduler(b, "t", "", h, herald.SchedulerConfig{}); !errors.Is(err, herald.ErrInvalidName) {
		t.Fatalf("empty group: %v", err)
	}
	if _, err := herald.NewScheduler(b, "t", "g", nil, herald.SchedulerConfig{}); err == nil {
		t.Fatal("nil handler accepted")
	}
}

func TestSchedulerFailingKeyBlocksOnlyItself(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1))
	var mu sync.Mutex
	handled := map[string]int{}
	var poisonRuns atomic.Int32
	startScheduler(t, b, func(ctx context.Context, m *herald.Message) error {
		if m.Key == "poison" {
			poisonRuns.Add(1)
			return errors.New("keeps failing")
		}
		mu.Lock()
		handled[m.Key]++
		mu.Unlock()
		return nil
	}, herald.SchedulerConfig{Concurrency: 4, RedeliveryBackoff: time.Millisecond, MaxRedeliveryBackoff: 5 * time.Millisecond})

	// All on one partition, so a partition-level block would stop them all.
	keys := []string{"poison", "poison"}
	for i := range 50 {
		keys = append(keys, fmt.Sprintf("k%d", i%5))
	}
	publishRaw(t, b, "jobs", keys...)
	eventually(t, "the healthy keys", func() bool {
		mu.Lock()
		defer mu.Unlock()
		total := 0
		for _, n := range handled {
			total += n
		}
		return total == 50
	})
	eventually(t, "the poison message to be redelivered in place", func() bool { return poisonRuns.Load() >= 3 })
	if b.Backlog("jobs", "workers") != 2 {
		t.Fatalf("backlog %d: the failing message and the one behind it must stay unacknowledged",
			b.Backlog("jobs", "workers"))
	}
}

func TestSchedulerRedeliversInPlaceInKeyOrder(t *testing.T) {
	b := memtest.Broker(t)
	var mu sync.Mutex
	var order []string
	var failed atomic.Bool
	startScheduler(t, b, func(ctx context.Context, m *herald.Message) error {
		if m.ID == "k-0" && !failed.Swap(true) {
			return errors.New("fail the first delivery")
		}
		mu.Lock()
		order = append(order, fmt.Sprintf("%s@%d", m.ID, herald.DeliveryCount(ctx)))
		mu.Unlock()
		return nil
	}, herald.SchedulerConfig{Concurrency: 4, RedeliveryBackoff: time.Millisecond})
	publishRaw(t, b, "jobs", "k", "k", "k")
	eventually(t, "all three", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 3 })
	if got := fmt.Sprint(order); got != "[k-0@2 k-1@1 k-2@1]" {
		t.Fatalf("order %s: the redelivered message must come before later ones of its key", got)
	}
}

func TestSchedulerRetriesDriverErrors(t *testing.T) {
	r := &flakyReader{Broker: memtest.Broker(t)}
	r.subscribeFailures.Store(2)
	r.fetchFailures.Store(2)
	var reported sync.Map
	var got atomic.Int32
	startScheduler(t, r, func(context.Context, *herald.Message) error { got.Add(1); return nil },
		herald.SchedulerConfig{OnError: func(err error) {
			var se *herald.SubscriptionError
			if errors.As(err, &se) {
				reported.Store(se.Op, true)
			}
		}})
	publishRaw(t, r, "jobs", "a", "b")
	eventually(t, "delivery after the driver recovered", func() bool { return got.Load() == 2 })
	for _, op := range []string{"subscribe", "fetch"} {
		if _, ok := reported.Load(op); !ok {
			t.Errorf("%s errors were not reported", op)
		}
	}
}

func TestSchedulerShutdownWaitsForHandlers(t *testing.T) {
	b := memtest.Broker(t)
	started := make(chan struct{})
	release := make(chan struct{})
	var finished atomic.Bool
	s := startScheduler(t, b, func(ctx context.Context, m *herald.Message) error {
		close(started)
		<-release
		finished.Store(true)
		return nil
	}, herald.SchedulerConfig{})
	publishRaw(t, b, "jobs", "a", "a", "a")
	<-started
	done := make(chan error)
	go func() { done <- s.Shutdown(context.Background()) }()
	select {
	case <-done:
		t.Fatal("Shutdown returned while a handler was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("the in-flight handler did not finish")
	}
	// The running message was acknowledged; the two behind it were handed
	// back, released as never started: the next member's first delivery of
	// each counts 1.
	if n := b.Backlog("jobs", "workers"); n != 2 {
		t.Fatalf("backlog %d, want 2", n)
	}
	counts := make(chan int, 2)
	startScheduler(t, b, func(ctx context.Context, m *herald.Message) error {
		counts <- herald.DeliveryCount(ctx)
		return nil
	}, herald.SchedulerConfig{})
	for range 2 {
		if n := <-counts; n != 1 {
			t.Errorf("a message fetched and never started counts %d deliveries on the next member, want 1", n)
		}
	}
}

func TestSchedulerShutdownDeadlineCancelsHandlers(t *testing.T) {
	b := memtest.Broker(t)
	started := make(chan struct{})
	s := startScheduler(t, b, func(ctx context.Context, m *herald.Message) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}, herald.SchedulerConfig{})
	publishRaw(t, b, "jobs", "a")
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if n := b.Backlog("jobs", "workers"); n != 1 {
		t.Fatalf("the cancelled message was lost: backlog %d", n)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Shutdown")
	}
}

func TestSchedulerStartContextCancellation(t *testing.T) {
	b := memtest.Broker(t)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := herald.NewScheduler(b, "jobs", "workers", func(ctx context.Context, m *herald.Message) error {
		<-ctx.Done()
		return ctx.Err()
	}, herald.SchedulerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err == nil {
		t.Fatal("second Start accepted")
	}
	publishRaw(t, b, "jobs", "a")
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case <-s.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("cancelling the Start context did not stop the scheduler")
	}
}

// revokingReader is the memory driver whose subscriptions report every
// delivery with key "gone" as revoked, as a Kafka member does for the
// partitions a rebalance took away.
type revokingReader struct{ *memdriver.Broker }

func (r revokingReader) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	sub, err := r.Broker.Subscribe(ctx, topic, group)
	if err != nil {
		return nil, err
	}
	return revokingSubscription{sub}, nil
}

type revokingSubscription struct{ herald.Subscription }

func (revokingSubscription) Revoked(d herald.Delivery) bool { return d.Message.Key == "gone" }

func TestSchedulerSkipsRevokedDeliveries(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1))
	var mu sync.Mutex
	var ran []string
	startScheduler(t, revokingReader{b}, func(ctx context.Context, m *herald.Message) error {
		mu.Lock()
		ran = append(ran, m.Key)
		mu.Unlock()
		return nil
	}, herald.SchedulerConfig{Concurrency: 2})
	publishRaw(t, b, "jobs", "gone", "kept", "gone", "kept")
	eventually(t, "the kept messages", func() bool { mu.Lock(); defer mu.Unlock(); return len(ran) == 2 })
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(ran) != "[kept kept]" {
		t.Fatalf("ran %v: a revoked delivery was run", ran)
	}
	if n := b.Backlog("jobs", "workers"); n != 2 {
		t.Fatalf("backlog %d: revoked deliveries must stay unacknowledged for their new owner", n)
	}
}

// reportingSubscription reports one background error as soon as it is
// told where to.
type reportingSubscription struct{ herald.Subscription }

func (reportingSubscription) ReportErrorsTo(report func(error)) {
	report(errors.New("acknowledgment flush failed"))
}

type reportingReader struct{ *memdriver.Broker }

func (r reportingReader) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	sub, err := r.Broker.Subscribe(ctx, topic, group)
	if err != nil {
		return nil, err
	}
	return reportingSubscription{sub}, nil
}

func TestSchedulerForwardsBackgroundErrors(t *testing.T) {
	got := make(chan error, 1)
	startScheduler(t, reportingReader{memtest.Broker(t)}, func(context.Context, *herald.Message) error { return nil },
		herald.SchedulerConfig{OnError: func(err error) { got <- err }})
	select {
	case err := <-got:
		var se *herald.SubscriptionError
		if !errors.As(err, &se) || se.Op != "background" || se.Topic != "jobs" || se.Group != "workers" {
			t.Fatalf("got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the background error never reached OnError")
	}
}
