package memdriver_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newDriver(t *testing.T) herald.Driver { return memtest.Broker(t) }

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		NewDriver:       newDriver,
		MaxMessageBytes: memdriver.DefaultMaxMessageBytes,
		DeliveryCounts:  true,
		Lag:             true,
		Delay:           true,
		Tables:          true,
		TimePrecision:   1, // the memory driver keeps the Time it was given
	})
}

func msgs(topic string, keys ...string) []*herald.Message {
	out := make([]*herald.Message, len(keys))
	for i, k := range keys {
		out[i] = &herald.Message{ID: fmt.Sprint(k, i), Topic: topic, Key: k}
	}
	return out
}

func fetch(t *testing.T, sub herald.Subscription, max int) []herald.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	buf := make([]herald.Delivery, max)
	n, err := sub.Fetch(ctx, buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestBackpressureBlocksUntilAck(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1), memdriver.WithCapacity(4))
	defer b.Close()
	ctx := context.Background()
	sub, err := b.Subscribe(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	if err := b.Write(ctx, msgs("t", "a", "b", "c", "d")); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if err := b.Write(short, msgs("t", "e")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Write into a full partition = %v, want DeadlineExceeded", err)
	}
	done := make(chan error)
	go func() { done <- b.Write(ctx, msgs("t", "e")) }()
	ds := fetch(t, sub, 1)
	select {
	case <-done:
		t.Fatal("Write returned before anything was acknowledged")
	case <-time.After(20 * time.Millisecond):
	}
	if err := sub.Ack(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Write after the ack: %v", err)
	}
}

func TestCloseWakesBlockedCalls(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1), memdriver.WithCapacity(1))
	ctx := context.Background()
	sub, _ := b.Subscribe(ctx, "t", "g")
	other, _ := b.Subscribe(ctx, "empty", "g")
	_ = b.Write(ctx, msgs("t", "a"))
	writeErr := make(chan error)
	go func() { writeErr <- b.Write(ctx, msgs("t", "b")) }()
	fetchErr := make(chan error)
	go func() {
		_, err := other.Fetch(ctx, make([]herald.Delivery, 1))
		fetchErr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	_ = b.Close()
	if err := <-writeErr; !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("blocked Write after Close = %v", err)
	}
	if err := <-fetchErr; !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("blocked Fetch after Close = %v", err)
	}
	if err := b.Write(ctx, msgs("t", "c")); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("Write after Close = %v", err)
	}
	_ = sub.Close(ctx)
	_ = other.Close(ctx)
}

func TestPartitionMovesOnlyWhenSettled(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1))
	defer b.Close()
	ctx := context.Background()
	first, _ := b.Subscribe(ctx, "t", "g")
	_ = b.Write(ctx, msgs("t", "k", "k", "k"))
	ds := fetch(t, first, 1) // first holds k-0 in flight

	// With one partition the first member keeps it when a second joins.
	// When the first leaves, its in-flight message goes to the second
	// before the ones behind it.
	second, _ := b.Subscribe(ctx, "t", "g")
	_ = first.Close(ctx)
	got := fetch(t, second, 3)
	if len(got) != 3 || got[0].Message.ID != ds[0].Message.ID || got[0].Count != 2 {
		t.Fatalf("after the owner left: %d deliveries, first %q count %d", len(got), got[0].Message.ID, got[0].Count)
	}
	if err := first.Ack(ctx, ds[0]); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("Ack from a closed member = %v, want ErrClosed", err)
	}
	for _, d := range got {
		_ = second.Ack(ctx, d)
	}
	_ = second.Close(ctx)
	if n := b.Backlog("t", "g"); n != 0 {
		t.Fatalf("backlog %d", n)
	}
}

func TestRebalanceWaitsForInFlight(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(2))
	defer b.Close()
	ctx := context.Background()
	a, _ := b.Subscribe(ctx, "t", "g")
	defer a.Close(ctx)
	// Fill both partitions; a owns both and takes everything.
	_ = b.Write(ctx, msgs("t", "", "", "", ""))
	held := fetch(t, a, 4)
	// b joins: partition 1 should move to it, but only after a settles
	// what it fetched from it.
	bsub, _ := b.Subscribe(ctx, "t", "g")
	defer bsub.Close(ctx)
	_ = b.Write(ctx, msgs("t", "", ""))
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if n, _ := bsub.Fetch(short, make([]herald.Delivery, 8)); n != 0 {
		t.Fatalf("the new member got %d deliveries while the old owner had them in flight", n)
	}
	for _, d := range held {
		if err := a.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if got := fetch(t, bsub, 8); len(got) == 0 {
		t.Fatal("the partition never moved")
	}
}

func TestRetentionForLateGroups(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1), memdriver.WithCapacity(3))
	defer b.Close()
	ctx := context.Background()
	_ = b.Write(ctx, msgs("t", "a", "b", "c", "d", "e")) // no group: oldest two dropped
	early, _ := b.Subscribe(ctx, "t", "early")
	got := fetch(t, early, 10)
	if len(got) != 3 || got[0].Message.Key != "c" {
		t.Fatalf("late group got %d from %q, want the newest 3", len(got), got[0].Message.Key)
	}
	for _, d := range got {
		_ = early.Ack(ctx, d)
	}
	// Acknowledged messages stay retained for groups that join later.
	late, _ := b.Subscribe(ctx, "t", "late")
	if got := fetch(t, late, 10); len(got) != 3 {
		t.Fatalf("a group joining after the ack got %d, want 3", len(got))
	}
	latest := memtest.Broker(t, memdriver.WithStartPosition(herald.StartLatest))
	defer latest.Close()
	_ = latest.Write(ctx, msgs("t", "old"))
	sub, _ := latest.Subscribe(ctx, "t", "g")
	_ = latest.Write(ctx, msgs("t", "new"))
	if got := fetch(t, sub, 10); len(got) != 1 || got[0].Message.Key != "new" {
		t.Fatalf("WithStartPosition(StartLatest) delivered %v", got)
	}
	_ = early.Close(ctx)
	_ = late.Close(ctx)
	_ = sub.Close(ctx)
}

func TestNewReportsEveryInvalidOption(t *testing.T) {
	_, err := memdriver.New(memdriver.WithPartitions(0), memdriver.WithCapacity(-1),
		memdriver.WithMaxMessageBytes(-2), memdriver.WithStartPosition(herald.StartPosition(7)))
	if !errors.Is(err, herald.ErrInvalidOption) {
		t.Fatalf("New = %v, want herald.ErrInvalidOption", err)
	}
	for _, want := range []string{"WithPartitions", "WithCapacity", "WithMaxMessageBytes", "WithStartPosition"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

// A fetch looks only at the partitions marked as having news (the 64th
// mark shared by partitions 63 and up): with 100 partitions, small
// fetches, writes between them and a second member joining midway,
// every message arrives exactly once.
func TestFetchFindsEveryPartitionsNews(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(100))
	ctx := context.Background()
	a, err := b.Subscribe(ctx, "t", "g")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	keys := func(from, n int) []string {
		ks := make([]string, n)
		for i := range ks {
			ks[i] = fmt.Sprint("k", from+i)
		}
		return ks
	}
	const total = 2000
	seen := map[string]int{}
	take := func(sub herald.Subscription, most int) int {
		short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		buf := make([]herald.Delivery, most)
		n, _ := sub.Fetch(short, buf)
		for _, d := range buf[:n] {
			seen[d.Message.Key]++
			if err := sub.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		return n
	}
	var second herald.Subscription
	for w := 0; w < total; w += 100 {
		if err := b.Write(ctx, msgs("t", keys(w, 100)...)); err != nil {
			t.Fatal(err)
		}
		if w == total/2 {
			if second, err = b.Subscribe(ctx, "t", "g"); err != nil {
				t.Fatal(err)
			}
			defer second.Close(ctx)
		}
		take(a, 7)
	}
	for idle := 0; idle < 3; {
		n := take(a, 7)
		if second != nil {
			n += take(second, 7)
		}
		if n == 0 {
			idle++
		}
	}
	if len(seen) != total {
		t.Fatalf("%d of %d keys delivered", len(seen), total)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", k, n)
		}
	}
}
