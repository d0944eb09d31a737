package kafkadriver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Tests on a cluster of three kfake brokers: the conformance suite, the
// crash test, and a stream of keyed writes with a consumer group while a
// partition's leader moves, a broker stops answering for seconds, or the
// group coordinator changes mid-rebalance. kfake keeps one copy of each
// partition's log for all brokers, so a leader change loses nothing by
// itself: whatever is lost, duplicated or reordered is the clients' doing.

const (
	brokers3        = 3
	partitionsOf3   = 6 // partitions of the topics on three brokers
	chaosKeys       = 12
	chaosWriters    = 3
	chaosWriteBatch = 40 // messages per Write, over the writer's keys
)

// threeBrokers starts a kfake cluster of three brokers for this test,
// whose auto-created topics have six partitions on randomly chosen leaders.
func threeBrokers(t testing.TB) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(
		kfake.NumBrokers(brokers3),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(partitionsOf3),
		kfake.GroupMinSessionTimeout(100*time.Millisecond),
	)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// spreadTopic creates a topic of n partitions whose leaders are the
// brokers in turn, before any client has read its metadata.
func spreadTopic(t testing.TB, c *kfake.Cluster, n int) string {
	t.Helper()
	topic := drivertest.Name(t, "t")
	if err := c.CreateTopic(topic, int32(n), nil); err != nil {
		t.Fatal(err)
	}
	for p := range int32(n) {
		if err := c.MoveTopicPartition(topic, p, p%brokers3); err != nil {
			t.Fatal(err)
		}
	}
	return topic
}

func TestConformanceThreeBrokers(t *testing.T) {
	t.Parallel()
	drivertest.Run(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			return newDriver(t, threeBrokers(t).ListenAddrs(), false, conformanceDelays(t)...)
		},
		MaxMessageBytes: kafkadriver.DefaultMaxMessageBytes,
		DeliveryCounts:  true,
		Lag:             true,
		Revocation:      true,
		ErrorReporting:  true,
		Delay:           true,
		Tables:          true,
	})
}

func TestCrashedMemberResumesFromLowestUnackedThreeBrokers(t *testing.T) {
	t.Parallel()
	c := threeBrokers(t)
	crashedMemberResumes(t, c.ListenAddrs(), false, func(*kafkadriver.Driver) string {
		return spreadTopic(t, c, partitions)
	})
}

// chaos is one run of keyed writes and a consuming group on a three-broker
// cluster, with a failure injected in the middle.
type chaos struct {
	t     *testing.T
	c     *kfake.Cluster
	topic string
	group string
	ctx   context.Context

	writerOpts []kafkadriver.Option
	// inject runs while the writers write: it starts the failure and
	// returns when the cluster is back to normal.
	inject func(ch *chaos)

	members     sync.WaitGroup // running members of the group
	stopMembers context.CancelFunc
	membersCtx  context.Context
	acked       atomic.Int64 // messages whose Write returned nil
	failures    atomic.Int64 // messages whose Write returned an error
	tally       tally
}

// tally records what the writers had acknowledged and what the group
// received.
type tally struct {
	mu        sync.Mutex
	acked     map[string]bool // IDs of messages acknowledged by Write
	got       map[string]int  // deliveries by ID
	newest    map[string]int  // per key, the highest seq delivered
	dups      int             // deliveries of an ID delivered before
	reordered int             // first deliveries of a seq below its key's newest
	examples  []string        // a few reorderings, for the failure message
}

func (tl *tally) ack(ids []string) {
	tl.mu.Lock()
	for _, id := range ids {
		tl.acked[id] = true
	}
	tl.mu.Unlock()
}

// receive counts one delivery. A key's messages are on one partition in
// the order written, so the first delivery of each comes in seq order;
// redeliveries (of IDs delivered before) may come any time.
func (tl *tally) receive(m *herald.Message) {
	seq, err := strconv.Atoi(string(m.Data))
	if err != nil {
		return // not ours
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.got[m.ID]++
	if tl.got[m.ID] > 1 {
		tl.dups++
		return
	}
	newest, ok := tl.newest[m.Key]
	if ok && seq < newest {
		tl.reordered++
		if len(tl.examples) < 5 {
			tl.examples = append(tl.examples, fmt.Sprintf("%s seq %d after %d", m.Key, seq, newest))
		}
		return
	}
	tl.newest[m.Key] = seq
}

// missing returns how many acknowledged messages were not received.
func (tl *tally) missing() int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	n := 0
	for id := range tl.acked {
		if tl.got[id] == 0 {
			n++
		}
	}
	return n
}

func newChaos(t *testing.T) *chaos {
	c := threeBrokers(t)
	return &chaos{
		t: t, c: c, ctx: testContext(t),
		topic: spreadTopic(t, c, partitionsOf3),
		group: drivertest.Name(t, "g"),
		tally: tally{acked: map[string]bool{}, got: map[string]int{}, newest: map[string]int{}},
	}
}

// run writes until the injected failure is over and as much again has
// been acknowledged after it, waits for the group to receive everything
// acknowledged, and checks: nothing lost, nothing reordered.
func (ch *chaos) run(members int) {
	t := ch.t
	addrs := ch.c.ListenAddrs()
	producer := newDriver(t, addrs, false, append([]kafkadriver.Option{kafkadriver.WithBatchSize(10)}, ch.writerOpts...)...)
	ch.membersCtx, ch.stopMembers = context.WithCancel(ch.ctx)
	t.Cleanup(func() { ch.stopMembers(); ch.members.Wait() }) // when a check stops the test early
	for range members {
		ch.startMember()
	}

	stop := make(chan struct{})
	var writers sync.WaitGroup
	for w := range chaosWriters {
		writers.Go(func() { ch.write(producer, w, stop) })
	}
	stopWriters := sync.OnceFunc(func() { close(stop); writers.Wait() })
	t.Cleanup(stopWriters)
	ch.waitAcked(ch.acked.Load()+1000, "writes before the failure")
	ch.inject(ch)
	ch.waitAcked(ch.acked.Load()+1000, "writes after the failure")
	stopWriters()

	lost := ch.waitReceived()
	ch.stopMembers()
	ch.members.Wait()
	written, twice, late, logReordered := ch.scanLog()
	t.Logf("in the log: %d records, %d written twice or more (%d copies after a later record of their key), %d first copies after a later record of their key",
		written, twice, late, logReordered)
	if logReordered != 0 {
		t.Errorf("%d records are in the log after a later record of their key", logReordered)
	}

	tl := &ch.tally
	tl.mu.Lock()
	defer tl.mu.Unlock()
	t.Logf("acknowledged %d, failed writes %d, received %d distinct, lost %d, duplicated %d, reordered %d",
		len(tl.acked), ch.failures.Load(), len(tl.got), lost, tl.dups, tl.reordered)
	if lost != 0 {
		t.Errorf("%d acknowledged messages never arrived", lost)
	}
	if tl.reordered != 0 {
		t.Errorf("%d messages arrived after a later message of their key: %v", tl.reordered, tl.examples)
	}
}

// scanLog reads every partition of the topic from the start and counts
// the records; the IDs written more than once (a retried request that had
// been applied), and among those, the extra copies that landed after a
// later seq of their key (a request applied after its retry succeeded and
// the key moved on); and the first copies of a seq below their key's
// highest seq before them, which one request in flight per partition
// rules out.
func (ch *chaos) scanLog() (records, twice, late, reordered int) {
	t := ch.t
	admin := adminClient(t, ch.c.ListenAddrs())
	copies := map[string]int{}
	newest := map[string]int{}
	for p := range partitionsOf3 {
		for offset := int64(0); ; {
			res, err := admin.Fetch(ch.ctx, &kafkago.FetchRequest{
				Topic: ch.topic, Partition: p, Offset: offset, MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond,
			})
			if err == nil {
				err = res.Error
			}
			if err != nil {
				t.Fatalf("read partition %d at offset %d: %v", p, offset, err)
			}
			for {
				r, err := res.Records.ReadRecord()
				if err != nil {
					break
				}
				offset = r.Offset + 1
				records++
				id, key, seq := parseRecord(r)
				if copies[id]++; copies[id] == 2 {
					twice++
				}
				if copies[id] > 1 {
					if seq < newest[key] {
						late++
					}
					continue
				}
				if n, ok := newest[key]; ok && seq < n {
					reordered++
					t.Logf("partition %d offset %d: %s after seq %d of its key", p, r.Offset, id, n)
					continue
				}
				newest[key] = seq
			}
			if offset >= res.HighWatermark {
				break
			}
		}
	}
	return records, twice, late, reordered
}

// parseRecord returns a raw record's herald ID, key and seq.
func parseRecord(r *kafkago.Record) (id, key string, seq int) {
	for _, h := range r.Headers {
		if h.Key == herald.HeaderID {
			id = string(h.Value)
		}
	}
	if r.Key != nil {
		b, _ := io.ReadAll(r.Key)
		key = string(b)
	}
	if r.Value != nil {
		b, _ := io.ReadAll(r.Value)
		seq, _ = strconv.Atoi(string(b))
	}
	return id, key, seq
}

// waitReceived waits, up to a minute, for the group to receive every
// acknowledged message, and returns how many it did not.
func (ch *chaos) waitReceived() (lost int) {
	deadline := time.Now().Add(time.Minute)
	for {
		lost = ch.tally.missing()
		if lost == 0 || time.Now().After(deadline) {
			return lost
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (ch *chaos) waitAcked(n int64, what string) {
	eventually(ch.t, what, func() bool { return ch.acked.Load() >= n })
}

// write is one writer: it owns chaosKeys/chaosWriters keys and writes
// them in batches, each key's seq counting up, until stop is closed. A
// Write that fails leaves a gap in its keys' seqs (those messages may or
// may not be in the log), never a reordering.
func (ch *chaos) write(d *kafkadriver.Driver, w int, stop <-chan struct{}) {
	keys := make([]string, 0, chaosKeys/chaosWriters)
	for k := w; k < chaosKeys; k += chaosWriters {
		keys = append(keys, "key"+strconv.Itoa(k))
	}
	seq := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		msgs := make([]*herald.Message, 0, chaosWriteBatch)
		ids := make([]string, 0, chaosWriteBatch)
		for i := range chaosWriteBatch {
			key := keys[i%len(keys)]
			id := fmt.Sprintf("%s-%d", key, seq)
			msgs = append(msgs, &herald.Message{ID: id, Topic: ch.topic, Key: key, Data: []byte(strconv.Itoa(seq)), Time: time.Now()})
			ids = append(ids, id)
			if i%len(keys) == len(keys)-1 {
				seq++
			}
		}
		if err := d.Write(ch.ctx, msgs); err != nil {
			if ch.failures.Add(int64(len(msgs))) <= 3*chaosWriteBatch {
				ch.t.Logf("writer %d: %v", w, err)
			}
			if ch.ctx.Err() != nil || errors.Is(err, kafkadriver.ErrClosed) {
				return
			}
			continue
		}
		ch.tally.ack(ids)
		ch.acked.Add(int64(len(msgs)))
	}
}

// startMember joins one more member to the group, on a driver of its
// own, that records and acknowledges every delivery until run stops it.
func (ch *chaos) startMember() {
	t := ch.t
	d := newDriver(t, ch.c.ListenAddrs(), false)
	sub, err := d.Subscribe(ch.ctx, ch.topic, ch.group)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ch.membersCtx
	ch.members.Go(func() {
		defer func() {
			if err := sub.Close(ch.ctx); err != nil {
				t.Logf("member Close: %v", err)
			}
		}()
		buf := make([]herald.Delivery, 64)
		for {
			n, err := sub.Fetch(ctx, buf)
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, kafkadriver.ErrClosed):
				t.Errorf("Fetch: %v", err)
				return
			case err != nil:
				t.Logf("Fetch: %v", err) // the driver keeps retrying
				continue
			}
			for _, dl := range buf[:n] {
				ch.tally.receive(dl.Message)
				if err := sub.Ack(ctx, dl); err != nil && !errors.Is(err, kafkadriver.ErrRevoked) && ctx.Err() == nil {
					t.Errorf("Ack: %v", err)
				}
			}
		}
	})
}

// countMisdirected counts, until the test ends, the requests of key that
// reach a broker other than the one whose answer they need (by wrong): the
// requests kfake answers with NOT_LEADER_FOR_PARTITION or NOT_COORDINATOR.
func countMisdirected(c *kfake.Cluster, key kmsg.Key, wrong func(kmsg.Request, int32) bool) *atomic.Int64 {
	var n atomic.Int64
	c.ControlKey(int16(key), func(r kmsg.Request) (kmsg.Response, error, bool) {
		if wrong(r, c.CurrentNode()) {
			n.Add(1)
		}
		return nil, nil, false
	})
	return &n
}

// Every partition's leader moves to the next broker, twice, while
// messages are written and consumed: produce requests in flight reach the
// old leader and are answered NOT_LEADER_FOR_PARTITION until the
// producer's metadata names the new one, and fetches likewise. The
// producer has three attempts: one NOT_LEADER_FOR_PARTITION must be enough
// for it to find the new leader.
func TestLeaderMovesMidStream(t *testing.T) {
	t.Parallel()
	ch := newChaos(t)
	ch.writerOpts = []kafkadriver.Option{kafkadriver.WithMaxAttempts(3)}
	misdirected := countMisdirected(ch.c, kmsg.Produce, func(r kmsg.Request, node int32) bool {
		for _, rt := range r.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				if rt.Topic == ch.topic && ch.c.LeaderFor(rt.Topic, rp.Partition) != node {
					return true
				}
			}
		}
		return false
	})
	ch.inject = func(ch *chaos) {
		for range 2 {
			for p := range int32(partitionsOf3) {
				next := (ch.c.LeaderFor(ch.topic, p) + 1) % brokers3
				if err := ch.c.MoveTopicPartition(ch.topic, p, next); err != nil {
					t.Fatal(err)
				}
			}
			ch.waitAcked(ch.acked.Load()+500, "writes to the new leaders")
		}
	}
	ch.run(1)
	if n := ch.failures.Load(); n != 0 {
		t.Errorf("%d messages failed to be written while the leaders moved", n)
	}
	t.Logf("produce requests that reached a former leader: %d", misdirected.Load())
	if misdirected.Load() == 0 {
		t.Error("no produce request reached a former leader: the leader moves did not happen mid-stream")
	}
}

// One broker stops answering for three seconds: every request it receives
// meanwhile waits (kfake.SleepControl) and is then handled as usual, as a
// broker in a long GC pause or behind a congested link does. With the
// default request timeout the writes wait; with one shorter than the stall
// they time out and are retried while the stalled request is still due to
// be applied.
func TestBrokerStallsMidStream(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		timeout time.Duration
	}{
		{"answered late", kafkadriver.DefaultRequestTimeout},
		{"timed out", time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ch := newChaos(t)
			ch.writerOpts = []kafkadriver.Option{kafkadriver.WithRequestTimeout(c.timeout)}
			ch.inject = func(ch *chaos) {
				held := stall(ch.c, 0, 3*time.Second)
				t.Logf("requests held by the stalled broker: %d", held)
			}
			ch.run(1)
		})
	}
}

// One produce request is held for three seconds, past the producer's
// one-second request timeout, while the broker answers everything else:
// the retry of its batch, and the batches after it, are written first,
// and then the held request is applied too.
func TestProduceRequestAppliedAfterItsRetry(t *testing.T) {
	t.Parallel()
	ch := newChaos(t)
	ch.writerOpts = []kafkadriver.Option{kafkadriver.WithRequestTimeout(time.Second)}
	ch.inject = func(ch *chaos) {
		var held atomic.Bool
		done := make(chan struct{})
		ch.c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
			if ch.c.CurrentNode() == 0 && held.CompareAndSwap(false, true) {
				ch.c.SleepControl(func() { time.Sleep(3 * time.Second) })
				close(done)
			}
			return nil, nil, false
		})
		<-done
	}
	ch.run(1)
}

// stall holds every request that broker node receives for the next d,
// then lets them through; it returns when the stall is over, with how many
// requests it held.
func stall(c *kfake.Cluster, node int32, d time.Duration) int64 {
	until := time.Now().Add(d)
	var held atomic.Int64
	c.Control(func(kmsg.Request) (kmsg.Response, error, bool) {
		if c.CurrentNode() == node && time.Now().Before(until) {
			held.Add(1)
			c.SleepControl(func() { time.Sleep(time.Until(until)) })
		}
		return nil, nil, false
	})
	time.Sleep(d)
	return held.Load()
}

// While a second member joins the group, the group's coordinator moves
// to another broker twice: when the rebalance's first JoinGroup arrives,
// and when its first SyncGroup does. Those requests (and the first
// member's heartbeats and commits) reach the old coordinator and are
// answered NOT_COORDINATOR; the members find the new one and finish the
// rebalance there.
func TestCoordinatorMovesMidRebalance(t *testing.T) {
	t.Parallel()
	ch := newChaos(t)
	// Installed before the counters, so that they see the requests it
	// misdirects.
	var armed atomic.Bool
	moves := map[kmsg.Key]*atomic.Bool{kmsg.JoinGroup: {}, kmsg.SyncGroup: {}}
	for key, moved := range moves {
		ch.c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
			if armed.Load() && (key == kmsg.JoinGroup || moves[kmsg.JoinGroup].Load()) && moved.CompareAndSwap(false, true) {
				moveCoordinator(ch.c, ch.group)
			}
			return nil, nil, false
		})
	}
	groupKeys := []kmsg.Key{kmsg.JoinGroup, kmsg.SyncGroup, kmsg.Heartbeat, kmsg.OffsetCommit}
	var misdirected []*atomic.Int64
	for _, key := range groupKeys {
		misdirected = append(misdirected, countMisdirected(ch.c, key, func(_ kmsg.Request, node int32) bool {
			return ch.c.CoordinatorFor(ch.group) != node
		}))
	}
	ch.inject = func(ch *chaos) {
		if _, err := ch.c.WaitGroupStable(ch.ctx, ch.group, 1); err != nil {
			t.Fatalf("the group did not settle with one member: %v", err)
		}
		armed.Store(true)
		ch.startMember()
		eventually(t, "the coordinator to move twice", func() bool {
			return moves[kmsg.JoinGroup].Load() && moves[kmsg.SyncGroup].Load()
		})
		if _, err := ch.c.WaitGroupStable(ch.ctx, ch.group, 2); err != nil {
			t.Fatalf("the group did not settle with two members: %v", err)
		}
	}
	ch.run(1)
	var counts []string
	total := int64(0)
	for i, key := range groupKeys {
		n := misdirected[i].Load()
		total += n
		counts = append(counts, fmt.Sprintf("%s %d", kmsg.NameForKey(int16(key)), n))
	}
	t.Logf("group requests that reached a former coordinator: %v", counts)
	if total == 0 {
		t.Error("no group request reached a former coordinator")
	}
}

// moveCoordinator makes another broker group's coordinator. It may run in
// a control function: the cluster serves admin calls meanwhile.
func moveCoordinator(c *kfake.Cluster, group string) {
	for old := c.CoordinatorFor(group); c.CoordinatorFor(group) == old; {
		c.RehashCoordinators()
	}
}
