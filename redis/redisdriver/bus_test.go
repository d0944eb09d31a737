package redisdriver_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// TestPoisonGoesToDeadLetterAfterMaxDeliveries: a message whose handler
// never finishes (it hangs until its consumer is stopped, as a crashing
// handler would take its process down) comes back with a delivery count
// that Redis keeps, and after MaxDeliveries it goes to the dead-letter
// topic without running the handler again; the next message of its key
// is handled.
func TestPoisonGoesToDeadLetterAfterMaxDeliveries(t *testing.T) {
	d := newEnv(t).driver(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	const maxDeliveries = 3

	var mu sync.Mutex
	var counts []int
	good := make(chan int, 10)
	consume := func() (*herald.Bus, chan struct{}) {
		bus := drivertest.NewBus(t, d, topic)
		hung := make(chan struct{}, 1)
		err := herald.Subscribe(bus, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
			if e.Seq != 0 {
				good <- e.Seq
				return nil
			}
			mu.Lock()
			counts = append(counts, herald.DeliveryCount(ctx))
			mu.Unlock()
			hung <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}, herald.WithDeadLetterConfig(herald.DeadLetterConfig{MaxDeliveries: maxDeliveries}))
		if err != nil {
			t.Fatal(err)
		}
		return bus, hung
	}

	first, hung := consume()
	if err := first.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := first.Publish(ctx, drivertest.Event{Key: "poison", Seq: 0}); err != nil {
		t.Fatal(err)
	}
	bus := first
	for range maxDeliveries {
		select {
		case <-hung:
		case <-ctx.Done():
			t.Fatal("the poison message was not delivered")
		}
		// Stop abruptly: the handler's context is cancelled, the message
		// stays unacknowledged and goes back to the group.
		expired, cancelExpired := context.WithCancel(ctx)
		cancelExpired()
		_ = bus.Shutdown(expired)
		bus, hung = consume()
		if err := bus.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dlq := make(chan *herald.Message, 1)
	if err := bus.Handle(herald.DeadLetterTopic(topic), drivertest.Name(t, "dlq"), func(ctx context.Context, m *herald.Message) error {
		dlq <- m
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	defer drivertest.Shutdown(t, bus)
	if err := bus.Publish(ctx, drivertest.Event{Key: "poison", Seq: 1}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-dlq:
		reason := m.Headers[herald.HeaderDeadLetterReason]
		if !strings.Contains(reason, fmt.Sprintf("delivered %d times", maxDeliveries+1)) || m.Headers[herald.HeaderDeadLetterGroup] != group {
			t.Errorf("dead letter headers: %v", m.Headers)
		}
	case <-ctx.Done():
		t.Fatal("the poison message never reached the dead-letter topic")
	}
	select {
	case seq := <-good:
		if seq != 1 {
			t.Errorf("got event %d after the poison one, want 1", seq)
		}
	case <-ctx.Done():
		t.Fatal("the next event of the poisoned key was not handled")
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(counts) != "[1 2 3]" {
		t.Errorf("the handler saw delivery counts %v, want [1 2 3]", counts)
	}
}

// TestInFlightEntriesStayClaimed holds deliveries unacknowledged for many
// claim min idle times, while another member of the group scans for idle
// entries all along: it takes none over, because the holder keeps touching
// them. A liveness margin of two touch intervals guards against a stalled
// machine.
func TestInFlightEntriesStayClaimed(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	opts := []redisdriver.Option{
		redisdriver.WithClaimMinIdle(900 * time.Millisecond),
		redisdriver.WithBlock(20 * time.Millisecond), redisdriver.WithReclaimInterval(20 * time.Millisecond),
	}
	var lost atomic.Int32
	holderDriver := env.driver(t, append(opts, redisdriver.WithErrorHandler(func(err error) {
		if errors.Is(err, redisdriver.ErrClaimLost) {
			lost.Add(1)
		}
	}))...)
	holder, err := holderDriver.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, holder)
	var msgs []*herald.Message
	for i := range 10 {
		msgs = append(msgs, message(topic, fmt.Sprint("m", i), ""))
	}
	if err := holderDriver.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	held := fetchUntil(t, holder, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == len(msgs) })

	other, err := env.driver(t, opts...).Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, other)
	if got := fetchFor(t, other, 3*time.Second); len(got) != 0 {
		t.Fatalf("another member took over %d in-flight entries", len(got))
	}
	if lost.Load() != 0 {
		t.Fatalf("the holder reported %d lost claims", lost.Load())
	}
	for _, dl := range held {
		if err := holder.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	waitNothingPending(t, holderDriver, topic, group)
}

// TestTouchDoesNotStealBack: when another consumer has taken an entry over
// (here by force, as after a long outage), the holder's touch leaves it
// there and reports the loss.
func TestTouchDoesNotStealBack(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	lost := make(chan *redisdriver.EntriesError, 4)
	d := env.driver(t, redisdriver.WithClaimMinIdle(60*time.Millisecond), redisdriver.WithErrorHandler(func(err error) {
		var ee *redisdriver.EntriesError
		if errors.As(err, &ee) && errors.Is(err, redisdriver.ErrClaimLost) {
			lost <- ee
		}
	}))
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	if err := d.Write(ctx, []*herald.Message{message(topic, "a", ""), message(topic, "b", "")}); err != nil {
		t.Fatal(err)
	}
	got := fetchUntil(t, sub, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == 2 })
	pending, err := env.client.XPendingExt(ctx, &goredis.XPendingExtArgs{Stream: d.StreamKey(topic), Group: group, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(pending) != 2 {
		t.Fatalf("pending: %v, %v", pending, err)
	}
	stolen := pending[0].ID
	if err := env.client.XClaim(ctx, &goredis.XClaimArgs{Stream: d.StreamKey(topic), Group: group, Consumer: "thief", Messages: []string{stolen}}).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case ee := <-lost:
		if len(ee.IDs) != 1 || ee.IDs[0] != stolen || ee.Topic != topic || ee.Group != group {
			t.Errorf("reported %+v, want entry %s", ee, stolen)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the lost claim was not reported")
	}
	owner, err := env.client.XPendingExt(ctx, &goredis.XPendingExtArgs{Stream: d.StreamKey(topic), Group: group, Start: stolen, End: stolen, Count: 1}).Result()
	if err != nil || len(owner) != 1 || owner[0].Consumer != "thief" {
		t.Fatalf("the entry was stolen back: %+v, %v", owner, err)
	}
	for _, dl := range got {
		if err := sub.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
}
