package kafkadriver_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// waitLag is the toolkit's, within a minute: the member joins its group
// in the background (ErrRebalancing until then) and commits on an
// interval.
func waitLag(t *testing.T, lr herald.LagReporter, want, lo, hi int64) {
	t.Helper()
	drivertest.WaitLag(t, time.Minute, lr, want, lo, hi, func(err error) bool { return errors.Is(err, kafkadriver.ErrRebalancing) })
}

// writeSpread writes messages from..to-1 with keys that cover every
// partition.
func writeSpread(t *testing.T, d *kafkadriver.Driver, topic string, from, to int) {
	t.Helper()
	msgs := make([]*herald.Message, 0, to-from)
	for i := from; i < to; i++ {
		msgs = append(msgs, &herald.Message{
			ID: "m" + strconv.Itoa(i), Topic: topic, Key: keyFor(i%partitions, "k"), Data: []byte(strconv.Itoa(i)),
		})
	}
	if err := d.Write(testContext(t), msgs); err != nil {
		t.Fatal(err)
	}
}

func subscribe(t *testing.T, d *kafkadriver.Driver, topic, group string) herald.Subscription {
	t.Helper()
	sub, err := d.Subscribe(testContext(t), topic, group)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sub.Close(testContext(t)); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return sub
}

// A group that starts at the end lags by nothing at first, whether or not
// its start position has been resolved and committed yet, then by what is
// written after.
func TestLagStartLatest(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real, kafkadriver.WithStartPosition(herald.StartLatest))
	topic := newTopic(t, d)
	writeSpread(t, d, topic, 0, 10)
	group := drivertest.Name(t, "g")
	sub := subscribe(t, d, topic, group)
	lr := drivertest.LagReporter(t, sub)
	waitLag(t, lr, 0, 0, 0)

	// Messages written before the group resolves its start position are
	// not the group's; once it has committed that position, they are.
	admin := adminClient(t, brokers)
	eventually(t, "the start positions to be committed", func() bool {
		for _, off := range committed(t, admin, group, topic) {
			if off != 10/partitions && off != 10/partitions+1 {
				return false
			}
		}
		return true
	})
	waitLag(t, lr, 0, 0, 0)
	// The fetchers are at the end of their partitions; the new messages
	// reach Lag through their fetch responses.
	writeSpread(t, d, topic, 10, 17)
	waitLag(t, lr, 7, 0, 7)
	drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, 7)...)
	waitLag(t, lr, 0, 0, 7)
}

// A partition whose fetcher is held back (WithMaxUncommitted reached)
// fetches nothing, so what is written meanwhile shows in Lag only because
// Lag asks the broker.
func TestLagOfAPartitionHeldBack(t *testing.T) {
	c, brokers := fakeCluster(t)
	var listOffsets atomic.Int32
	c.ControlKey(int16(kmsg.ListOffsets), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		listOffsets.Add(1)
		return nil, nil, false
	})
	d := newDriver(t, brokers, false, kafkadriver.WithMaxUncommitted(5))
	topic := drivertest.Name(t, "t")
	if err := d.CreateTopic(testContext(t), topic, 1, 1); err != nil {
		t.Fatal(err)
	}
	writeSpread(t, d, topic, 0, 20)
	sub := subscribe(t, d, topic, drivertest.Name(t, "g"))
	lr := drivertest.LagReporter(t, sub)
	held := drivertest.FetchExactly(t, sub, 5) // the fetcher now waits for room
	waitLag(t, lr, 20, 20, 20)

	before := listOffsets.Load()
	writeSpread(t, d, topic, 20, 50)
	waitLag(t, lr, 50, 20, 50)
	if listOffsets.Load() == before {
		t.Fatal("Lag counted messages the held-back fetcher never saw without asking the broker")
	}

	drivertest.Ack(t, sub, held...)
	for range 45 { // one at a time: the fetcher needs acknowledgments to go on
		drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, 1)...)
	}
	waitLag(t, lr, 0, 0, 50)
}

// A member caught up with its partitions has a fetch waiting at the end of
// each: Lag answers from what those fetches report, with no request.
func TestLagOfACaughtUpMemberSendsNoRequest(t *testing.T) {
	c, brokers := fakeCluster(t)
	var listOffsets atomic.Int32
	c.ControlKey(int16(kmsg.ListOffsets), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		listOffsets.Add(1)
		return nil, nil, false
	})
	d := newDriver(t, brokers, false)
	topic := newTopic(t, d)
	writeSpread(t, d, topic, 0, 20)
	sub := subscribe(t, d, topic, drivertest.Name(t, "g"))
	lr := drivertest.LagReporter(t, sub)
	drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, 20)...)
	waitLag(t, lr, 0, 0, 20)

	// Starting fetchers ask for their partitions' offsets themselves, so
	// wait for a stretch of Lag calls without any request; a Lag that asked
	// the broker every time would never get one.
	ctx := testContext(t)
	eventually(t, "20 Lag calls in a row without a ListOffsets request", func() bool {
		before := listOffsets.Load()
		for range 20 {
			if n, err := lr.Lag(ctx); err != nil || n != 0 {
				t.Fatalf("Lag = %d, %v; want 0", n, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return listOffsets.Load() == before
	})

	// What this Driver writes counts in the Lag called after the Write,
	// although the fetches waiting for it may not have answered yet: Lag
	// asks the broker until a fetch sent after the write reports.
	writeSpread(t, d, topic, 20, 24)
	waitLag(t, lr, 4, 4, 4)
	eventually(t, "a Lag without a ListOffsets request after the fetches report the write", func() bool {
		at := listOffsets.Load()
		if n, err := lr.Lag(ctx); err != nil || n != 4 {
			t.Fatalf("Lag = %d, %v; want 4", n, err)
		}
		return listOffsets.Load() == at
	})
}

// While the group rebalances, Lag is safe to call from other goroutines
// and says when the member owns nothing; once settled, the members' lags
// add up to the group's.
func TestLagAcrossARebalance(t *testing.T) {
	const n = 40
	brokers, real := cluster(t)
	da, db := newDriver(t, brokers, real), newDriver(t, brokers, real)
	topic, group := newTopic(t, da), drivertest.Name(t, "g")
	writeSpread(t, da, topic, 0, n)
	a := subscribe(t, da, topic, group)
	la := drivertest.LagReporter(t, a)
	waitLag(t, la, n, n, n)

	stop := make(chan struct{})
	var hammer sync.WaitGroup
	hammerLag := func(lr herald.LagReporter) {
		hammer.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if v, err := lr.Lag(context.Background()); err != nil && !errors.Is(err, kafkadriver.ErrRebalancing) || v < 0 || v > n {
					t.Errorf("Lag during a rebalance = %d, %v", v, err)
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	hammerLag(la)
	b := subscribe(t, db, topic, group)
	lb := drivertest.LagReporter(t, b)
	hammerLag(lb)

	ctx := testContext(t)
	eventually(t, "both members to own partitions whose lags add up to the group's", func() bool {
		va, erra := la.Lag(ctx)
		vb, errb := lb.Lag(ctx)
		return erra == nil && errb == nil && va > 0 && vb > 0 && va+vb == n
	})
	close(stop)
	hammer.Wait()

	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitLag(t, la, n, 0, n)
}

func TestMessagingSystem(t *testing.T) {
	d, err := kafkadriver.New([]string{"127.0.0.1:1"}) // never dialled
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ms, ok := any(d).(herald.MessagingSystem)
	if !ok || ms.MessagingSystem() != "kafka" {
		t.Fatal("the Driver does not name its messaging system kafka")
	}
}
