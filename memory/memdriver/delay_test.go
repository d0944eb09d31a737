package memdriver_test

import (
	"context"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memdriver"
)

// TestDelayPrecision measures how late delayed messages arrive; it logs
// figures and asserts only correctness.
func TestDelayPrecision(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement of a few seconds")
	}
	t.Run("Batches", func(t *testing.T) { drivertest.DelayLateness(t, newDriver(t), 300, 3*time.Second) })
	t.Run("Trickle", func(t *testing.T) { drivertest.DelayLatenessTrickle(t, newDriver(t), 300, 200*time.Millisecond) })
}

// Close drops the messages still waiting and stops the timer: nothing
// fires after it (goleak checks the rest).
func TestCloseDropsWaitingMessages(t *testing.T) {
	b, err := memdriver.New()
	if err != nil {
		t.Fatal(err)
	}
	m := &herald.Message{ID: "a", Topic: "t"}
	m.SetDeliverAt(time.Now().Add(50 * time.Millisecond))
	if err := b.Write(context.Background(), []*herald.Message{m}); err != nil {
		t.Fatal(err)
	}
	if n := b.Waiting("t"); n != 1 {
		t.Fatalf("Waiting = %d, want 1", n)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := b.Waiting("t"); n != 0 {
		t.Errorf("Waiting after Close = %d, want 0", n)
	}
	time.Sleep(100 * time.Millisecond)
}

// A delayed message to a full partition waits for room like a Write
// would, then arrives; the broker's Write does not block meanwhile.
func TestDelayedIntoFullPartition(t *testing.T) {
	b, err := memdriver.New(memdriver.WithPartitions(1), memdriver.WithCapacity(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	ctx := drivertest.Context(t, 30*time.Second)
	sub, err := b.Subscribe(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	first := &herald.Message{ID: "first", Topic: "t"}
	later := &herald.Message{ID: "later", Topic: "t"}
	later.SetDeliverAt(time.Now().Add(20 * time.Millisecond))
	if err := b.Write(ctx, []*herald.Message{first, later}); err != nil {
		t.Fatal(err)
	}
	got := drivertest.FetchExactly(t, sub, 1)
	time.Sleep(50 * time.Millisecond) // due, and waiting for room
	if got[0].Message.ID != "first" || b.Waiting("t") != 0 {
		t.Fatalf("got %s, %d waiting", got[0].Message.ID, b.Waiting("t"))
	}
	drivertest.Ack(t, sub, got...)
	got = drivertest.FetchExactly(t, sub, 1)
	if got[0].Message.ID != "later" {
		t.Fatalf("got %s, want later", got[0].Message.ID)
	}
	drivertest.Ack(t, sub, got...)
}
