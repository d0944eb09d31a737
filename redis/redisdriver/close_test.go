package redisdriver_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// TestCloseHandsBackAndLeavesCleanly follows the consumers of a group
// through Close: one that leaves with unacknowledged entries hands them
// back (the next member gets them at once, counted) and stays in the group
// until it holds none and a scan removes it; one that leaves with nothing
// pending deletes itself.
func TestCloseHandsBackAndLeavesCleanly(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	d := env.driver(t) // claim min idle 30 s: only handed-back entries are taken over
	stream := d.StreamKey(topic)
	consumers := func() map[string]int64 {
		t.Helper()
		cs, err := env.client.XInfoConsumers(ctx, stream, group).Result()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, c := range cs {
			m[c.Name] = c.Pending
		}
		return m
	}

	first, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*herald.Message
	for i := range 3 {
		msgs = append(msgs, message(topic, fmt.Sprint("m", i), ""))
	}
	if err := d.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	got := fetchUntil(t, first, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == 3 })
	if err := first.Ack(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	drivertest.CloseSub(t, first)
	if err := first.Ack(ctx, got[1]); err == nil {
		t.Error("Ack after Close succeeded")
	}
	cs := consumers()
	if len(cs) != 1 {
		t.Fatalf("after the first Close: consumers %v, want one with 2 pending", cs)
	}
	var departed string
	for name, pending := range cs {
		departed = name
		if pending != 2 {
			t.Fatalf("after the first Close: consumers %v, want one with 2 pending", cs)
		}
	}

	second, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	back := fetchUntil(t, second, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == 2 })
	for i, dl := range back {
		if want := fmt.Sprint("m", i+1); dl.Message.ID != want || dl.Count != 2 {
			t.Errorf("handed back %s count %d, want %s count 2", dl.Message.ID, dl.Count, want)
		}
		if err := second.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	drivertest.CloseSub(t, second)
	if cs := consumers(); len(cs) != 1 || cs[departed] != 0 {
		t.Fatalf("after the second Close: consumers %v, want only %s, holding nothing", cs, departed)
	}

	third, err := env.driver(t, redisdriver.WithConsumerIdle(20*time.Millisecond), redisdriver.WithBlock(10*time.Millisecond),
		redisdriver.WithReclaimInterval(10*time.Millisecond)).Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "the removal of the departed consumer", func() bool {
		fetchFor(t, third, 20*time.Millisecond)
		_, present := consumers()[departed]
		return !present
	})
	drivertest.CloseSub(t, third)
	if cs := consumers(); len(cs) != 0 {
		t.Fatalf("after the last Close: consumers %v, want none", cs)
	}
}
