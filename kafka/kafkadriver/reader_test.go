package kafkadriver_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"strconv"
	"strings"
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

const partitions = 4

// newTopic creates a topic with the test's partition count.
func newTopic(t *testing.T, d *kafkadriver.Driver) string {
	t.Helper()
	topic := drivertest.Name(t, "t")
	if err := d.CreateTopic(testContext(t), topic, partitions, 1); err != nil {
		t.Fatal(err)
	}
	return topic
}

// eventually is the toolkit's, bounded by a minute.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	drivertest.Eventually(t, time.Minute, what, cond)
}

// seen is a concurrency-safe record of handled events.
type seen struct {
	mu    sync.Mutex
	count map[int]int // by Seq
	dups  int
}

func newSeen() *seen { return &seen{count: make(map[int]int)} }

func (s *seen) add(seq int) {
	s.mu.Lock()
	if s.count[seq]++; s.count[seq] > 1 {
		s.dups++
	}
	s.mu.Unlock()
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.count)
}

func publishRange(t *testing.T, bus *herald.Bus, from, to int) {
	t.Helper()
	ctx := testContext(t)
	for i := from; i < to; i += 50 {
		events := make([]any, 0, 50)
		for j := i; j < min(i+50, to); j++ {
			events = append(events, drivertest.Event{Key: "k" + strconv.Itoa(j%40), Seq: j})
		}
		if err := bus.Publish(ctx, events...); err != nil {
			t.Fatal(err)
		}
	}
}

// Two members of one group: the second joins while the first is
// consuming, then the first leaves while messages keep coming. Every
// message is handled (duplicates allowed), and everything handled is
// committed: a third member afterwards gets nothing but a marker.
func TestRebalanceLosesNothing(t *testing.T) {
	brokers, real := cluster(t)
	da, db := newDriver(t, brokers, real), newDriver(t, brokers, real)
	topic, group := newTopic(t, da), drivertest.Name(t, "g")
	got := newSeen()
	var byA, byB atomic.Int32
	handler := func(member *atomic.Int32) func(context.Context, drivertest.Event, *herald.Message) error {
		return func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
			member.Add(1)
			got.add(e.Seq)
			return nil
		}
	}
	published := 0
	publish := func(bus *herald.Bus, n int) {
		publishRange(t, bus, published, published+n)
		published += n
	}
	// publishUntil keeps messages coming until cond holds: how soon a
	// rebalance completes is up to the group, not the test.
	publishUntil := func(bus *herald.Bus, what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			publish(bus, 40)
			time.Sleep(20 * time.Millisecond)
		}
	}

	a := drivertest.NewBus(t, da, topic)
	if err := herald.Subscribe(a, group, handler(&byA), herald.WithConcurrency(8)); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	publish(a, 1000)
	eventually(t, "the first member to consume", func() bool { return byA.Load() > 0 })

	b := drivertest.NewBus(t, db, topic)
	if err := herald.Subscribe(b, group, handler(&byB), herald.WithConcurrency(8)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	publish(a, 1000)
	publishUntil(a, "the second member to get partitions", func() bool { return byB.Load() > 0 })

	var stopped sync.WaitGroup
	stopped.Go(func() { drivertest.Shutdown(t, a) })
	publish(b, 1000)
	stopped.Wait()
	eventually(t, "every message", func() bool { return got.distinct() == published })
	drivertest.Shutdown(t, b)
	t.Logf("%d messages: first member %d, second %d, duplicates %d", published, byA.Load(), byB.Load(), got.dups)

	c := drivertest.NewBus(t, db, topic)
	var late atomic.Int32
	var markers atomic.Int32
	if err := herald.Subscribe(c, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		if e.Seq == -1 {
			markers.Add(1)
		} else {
			late.Add(1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	defer drivertest.Shutdown(t, c)
	for p := range partitions {
		// One marker per partition, so every partition's position is read.
		if err := c.Publish(testContext(t), drivertest.Event{Key: keyFor(p, "marker"), Seq: -1}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the markers", func() bool { return markers.Load() == partitions })
	if late.Load() != 0 {
		t.Fatalf("%d messages handled and acknowledged earlier came back: offsets were not committed", late.Load())
	}
}

// keyFor returns a key that lands on partition p.
func keyFor(p int, prefix string) string {
	for i := 0; ; i++ {
		k := prefix + "-" + strconv.Itoa(i)
		if kafkadriver.Partition(k, partitions) == p {
			return k
		}
	}
}

// A member that dies without its final commit (Close with an ended
// context) leaves the group's offsets where its last periodic commit put
// them: at the lowest unacknowledged offset of each partition. A new member
// receives exactly the messages from there on.
func TestCrashedMemberResumesFromLowestUnacked(t *testing.T) {
	brokers, real := cluster(t)
	crashedMemberResumes(t, brokers, real, func(d *kafkadriver.Driver) string { return newTopic(t, d) })
}

// crashedMemberResumes is TestCrashedMemberResumesFromLowestUnacked on
// brokers, with a topic of the test's partition count from newTopic.
func crashedMemberResumes(t *testing.T, brokers []string, real bool, newTopic func(*kafkadriver.Driver) string) {
	d1 := newDriver(t, brokers, real)
	topic, group := newTopic(d1), drivertest.Name(t, "g")
	ctx := testContext(t)

	const perPartition = 40
	var msgs []*herald.Message
	offsetOf := map[string][2]int{} // id -> partition, offset
	for p := range partitions {
		key := keyFor(p, "k")
		for off := range perPartition {
			id := fmt.Sprintf("p%d-o%d", p, off)
			msgs = append(msgs, &herald.Message{ID: id, Topic: topic, Key: key, Data: []byte(id), Time: time.Now()})
			offsetOf[id] = [2]int{p, off}
		}
	}
	if err := d1.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}

	// Acknowledge offsets 0..14 and 20..29 of every partition: 15 is the
	// lowest unacknowledged offset.
	const gap = 15
	first, err := d1.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]herald.Delivery, 64)
	for received := 0; received < len(msgs); {
		n, err := first.Fetch(ctx, buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range buf[:n] {
			off := offsetOf[d.Message.ID][1]
			if off < gap || (off >= 20 && off < 30) {
				if err := first.Ack(ctx, d); err != nil {
					t.Fatal(err)
				}
			}
		}
		received += n
	}
	admin := adminClient(t, brokers)
	eventually(t, "the periodic commit of every partition", func() bool {
		return committed(t, admin, group, topic) == [partitions]int64{gap, gap, gap, gap}
	})
	crashed, cancel := context.WithCancel(context.Background())
	cancel()
	if err := first.Close(crashed); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close with an ended context = %v, want context.Canceled", err)
	}

	d2 := newDriver(t, brokers, real)
	second, err := d2.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := second.Close(ctx); err != nil {
			t.Error(err)
		}
	}()
	want := partitions * (perPartition - gap)
	got := map[string]bool{}
	for len(got) < want {
		n, err := second.Fetch(ctx, buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range buf[:n] {
			if off := offsetOf[d.Message.ID][1]; off < gap {
				t.Fatalf("message %s below the committed offset %d came back", d.Message.ID, gap)
			}
			got[d.Message.ID] = true
			if err := second.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// committed returns the group's committed offset of each partition (-1
// when none).
func committed(t *testing.T, c *kafkago.Client, group, topic string) [partitions]int64 {
	t.Helper()
	res, err := c.OffsetFetch(testContext(t), &kafkago.OffsetFetchRequest{
		GroupID: group, Topics: map[string][]int{topic: {0, 1, 2, 3}},
	})
	var out [partitions]int64
	if err != nil || res.Error != nil {
		t.Logf("offset fetch: %v %v", err, res)
		return out
	}
	for _, p := range res.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// A handler that keeps failing for one key holds back only that key: the
// messages after it on the same partition are handled meanwhile; the
// failing message is redelivered until it succeeds, before its key's next
// message; and while it fails, the partition's commit stays below it, so a
// restart receives it again.
func TestFailingKeyBlocksOnlyItself(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	topic, group := newTopic(t, d), drivertest.Name(t, "g")
	bad := keyFor(1, "bad")
	var good atomic.Int32
	var mu sync.Mutex
	var badOrder []int
	release := make(chan struct{})
	const goods = 100

	bus := drivertest.NewBus(t, d, topic)
	err := herald.Subscribe(bus, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		if e.Key != bad {
			good.Add(1)
			return nil
		}
		if e.Seq == 0 {
			select {
			case <-release:
			default:
				return errors.New("not yet")
			}
		}
		mu.Lock()
		badOrder = append(badOrder, e.Seq)
		mu.Unlock()
		return nil
	}, herald.WithConcurrency(4), herald.WithScheduler(herald.SchedulerConfig{
		Concurrency: 4, RedeliveryBackoff: 5 * time.Millisecond, MaxRedeliveryBackoff: 20 * time.Millisecond,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	if err := bus.Publish(ctx, drivertest.Event{Key: bad, Seq: 0}); err != nil {
		t.Fatal(err)
	}
	for i := range goods {
		if err := bus.Publish(ctx, drivertest.Event{Key: keyFor(1, "good"+strconv.Itoa(i%10)), Seq: i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := bus.Publish(ctx, drivertest.Event{Key: bad, Seq: 1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the other keys of the partition", func() bool { return good.Load() >= goods })
	mu.Lock()
	early := len(badOrder)
	mu.Unlock()
	if early != 0 {
		t.Fatalf("the failing key's messages ran before it succeeded: %v", badOrder)
	}
	// A message on another partition, once committed, shows that a commit
	// ran after the other keys were acknowledged.
	if err := bus.Publish(ctx, drivertest.Event{Key: keyFor(0, "tick"), Seq: -1}); err != nil {
		t.Fatal(err)
	}
	admin := adminClient(t, brokers)
	eventually(t, "a commit after the other keys", func() bool { return committed(t, admin, group, topic)[0] >= 1 })
	if c := committed(t, admin, group, topic)[1]; c > 0 {
		t.Fatalf("partition 1 committed at %d, past the failing message at offset 0", c)
	}
	drivertest.Shutdown(t, bus)

	// Restart: the failing message comes back first for its key.
	again := drivertest.NewBus(t, d, topic)
	err = herald.Subscribe(again, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		if e.Key == bad {
			mu.Lock()
			badOrder = append(badOrder, e.Seq)
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := again.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	defer drivertest.Shutdown(t, again)
	eventually(t, "the failing key's messages after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(badOrder) >= 2
	})
	mu.Lock()
	defer mu.Unlock()
	if badOrder[0] != 0 || badOrder[1] != 1 {
		t.Fatalf("failing key handled in order %v, want 0 then 1", badOrder)
	}
}

// An undecodable message goes to the dead-letter topic and the partition
// moves on: the messages after it are handled, and its offset is committed,
// so a restart does not see it again.
func TestPoisonGoesToDeadLetterAndPartitionMovesOn(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	topic, group := newTopic(t, d), drivertest.Name(t, "g")
	bus := drivertest.NewBus(t, d, topic)
	var good atomic.Int32
	var dead atomic.Int32
	if err := herald.Subscribe(bus, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		good.Add(1)
		return nil
	}, herald.WithConcurrency(4), herald.WithDeadLetter()); err != nil {
		t.Fatal(err)
	}
	if err := bus.Handle(herald.DeadLetterTopic(topic), drivertest.Name(t, "dlq"), func(ctx context.Context, m *herald.Message) error {
		dead.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	key := keyFor(2, "poison")
	eventName := func() string {
		msgs, err := bus.Publisher().Encode(ctx, drivertest.Event{})
		if err != nil {
			t.Fatal(err)
		}
		return msgs[0].Event()
	}()
	if err := bus.PublishMessages(ctx, &herald.Message{
		Topic: topic, Key: key, ContentType: "application/json", Data: []byte("{not json"),
		Headers: herald.Headers{herald.HeaderEvent: eventName},
	}); err != nil {
		t.Fatal(err)
	}
	const goods = 50
	for i := range goods {
		if err := bus.Publish(ctx, drivertest.Event{Key: key, Seq: i}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the messages after the poison one", func() bool { return good.Load() == goods })
	eventually(t, "the dead letter", func() bool { return dead.Load() == 1 })
	drivertest.Shutdown(t, bus)

	again := drivertest.NewBus(t, d, topic)
	var redelivered atomic.Int32
	var marker atomic.Bool
	if err := again.Handle(topic, group, func(ctx context.Context, m *herald.Message) error {
		if string(m.Data) == `"marker"` {
			marker.Store(true)
		} else {
			redelivered.Add(1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := again.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	defer drivertest.Shutdown(t, again)
	if err := again.PublishMessages(ctx, &herald.Message{Topic: topic, Key: key, Data: []byte(`"marker"`)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the marker", marker.Load)
	if redelivered.Load() != 0 {
		t.Fatalf("%d messages came back after the restart", redelivered.Load())
	}
}

// A group that starts at the latest offset skips what was written before it
// first joined, and reads what comes after.
func TestStartLatest(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real, kafkadriver.WithStartPosition(herald.StartLatest))
	topic := newTopic(t, d)
	ctx := testContext(t)
	old := &herald.Message{ID: "old", Topic: topic, Key: "k", Data: []byte("old")}
	if err := d.Write(ctx, []*herald.Message{old}); err != nil {
		t.Fatal(err)
	}
	group := drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sub.Close(ctx); err != nil {
			t.Error(err)
		}
	}()
	// The group's position is committed as soon as it is resolved; after
	// that, a new message is the next one read.
	admin := adminClient(t, brokers)
	eventually(t, "the start position to be committed", func() bool {
		c := committed(t, admin, group, topic)
		return c[kafkadriver.Partition("k", partitions)] == 1
	})
	if err := d.Write(ctx, []*herald.Message{{ID: "new", Topic: topic, Key: "k", Data: []byte("new")}}); err != nil {
		t.Fatal(err)
	}
	buf := make([]herald.Delivery, 4)
	n, err := sub.Fetch(ctx, buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || buf[0].Message.ID != "new" {
		t.Fatalf("fetched %d deliveries, first %q; want only %q", n, buf[0].Message.ID, "new")
	}
}

// A redelivery in the same process reports how often this process
// delivered the message; a first delivery reports 0 (unknown), since
// another member may have had it.
func TestDeliveryCount(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	topic, group := newTopic(t, d), drivertest.Name(t, "g")
	ctx := testContext(t)
	if err := d.Write(ctx, []*herald.Message{{ID: "m", Topic: topic, Key: "k", Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	buf := make([]herald.Delivery, 4)
	for want := range 3 {
		sub, err := d.Subscribe(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		n, err := sub.Fetch(ctx, buf)
		if err != nil {
			t.Fatal(err)
		}
		if wantCount := map[int]int{0: 0, 1: 2, 2: 3}[want]; n != 1 || buf[0].Count != wantCount {
			t.Errorf("delivery %d: %d deliveries, Count %d; want 1 with Count %d", want+1, n, buf[0].Count, wantCount)
		}
		if err := sub.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Fetch and Ack after Close fail with ErrClosed; an Ack of a delivery
// whose partition was revoked wraps ErrRevoked.
func TestClosedSubscription(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	topic, group := newTopic(t, d), drivertest.Name(t, "g")
	ctx := testContext(t)
	if err := d.Write(ctx, []*herald.Message{{ID: "m", Topic: topic, Key: "k", Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]herald.Delivery, 4)
	if _, err := sub.Fetch(ctx, buf); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Fetch(ctx, buf); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Fetch after Close = %v, want ErrClosed", err)
	}
	if err := sub.Ack(ctx, buf[0]); !errors.Is(err, kafkadriver.ErrRevoked) {
		t.Errorf("Ack after Close = %v, want ErrRevoked", err)
	}
	if err := sub.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// Without topic auto-creation, a member whose topic does not exist yet
// waits for it without rejoining its group in a loop (kafka-go's partition
// watcher ends every generation at once while the topic is missing), and
// gets the topic's partitions once it is created.
func TestMissingTopicWithoutAutoCreation(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	var joins atomic.Int32
	c.ControlKey(int16(kmsg.JoinGroup), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		joins.Add(1)
		return nil, nil, false
	})
	brokers := c.ListenAddrs()
	opts := append(groupOptions(false)[1:], kafkadriver.WithPartitionWatchInterval(200*time.Millisecond)) // no auto-creation
	d, err := kafkadriver.New(brokers, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := testContext(t)
	topic := drivertest.Name(t, "t")
	sub, err := d.Subscribe(ctx, topic, drivertest.Name(t, "g"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sub.Close(ctx); err != nil {
			t.Error(err)
		}
	}()
	// Half a second is two or three watch intervals: a few joins. The
	// loop this guards against makes thousands.
	time.Sleep(500 * time.Millisecond)
	if n := joins.Load(); n > 20 {
		t.Fatalf("%d group joins while the topic was missing", n)
	}
	if err := d.CreateTopic(ctx, topic, partitions, 1); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*herald.Message{{ID: "m", Topic: topic, Key: "k", Data: []byte("m")}}); err != nil {
		t.Fatal(err)
	}
	buf := make([]herald.Delivery, 1)
	if n, err := sub.Fetch(ctx, buf); err != nil || n != 1 || buf[0].Message.ID != "m" {
		t.Fatalf("Fetch = %d, %v", n, err)
	}
}

// Records from foreign producers carry no herald-id header: each gets an
// ID derived from where it sits, "<topic>/<partition>/<offset>", the same
// on every delivery, so deduplication and redrive by ID work for them.
func TestForeignRecordsGetStableIDs(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	topic, group := newTopic(t, d), drivertest.Name(t, "g")
	ctx := testContext(t)
	tr := &kafkago.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	w := &kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: topic, Transport: tr, BatchTimeout: time.Millisecond}
	t.Cleanup(func() { _ = w.Close() })
	const n = 5
	for i := range n {
		if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte("k" + strconv.Itoa(i)), Value: []byte("foreign")}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func() map[string]bool {
		sub, err := d.Subscribe(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Close(ctx) }()
		got := map[string]bool{}
		for _, dl := range drivertest.FetchExactly(t, sub, n) {
			var p, off int
			if _, err := fmt.Sscanf(strings.TrimPrefix(dl.Message.ID, topic+"/"), "%d/%d", &p, &off); err != nil || !strings.HasPrefix(dl.Message.ID, topic+"/") {
				t.Errorf("ID %q of a record without herald-id, want %s/<partition>/<offset>", dl.Message.ID, topic)
			}
			got[dl.Message.ID] = true
		}
		return got // not acknowledged: the next member gets them again
	}
	first, again := ids(), ids()
	if len(first) != n || !maps.Equal(first, again) {
		t.Errorf("IDs %v on the first delivery, %v on the redelivery; want %d, the same", first, again, n)
	}
}

// failCommits makes the cluster answer the next offset commit with code
// for every partition it names.
func failCommits(c *kfake.Cluster, code int16) {
	c.ControlKey(int16(kmsg.OffsetCommit), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.OffsetCommitRequest)
		resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range req.Topics {
			t := kmsg.NewOffsetCommitResponseTopic()
			t.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				p := kmsg.NewOffsetCommitResponseTopicPartition()
				p.Partition, p.ErrorCode = rp.Partition, code
				t.Partitions = append(t.Partitions, p)
			}
			resp.Topics = append(resp.Topics, t)
		}
		return resp, nil, true
	})
}

// When the group has moved on without this member (the broker dropped it
// in a rebalance storm), Close's final commit fails with "Unknown Member
// ID": nothing is wrong for the caller, the new owner receives what was
// not committed. Close reports it to the error handler and returns nil.
// A commit failure that means trouble (authorization) is still returned.
func TestCloseAfterTheGroupMovedOn(t *testing.T) {
	for _, c := range []struct {
		name     string
		code     int16
		want     error
		closeErr bool
	}{
		{"unknown member", int16(kafkago.UnknownMemberId), kafkago.UnknownMemberId, false},
		{"illegal generation", int16(kafkago.IllegalGeneration), kafkago.IllegalGeneration, false},
		{"not authorized", int16(kafkago.GroupAuthorizationFailed), kafkago.GroupAuthorizationFailed, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(),
				kfake.DefaultNumPartitions(partitions), kfake.GroupMinSessionTimeout(100*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(cl.Close)
			// Only Close commits, so that is the commit that fails.
			d := newDriver(t, cl.ListenAddrs(), false, kafkadriver.WithCommitInterval(time.Hour))
			topic, group := newTopic(t, d), drivertest.Name(t, "g")
			ctx := testContext(t)
			const n = 3
			for i := range n {
				if err := d.Write(ctx, []*herald.Message{{ID: strconv.Itoa(i), Topic: topic, Key: strconv.Itoa(i), Data: []byte("x")}}); err != nil {
					t.Fatal(err)
				}
			}
			sub, err := d.Subscribe(ctx, topic, group)
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var reported []error
			sub.(herald.ErrorReporter).ReportErrorsTo(func(err error) {
				mu.Lock()
				reported = append(reported, err)
				mu.Unlock()
			})
			drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, n)...)
			failCommits(cl, c.code)
			err = sub.Close(ctx)
			mu.Lock()
			defer mu.Unlock()
			if c.closeErr {
				if !errors.Is(err, c.want) {
					t.Errorf("Close = %v, want an error wrapping %v", err, c.want)
				}
				return
			}
			if err != nil {
				t.Errorf("Close = %v, want nil: the group moved on, nothing is wrong for the caller", err)
			}
			if len(reported) != 1 || !errors.Is(reported[0], c.want) {
				t.Errorf("reported %v, want one error wrapping %v", reported, c.want)
			}
			// Nothing was committed: the next member gets all of it again.
			next, err := d.Subscribe(ctx, topic, group)
			if err != nil {
				t.Fatal(err)
			}
			drivertest.Ack(t, next, drivertest.FetchExactly(t, next, n)...)
			if err := next.Close(ctx); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestFetchedStringsStayPut keeps every message of several fetches and
// checks their IDs, keys and headers at the end: they share the bytes
// kafka-go decoded for each record (no copy), so a decoder that reused
// its buffers would show here as strings changing under earlier
// messages.
func TestFetchedStringsStayPut(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	topic, group := newTopic(t, d), drivertest.Name(t, "g")
	ctx := testContext(t)
	const n = 600
	var msgs []*herald.Message
	for i := range n {
		s := strconv.Itoa(i)
		msgs = append(msgs, &herald.Message{ID: "id-" + s, Topic: topic, Key: "key-" + s,
			Headers: herald.Headers{"x-seq": "seq-" + s}, Data: []byte(s)})
	}
	for i := 0; i < n; i += 100 {
		if err := d.Write(ctx, msgs[i:i+100]); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	var got []herald.Delivery
	for len(got) < n {
		got = append(got, drivertest.FetchExactly(t, sub, min(50, n-len(got)))...)
	}
	runtime.GC() // anything the decoder freed or reused is gone now
	for _, dl := range got {
		m := dl.Message
		s := string(m.Data)
		if m.ID != "id-"+s || m.Key != "key-"+s || m.Headers.Get("x-seq") != "seq-"+s {
			t.Errorf("message %s: ID %q, key %q, x-seq %q", s, m.ID, m.Key, m.Headers.Get("x-seq"))
		}
	}
}
