package redisdriver_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
	"github.com/heraldbus/herald/redis/redistest"
)

// TestClusterFailover kills (SIGKILL) the master that holds a stream's
// slot while a producer writes to the stream and a consumer group of two
// members reads it; its replica takes over, the dead node is started again
// as the new master's replica, and production goes on. It then counts the
// messages Write acknowledged that the group never got (lost) and the
// extra deliveries (duplicates).
//
// On loopback a replica is a fraction of a millisecond behind its master,
// so a plain kill shows no loss. To open the window that a slow network or
// a stalled replica opens, the replica is paused (SIGSTOP) for a moment
// before the kill while the producer floods the stream with large
// messages and the group, busy elsewhere, reads nothing: the master
// acknowledges writes its replica never gets, and that nobody read. Redis
// replicates asynchronously, so the test reports what was lost and does
// not fail on it. The Wait run shows what WithWait(1, ...) changes.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("a failover takes seconds")
	}
	for _, tc := range []struct {
		name string
		opts []redisdriver.Option
	}{
		{"NoWait", nil},
		{"Wait", []redisdriver.Option{redisdriver.WithWait(1, 500*time.Millisecond)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runFailover(t, tc.opts...)
		})
	}
}

// failoverLedger is what the producer had acknowledged and what the group
// got, by message ID.
type failoverLedger struct {
	flood atomic.Bool // write large messages without a pause, and read nothing

	mu        sync.Mutex
	acked     []string // in order
	ackedSet  map[string]bool
	delivered map[string]int
	marker    bool // the last message arrived
}

func (l *failoverLedger) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// pauseWindow is how long the replica lags before its master is killed:
// the length of the scenario's stall, not a bound on anything.
const pauseWindow = 2 * time.Second

// failoverMarker is the ID of the message written after all the others.
const failoverMarker = "marker"

func runFailover(t *testing.T, opts ...redisdriver.Option) {
	cluster := redistest.StartCluster(t)
	client := cluster.Client(t, &goredis.ClusterOptions{
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 2 * time.Second, WriteTimeout: time.Second,
		MinRetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 100 * time.Millisecond,
	})
	var driverErrors atomic.Int64
	d, err := redisdriver.New(client, append([]redisdriver.Option{
		redisdriver.WithKeyPrefix("herald:failover:"),
		redisdriver.WithBlock(50 * time.Millisecond),
		redisdriver.WithClaimMinIdle(time.Second),
		redisdriver.WithReclaimInterval(100 * time.Millisecond),
		redisdriver.WithErrorHandler(func(error) { driverErrors.Add(1) }),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const topic, group = "orders", "billing"
	ledger := &failoverLedger{ackedSet: make(map[string]bool), delivered: make(map[string]int)}

	var consumers sync.WaitGroup
	stopConsumers := make(chan struct{})
	var fetchErrors atomic.Int64
	for range 2 {
		sub, err := d.Subscribe(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		consumers.Go(func() {
			defer drivertest.CloseSub(t, sub)
			consume(ctx, sub, ledger, stopConsumers, &fetchErrors)
		})
	}

	stopProducer := make(chan struct{})
	var failedWrites atomic.Int64
	produced := make(chan error, 1)
	go func() { produced <- produce(ctx, d, topic, ledger, stopProducer, &failedWrites) }()

	const before, after = 1000, 1000
	drivertest.Eventually(t, time.Minute, "the writes before the failover", func() bool { return ledger.ackedCount() >= before })
	atPause := ledger.ackedCount()
	paused := cluster.PauseReplicaOf(d.StreamKey(topic))
	ledger.flood.Store(true)
	time.Sleep(pauseWindow)
	atKill := ledger.ackedCount()
	start := time.Now()
	killed, promoted := cluster.KillMasterOf(d.StreamKey(topic))
	ledger.flood.Store(false)
	failedOver := time.Since(start)
	cluster.Restart(killed)
	rejoined := time.Since(start)
	atRestart := ledger.ackedCount()
	drivertest.Eventually(t, time.Minute, "the writes after the failover", func() bool { return ledger.ackedCount() >= atRestart+after })
	close(stopProducer)
	if err := <-produced; err != nil {
		t.Fatalf("producer: %v", err)
	}
	drivertest.Eventually(t, 2*time.Minute, "the group to get the last message and acknowledge everything", func() bool {
		ledger.mu.Lock()
		marker := ledger.marker
		ledger.mu.Unlock()
		st, err := d.GroupStats(ctx, topic, group)
		return marker && err == nil && st.Pending == 0
	})
	close(stopConsumers)
	consumers.Wait()

	ledger.mu.Lock()
	defer ledger.mu.Unlock()
	var lost []string
	for _, id := range ledger.acked {
		if ledger.delivered[id] == 0 {
			lost = append(lost, id)
		}
	}
	duplicates, unacked := 0, 0
	for id, n := range ledger.delivered {
		duplicates += n - 1
		if !ledger.ackedSet[id] {
			unacked++
		}
	}
	t.Logf("replica %s paused after %d acknowledged writes; master %s killed %v later, after %d (%d while the replica lagged); %s took over after %v; the dead node rejoined as its replica after %v (%d acknowledged writes by then)",
		paused, atPause, killed, pauseWindow, atKill, atKill-atPause, promoted, failedOver.Round(time.Millisecond), rejoined.Round(time.Millisecond), atRestart)
	t.Logf("%d messages acknowledged by Write, %d failed write attempts retried; %d distinct messages delivered: %d LOST (acknowledged, never delivered), %d duplicate deliveries, %d delivered but never acknowledged; %d fetch errors, %d background driver errors",
		len(ledger.acked), failedWrites.Load(), len(ledger.delivered), len(lost), duplicates, unacked, fetchErrors.Load(), driverErrors.Load())
	if len(lost) > 0 {
		t.Logf("lost: %v", lost[:min(len(lost), 20)])
	}
	if unacked > 0 {
		t.Errorf("%d messages delivered that the producer never saw acknowledged: every failed write is retried until acknowledged", unacked)
	}
}

// produce writes batches of ten messages until stop is closed, retrying
// each failed message until Write acknowledges it, then the marker. It
// writes small messages a batch every millisecond or so, and 4 KiB ones
// as fast as it can while ledger.flood is set.
func produce(ctx context.Context, d *redisdriver.Driver, topic string, ledger *failoverLedger, stop <-chan struct{}, failedWrites *atomic.Int64) error {
	const batch = 10
	small, large := make([]byte, 64), make([]byte, 4<<10)
	for seq := 0; ; seq += batch {
		var msgs []*herald.Message
		select {
		case <-stop:
			msgs = []*herald.Message{{ID: failoverMarker, Topic: topic, Data: []byte("end")}}
		default:
			payload := small
			if ledger.flood.Load() {
				payload = large
			} else {
				time.Sleep(time.Millisecond)
			}
			for i := seq; i < seq+batch; i++ {
				msgs = append(msgs, &herald.Message{ID: fmt.Sprintf("m%07d", i), Topic: topic, Key: fmt.Sprint("k", i%8), Data: payload})
			}
		}
		if err := writeUntilAcknowledged(ctx, d, msgs, ledger, failedWrites); err != nil {
			return err
		}
		if msgs[0].ID == failoverMarker {
			return nil
		}
	}
}

// writeUntilAcknowledged writes msgs, and again the ones a Write reports
// failed, until none is left.
func writeUntilAcknowledged(ctx context.Context, d *redisdriver.Driver, msgs []*herald.Message, ledger *failoverLedger, failedWrites *atomic.Int64) error {
	for len(msgs) > 0 {
		err := d.Write(ctx, msgs)
		var retry []*herald.Message
		var werr *herald.WriteError
		switch {
		case err == nil:
		case errors.As(err, &werr):
			for _, f := range werr.Failed {
				retry = append(retry, msgs[f.Index])
			}
		default:
			retry = msgs
		}
		ledger.mu.Lock()
		for _, m := range msgs {
			if !slices.Contains(retry, m) && !ledger.ackedSet[m.ID] {
				ledger.acked = append(ledger.acked, m.ID)
				ledger.ackedSet[m.ID] = true
			}
		}
		ledger.mu.Unlock()
		if len(retry) > 0 {
			failedWrites.Add(int64(len(retry)))
			if ctx.Err() != nil {
				return fmt.Errorf("%d messages never acknowledged: %w", len(retry), ctx.Err())
			}
			time.Sleep(20 * time.Millisecond)
		}
		msgs = retry
	}
	return nil
}

// consume records and acknowledges what sub delivers until stop is
// closed, going on after errors. It reads nothing while ledger.flood is
// set.
func consume(ctx context.Context, sub herald.Subscription, ledger *failoverLedger, stop <-chan struct{}, fetchErrors *atomic.Int64) {
	buf := make([]herald.Delivery, 32)
	for {
		select {
		case <-stop:
			return
		default:
		}
		if ledger.flood.Load() {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		n, err := sub.Fetch(fctx, buf)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			fetchErrors.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
		ledger.mu.Lock()
		for _, dl := range buf[:n] {
			ledger.delivered[dl.Message.ID]++
			if dl.Message.ID == failoverMarker {
				ledger.marker = true
			}
		}
		ledger.mu.Unlock()
		for _, dl := range buf[:n] {
			_ = sub.Ack(ctx, dl)
		}
	}
}
