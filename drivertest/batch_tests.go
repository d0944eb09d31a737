package drivertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/memory/memdedup"
)

// RunBatch runs the checks of batch handlers (herald.SubscribeBatch,
// Bus.HandleBatch) on the driver: per-key order across batches with
// concurrency, partial and whole-batch failure, dedup, the linger flushing
// a partial batch, undecodable messages and a shutdown mid-batch. It is
// not part of Run: a driver's tests call it beside Run.
func RunBatch(t *testing.T, cfg Config) {
	cfg = cfg.withDefaults()
	tests := []struct {
		name string
		fn   func(*testing.T, Config)
	}{
		{"PerKeyOrderAcrossBatches", testBatchPerKeyOrder},
		{"PartialFailure", testBatchPartialFailure},
		{"WholeBatchFailure", testBatchWholeFailure},
		{"Dedup", testBatchDedup},
		{"LingerFlushesPartialBatch", testBatchLinger},
		{"UndecodableGoesToDeadLetter", testBatchUndecodable},
		{"ShutdownMidBatchLosesNothing", testBatchShutdown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, cfg)
		})
	}
}

// settlements records, from the handle hook, each message a group
// settled (acknowledged: handled, duplicate or dead-lettered), and checks
// that each settles once and that a key's settle in publish order.
type settlements struct {
	t       testing.TB
	topic   string
	mu      sync.Mutex
	settled map[string]int // message ID -> times
	next    map[string]int // key -> next Seq
	total   atomic.Int32
}

func newSettlements(t testing.TB, topic string) *settlements {
	return &settlements{t: t, topic: topic, settled: map[string]int{}, next: map[string]int{}}
}

func (s *settlements) hook(r herald.HandleResult) {
	if r.Err != nil || r.Skipped || r.Topic != s.topic {
		return
	}
	var e Event
	if err := json.Unmarshal(r.Message.Data, &e); err != nil {
		return // not an Event (an undecodable payload)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settled[r.Message.ID]++
	if n := s.settled[r.Message.ID]; n > 1 {
		s.t.Errorf("message %s (key %s, seq %d) settled %d times", r.Message.ID, e.Key, e.Seq, n)
	}
	if want := s.next[e.Key]; e.Seq != want {
		s.t.Errorf("key %s: seq %d settled, want %d next", e.Key, e.Seq, want)
	}
	s.next[e.Key] = e.Seq + 1
	s.total.Add(1)
}

// batchBus returns a Bus on d with Event registered on topic (keyed by
// Event.Key) and opts.
func batchBus(t testing.TB, d herald.Driver, topic string, opts ...herald.Option) *herald.Bus {
	t.Helper()
	opts = append([]herald.Option{herald.WithErrorHandler(func(error) {}), herald.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	bus, err := herald.NewBus(d, opts...)
	must(t, err)
	must(t, herald.Register[Event](bus, topic, herald.WithKey(func(e Event) string { return e.Key })))
	return bus
}

func publishEvents(t testing.TB, ctx context.Context, bus *herald.Bus, keys, perKey int) {
	t.Helper()
	var batch []any
	for i := range perKey {
		for k := range keys {
			batch = append(batch, Event{Key: "k" + strconv.Itoa(k), Seq: i})
		}
	}
	must(t, bus.Publish(ctx, batch...))
}

func fastBatchRetry(attempts int) herald.RetryConfig {
	return herald.RetryConfig{MaxAttempts: attempts, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
}

// testBatchPerKeyOrder: with four runners, a key's events reach the
// handler in order, within a batch and across batches, never in two
// batches at once; batches of more than one event are made.
func testBatchPerKeyOrder(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	const keys, perKey = 20, 40
	set := newSettlements(t, topic)
	bus := batchBus(t, d, topic, herald.WithHandleHook(set.hook))
	var mu sync.Mutex
	next := map[string]int{}
	busy := map[string]bool{}
	var biggest atomic.Int32
	err := herald.SubscribeBatch(bus, group, func(ctx context.Context, batch []herald.Item[Event]) error {
		mu.Lock()
		mine := map[string]bool{}
		for _, it := range batch {
			e := it.Event
			if busy[e.Key] && !mine[e.Key] {
				t.Errorf("key %s: seq %d in a batch while another batch holds the key", e.Key, e.Seq)
			}
			busy[e.Key], mine[e.Key] = true, true
			if want := next[e.Key]; e.Seq != want {
				t.Errorf("key %s: seq %d, want %d", e.Key, e.Seq, want)
			}
			next[e.Key] = e.Seq + 1
		}
		mu.Unlock()
		if n := int32(len(batch)); n > biggest.Load() {
			biggest.Store(n)
		}
		time.Sleep(time.Millisecond)
		mu.Lock()
		for k := range mine {
			busy[k] = false
		}
		mu.Unlock()
		return nil
	}, herald.WithBatch(10, time.Second), herald.WithConcurrency(4))
	must(t, err)
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	publishEvents(t, ctx, bus, keys, perKey)
	waitFor(t, cfg, "every event settled", func() bool { return set.total.Load() == keys*perKey })
	if biggest.Load() < 2 {
		t.Errorf("every batch held one event (biggest %d)", biggest.Load())
	}
}

// testBatchPartialFailure: items the handler names in a BatchError are
// retried (as a smaller batch) and, when they keep failing, dead-lettered
// one by one; the others settle once; a key's later events wait for its
// failed one.
func testBatchPartialFailure(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	const keys, perKey = 5, 6
	set := newSettlements(t, topic)
	bus := batchBus(t, d, topic, herald.WithHandleHook(set.hook))
	flaky := map[Event]bool{{Key: "k0", Seq: 0}: true, {Key: "k1", Seq: 3}: true, {Key: "k2", Seq: 5}: true}
	poison := Event{Key: "k3", Seq: 2}
	var mu sync.Mutex
	seen := map[Event]int{}
	// lastOK is when each event last ran without failing (a counter): an
	// idempotent store ends in the state of each event's last run, so a
	// key's events must have their last runs in publish order.
	lastOK := map[Event]int{}
	clock := 0
	err := herald.SubscribeBatch(bus, group, func(ctx context.Context, batch []herald.Item[Event]) error {
		mu.Lock()
		defer mu.Unlock()
		var failures herald.BatchError
		for i, it := range batch {
			seen[it.Event]++
			if it.Event == poison || flaky[it.Event] && seen[it.Event] == 1 {
				failures.Fail(i, fmt.Errorf("cannot store %v", it.Event))
				continue
			}
			clock++
			lastOK[it.Event] = clock
		}
		return failures.Err()
	}, herald.WithBatch(8, 20*time.Millisecond), herald.WithConcurrency(2),
		herald.WithRetry(fastBatchRetry(3)), herald.WithDeadLetter())
	must(t, err)
	dead := deadLetters(t, bus, topic)
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	publishEvents(t, ctx, bus, keys, perKey)
	waitFor(t, cfg, "every event settled", func() bool { return set.total.Load() == keys*perKey })
	waitFor(t, cfg, "the dead letter", func() bool { return len(dead.all()) == 1 })
	m := dead.all()[0]
	rec := herald.ReadDeadLetter(m)
	var e Event
	must(t, json.Unmarshal(m.Data, &e))
	if e != poison || rec.Attempts != 3 || rec.Group != group {
		t.Errorf("dead letter %v, %+v; want %v after 3 attempts by %s", e, rec, poison, group)
	}
	mu.Lock()
	defer mu.Unlock()
	for f := range flaky {
		if seen[f] < 2 {
			t.Errorf("%v failed once and ran %d time(s)", f, seen[f])
		}
	}
	if seen[poison] != 3 {
		t.Errorf("poison ran %d times, want 3", seen[poison])
	}
	for k := range keys {
		key := "k" + strconv.Itoa(k)
		for i := 1; i < perKey; i++ {
			prev, cur := Event{Key: key, Seq: i - 1}, Event{Key: key, Seq: i}
			if prev != poison && cur != poison && lastOK[cur] < lastOK[prev] {
				t.Errorf("%v last ran before %v", cur, prev)
			}
		}
	}
	// While the poison is retried, the later events of its key wait: the
	// next one runs at most twice (once beside it in its first round, its
	// outcome void, and once after it was dead-lettered).
	if n := seen[Event{Key: poison.Key, Seq: poison.Seq + 1}]; n > 2 {
		t.Errorf("the event after the poison ran %d times while it was retried", n)
	}
}

// testBatchWholeFailure: a plain error fails every item; the batch is
// retried as a whole, and then each item is dead-lettered with the
// attempts it had.
func testBatchWholeFailure(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	set := newSettlements(t, topic)
	bus := batchBus(t, d, topic, herald.WithHandleHook(set.hook))
	var mu sync.Mutex
	runs := map[Event]int{}
	err := herald.SubscribeBatch(bus, group, func(ctx context.Context, batch []herald.Item[Event]) error {
		mu.Lock()
		for _, it := range batch {
			runs[it.Event]++
		}
		mu.Unlock()
		return errors.New("database down")
	}, herald.WithBatch(10, 20*time.Millisecond), herald.WithRetry(fastBatchRetry(2)), herald.WithDeadLetter())
	must(t, err)
	dead := deadLetters(t, bus, topic)
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	const n = 10
	publishEvents(t, ctx, bus, n, 1)
	waitFor(t, cfg, "every event dead-lettered", func() bool { return len(dead.all()) == n })
	waitFor(t, cfg, "every event settled", func() bool { return set.total.Load() == n })
	ids := map[string]bool{}
	for _, m := range dead.all() {
		if ids[m.ID] {
			t.Errorf("message %s dead-lettered twice", m.ID)
		}
		ids[m.ID] = true
		if rec := herald.ReadDeadLetter(m); rec.Attempts != 2 || rec.Reason == "" {
			t.Errorf("dead letter %s: %+v, want 2 attempts and a reason", m.ID, rec)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for e, r := range runs {
		if r != 2 {
			t.Errorf("%v ran %d times, want 2", e, r)
		}
	}
}

// testBatchDedup: messages the group has already handled (marked in the
// store beforehand, as a handling before a lost acknowledgment would) are
// removed from the batch before the handler sees it and acknowledged; the
// others are handled and marked after the handler succeeded. (Marks made
// beforehand rather than a second publish of one ID: some brokers drop a
// republished ID themselves, JetStream in its duplicate window.)
func testBatchDedup(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	store, err := memdedup.New(context.Background())
	must(t, err)
	t.Cleanup(func() { _ = store.Close() })
	var settled atomic.Int32
	bus := batchBus(t, d, topic, herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Err == nil && r.Topic == topic {
			settled.Add(1)
		}
	}))
	var mu sync.Mutex
	ran := map[string]int{}
	err = bus.HandleBatch(topic, group, func(ctx context.Context, msgs []*herald.Message) error {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			ran[m.ID]++
		}
		return nil
	}, herald.WithDedup(store), herald.WithBatch(10, 10*time.Millisecond))
	must(t, err)
	msgs := make([]*herald.Message, 6)
	for i := range msgs {
		msgs[i] = &herald.Message{ID: Name(t, "m"+strconv.Itoa(i)), Topic: topic, Key: "k" + strconv.Itoa(i%2), Data: []byte(`{}`)}
		if i%2 == 0 { // handled before
			c, err := store.Claim(ctx, group+":"+msgs[i].ID, time.Minute)
			must(t, err)
			must(t, store.Commit(ctx, group+":"+msgs[i].ID, c.Token, time.Hour))
		}
	}
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	must(t, bus.PublishMessages(ctx, msgs...))
	waitFor(t, cfg, "every message settled", func() bool { return settled.Load() == int32(len(msgs)) })
	mu.Lock()
	defer mu.Unlock()
	for i, m := range msgs {
		if want := i % 2; ran[m.ID] != want {
			t.Errorf("message %d ran %d times, want %d", i, ran[m.ID], want)
		}
		if c, err := store.Claim(ctx, group+":"+m.ID, time.Minute); err != nil || c.State != dedup.Done {
			t.Errorf("message %d: claim after handling = %v, %v; want done", i, c.State, err)
		}
	}
}

// testBatchLinger: a batch that never fills is handed over after its
// linger, with what arrived.
func testBatchLinger(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	bus := batchBus(t, d, topic)
	got := make(chan int, 10)
	err := herald.SubscribeBatch(bus, group, func(ctx context.Context, batch []herald.Item[Event]) error {
		got <- len(batch)
		return nil
	}, herald.WithBatch(1000, 30*time.Millisecond))
	must(t, err)
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	publishEvents(t, ctx, bus, 3, 1)
	total := 0
	for total < 3 {
		select {
		case n := <-got:
			if n < 1 || n > 3 {
				t.Fatalf("batch of %d, want 1 to 3", n)
			}
			total += n
		case <-ctx.Done():
			t.Fatalf("only %d of 3 events reached the handler: the partial batch was not flushed", total)
		}
	}
}

// testBatchUndecodable: an undecodable payload in a typed batch goes to
// the dead-letter topic on its own (without WithDeadLetter); the rest are
// handled.
func testBatchUndecodable(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	bus := batchBus(t, d, topic)
	var handled atomic.Int32
	err := herald.SubscribeBatch(bus, group, func(ctx context.Context, batch []herald.Item[Event]) error {
		handled.Add(int32(len(batch)))
		return nil
	}, herald.WithBatch(10, 20*time.Millisecond))
	must(t, err)
	dead := deadLetters(t, bus, topic)
	must(t, bus.Start(ctx))
	defer Shutdown(t, bus)
	enc, err := bus.Publisher().Encode(ctx, Event{Key: "k", Seq: 0}, Event{Key: "k", Seq: 1})
	must(t, err)
	good, after := enc[0], enc[1]
	bad := &herald.Message{ID: "bad-1", Topic: topic, Key: "k", Headers: maps.Clone(good.Headers), ContentType: good.ContentType, Data: []byte("{not json")}
	must(t, bus.PublishMessages(ctx, good, bad, after))
	waitFor(t, cfg, "the dead letter and the good events", func() bool { return len(dead.all()) == 1 && handled.Load() == 2 })
	if m := dead.all()[0]; m.ID != "bad-1" || herald.ReadDeadLetter(m).Reason == "" {
		t.Errorf("dead letter %s %v", m.ID, m.Headers)
	}
}

// testBatchShutdown: a shutdown while batches run lets the running ones
// finish; what was not handled is handled by the group's next member.
func testBatchShutdown(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	const keys, perKey = 16, 12
	var mu sync.Mutex
	handled := map[Event]bool{}
	release := make(chan struct{})
	var batches atomic.Int32
	first := batchBus(t, d, topic)
	must(t, herald.SubscribeBatch(first, group, func(ctx context.Context, batch []herald.Item[Event]) error {
		if batches.Add(1) > 2 {
			<-release // hold batches in flight across the shutdown
		}
		mu.Lock()
		for _, it := range batch {
			handled[it.Event] = true
		}
		mu.Unlock()
		return nil
	}, herald.WithBatch(10, 10*time.Millisecond), herald.WithConcurrency(2)))
	must(t, first.Start(ctx))
	publishEvents(t, ctx, first, keys, perKey)
	waitFor(t, cfg, "batches in flight", func() bool { return batches.Load() > 2 })
	stopped := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		stopped <- first.Shutdown(sctx)
	}()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	second := batchBus(t, d, topic)
	must(t, herald.SubscribeBatch(second, group, func(ctx context.Context, batch []herald.Item[Event]) error {
		mu.Lock()
		for _, it := range batch {
			handled[it.Event] = true
		}
		mu.Unlock()
		return nil
	}, herald.WithBatch(10, 10*time.Millisecond), herald.WithConcurrency(2)))
	must(t, second.Start(ctx))
	defer Shutdown(t, second)
	waitFor(t, cfg, "every event after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == keys*perKey
	})
}

// collected keeps the messages a raw handler received.
type collected struct {
	mu   sync.Mutex
	msgs []*herald.Message
}

func (c *collected) all() []*herald.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*herald.Message(nil), c.msgs...)
}

// deadLetters subscribes a group of its own to topic's dead-letter topic
// on bus and collects what arrives there.
func deadLetters(t testing.TB, bus *herald.Bus, topic string) *collected {
	t.Helper()
	c := &collected{}
	must(t, bus.Handle(herald.DeadLetterTopic(topic), Name(t, "ops"), func(_ context.Context, m *herald.Message) error {
		c.mu.Lock()
		c.msgs = append(c.msgs, m)
		c.mu.Unlock()
		return nil
	}))
	return c
}
