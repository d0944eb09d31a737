package memdriver_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

// keyed returns n messages of topic with keys k0..k(n-1), spread over the
// partitions.
func keyed(topic string, n int) []*herald.Message {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	return msgs(topic, keys...)
}

func lagOf(t *testing.T, sub herald.Subscription) int64 {
	t.Helper()
	lr, ok := sub.(herald.LagReporter)
	if !ok {
		t.Fatalf("%T is not a herald.LagReporter", sub)
	}
	n, err := lr.Lag(context.Background())
	if err != nil {
		t.Fatalf("Lag: %v", err)
	}
	return n
}

// Acknowledging out of order: a message acknowledged above an
// unacknowledged one no longer counts.
func TestLagSkipsAcknowledgedAboveAGap(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithPartitions(1))
	defer b.Close()
	ctx := context.Background()
	_ = b.Write(ctx, msgs("t", "a", "b", "c", "d"))
	sub, _ := b.Subscribe(ctx, "t", "g")
	defer sub.Close(ctx)
	ds := fetch(t, sub, 4)
	drivertest.Ack(t, sub, []herald.Delivery{ds[1], ds[3]}...)
	if got := lagOf(t, sub); got != 2 {
		t.Fatalf("lag with a and c unacknowledged = %d, want 2", got)
	}
}

// Members of a group count the partitions each owns; together they count
// the group's backlog. When one leaves, the other takes its partitions and
// their lag, in-flight messages handed back included.
func TestLagPerMemberAddsUpToBacklog(t *testing.T) {
	const n = 40
	b := memtest.Broker(t, memdriver.WithPartitions(4))
	defer b.Close()
	ctx := context.Background()
	first, _ := b.Subscribe(ctx, "t", "g")
	second, _ := b.Subscribe(ctx, "t", "g")
	defer second.Close(ctx)
	if err := b.Write(ctx, keyed("t", n)); err != nil {
		t.Fatal(err)
	}
	la, lb := lagOf(t, first), lagOf(t, second)
	if la == 0 || lb == 0 || la+lb != n || b.Backlog("t", "g") != n {
		t.Fatalf("member lags %d and %d, backlog %d; want both positive and adding up to the backlog, %d", la, lb, b.Backlog("t", "g"), n)
	}
	held := fetch(t, first, 3)
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := lagOf(t, second); got != n {
		t.Fatalf("lag of the remaining member = %d, want %d (the leaver's %d in flight handed back)", got, n, len(held))
	}
	if _, err := first.(herald.LagReporter).Lag(ctx); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("Lag after Close = %v, want ErrClosed", err)
	}
}

func TestLagStartLatest(t *testing.T) {
	b := memtest.Broker(t, memdriver.WithStartPosition(herald.StartLatest))
	defer b.Close()
	ctx := context.Background()
	_ = b.Write(ctx, keyed("t", 5))
	sub, _ := b.Subscribe(ctx, "t", "g")
	defer sub.Close(ctx)
	if got := lagOf(t, sub); got != 0 {
		t.Fatalf("lag of a new group starting at the end = %d, want 0", got)
	}
	_ = b.Write(ctx, keyed("t", 3))
	if got := lagOf(t, sub); got != 3 {
		t.Fatalf("lag after 3 more = %d, want 3", got)
	}
}

func TestLagErrors(t *testing.T) {
	b := memtest.Broker(t)
	ctx := context.Background()
	sub, _ := b.Subscribe(ctx, "t", "g")
	defer sub.Close(ctx)
	lr := sub.(herald.LagReporter)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := lr.Lag(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lag with a cancelled context = %v", err)
	}
	_ = b.Close()
	if _, err := lr.Lag(ctx); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("Lag after the Broker closed = %v, want ErrClosed", err)
	}
}

// Lag is read while the member fetches and acknowledges from other
// goroutines: with nothing written meanwhile, every reading is at most the
// one before, and the last is 0.
func TestLagConcurrentWithFetchAndAck(t *testing.T) {
	const n = 2000
	b := memtest.Broker(t, memdriver.WithPartitions(4))
	defer b.Close()
	ctx := context.Background()
	if err := b.Write(ctx, keyed("t", n)); err != nil {
		t.Fatal(err)
	}
	sub, _ := b.Subscribe(ctx, "t", "g")
	defer sub.Close(ctx)
	lr := sub.(herald.LagReporter)

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		acks := make(chan herald.Delivery, 64)
		var ackers sync.WaitGroup
		for range 4 {
			ackers.Go(func() {
				for d := range acks {
					if err := sub.Ack(ctx, d); err != nil {
						t.Error(err)
					}
				}
			})
		}
		buf := make([]herald.Delivery, 50)
		for got := 0; got < n; {
			k, err := sub.Fetch(ctx, buf)
			if err != nil {
				t.Error(err)
				break
			}
			got += k
			for _, d := range buf[:k] {
				acks <- d
			}
		}
		close(acks)
		ackers.Wait()
	})
	prev := int64(n)
	for {
		lag, err := lr.Lag(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if lag > prev || lag < 0 {
			t.Fatalf("lag went from %d to %d with nothing written", prev, lag)
		}
		prev = lag
		select {
		case <-done:
			wg.Wait()
			if lag := lagOf(t, sub); lag != 0 {
				t.Fatalf("lag after everything was acknowledged = %d", lag)
			}
			return
		default:
		}
	}
}

func TestMessagingSystem(t *testing.T) {
	b := memtest.Broker(t)
	defer b.Close()
	var d herald.Driver = b
	ms, ok := d.(herald.MessagingSystem)
	if !ok || ms.MessagingSystem() != "herald.memory" {
		t.Fatal("the Broker does not name its messaging system herald.memory")
	}
}
