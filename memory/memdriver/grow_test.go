package memdriver_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

// The ring and a group's slots start empty and grow as messages arrive
// and are handed out (16, 32, ... up to the capacity): across every
// growth the ring keeps its messages in order for a group that joins
// late, a member that leaves with acknowledgments above an unacknowledged
// one hands the partition over with those skipped and the rest counted
// again, and at the capacity the oldest acknowledged messages go.
func TestRingsGrowKeepingOrderAndCounts(t *testing.T) {
	const capacity = 100
	b := memtest.Broker(t, memdriver.WithPartitions(1), memdriver.WithCapacity(capacity))
	ctx := context.Background()
	var batch []*herald.Message
	for i := range 70 {
		batch = append(batch, &herald.Message{ID: fmt.Sprintf("m%03d", i), Topic: "t"})
	}
	if err := b.Write(ctx, batch); err != nil {
		t.Fatal(err)
	}
	first, err := b.Subscribe(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	got := fetch(t, first, 70)
	if len(got) != 70 {
		t.Fatalf("fetched %d of 70", len(got))
	}
	for i, d := range got {
		if d.Message.ID != fmt.Sprintf("m%03d", i) || d.Count != 1 {
			t.Fatalf("delivery %d: %s count %d", i, d.Message.ID, d.Count)
		}
		if i != 0 && i%2 == 0 { // m000 stays unacknowledged: nothing advances
			if err := first.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	second, err := b.Subscribe(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close(ctx)
	again := fetch(t, second, 70)
	if len(again) != 36 {
		t.Fatalf("after the hand-over: %d deliveries, want the 36 unacknowledged", len(again))
	}
	for i, d := range again {
		want := fmt.Sprintf("m%03d", 0)
		if i > 0 {
			want = fmt.Sprintf("m%03d", 2*i-1)
		}
		if d.Message.ID != want || d.Count != 2 {
			t.Fatalf("redelivery %d: %s count %d, want %s count 2", i, d.Message.ID, d.Count, want)
		}
		if err := second.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := second.(herald.LagReporter).Lag(ctx); err != nil || n != 0 {
		t.Fatalf("lag after acknowledging everything: %d, %v", n, err)
	}

	// Past the capacity the oldest acknowledged messages go; a late group
	// reads the newest capacity of them, in order.
	batch = batch[:0]
	for i := 70; i < 150; i++ {
		batch = append(batch, &herald.Message{ID: fmt.Sprintf("m%03d", i), Topic: "t"})
	}
	if err := b.Write(ctx, batch[:30]); err != nil {
		t.Fatal(err)
	}
	drain := fetch(t, second, 30)
	for _, d := range drain {
		_ = second.Ack(ctx, d)
	}
	if err := b.Write(ctx, batch[30:]); err != nil {
		t.Fatal(err)
	}
	late, err := b.Subscribe(ctx, "t", "late")
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close(ctx)
	held := fetch(t, late, 2*capacity)
	if len(held) != capacity || held[0].Message.ID != "m050" || held[capacity-1].Message.ID != "m149" {
		t.Fatalf("late group: %d from %s to %s, want %d from m050 to m149", len(held), held[0].Message.ID, held[len(held)-1].Message.ID, capacity)
	}
	for i, d := range held {
		if want := fmt.Sprintf("m%03d", 50+i); d.Message.ID != want {
			t.Fatalf("late delivery %d is %s, want %s", i, d.Message.ID, want)
		}
	}
}

// BenchmarkIdleTopics subscribes b.N topics, one group each, on one Broker
// with the default options, and reports the heap each costs while nothing
// is published.
func BenchmarkIdleTopics(b *testing.B) {
	broker, err := memdriver.New()
	if err != nil {
		b.Fatal(err)
	}
	defer broker.Close()
	ctx := context.Background()
	subs := make([]herald.Subscription, 0, b.N)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range b.N {
		sub, err := broker.Subscribe(ctx, fmt.Sprintf("topic-%d", i), "g")
		if err != nil {
			b.Fatal(err)
		}
		subs = append(subs, sub)
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "heap-B/topic")
	for _, sub := range subs {
		_ = sub.Close(ctx)
	}
}
