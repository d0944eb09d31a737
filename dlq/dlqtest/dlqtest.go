// Package dlqtest is the suite every dlq.Store runs against its real
// broker: messages are dead-lettered by a herald.Bus, listed, looked up,
// and redriven with dlq.Redrive, and the suite checks what arrives again
// on the original topic. Drivers call Run from their own tests.
package dlqtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memdedup"
)

// Config describes the driver under test.
type Config struct {
	// NewDriver returns a driver and its dead-letter store, on a broker
	// that lets writes create topics; both are released when t ends.
	NewDriver func(t *testing.T) (herald.Driver, dlq.Store)
	// RejectingWriter returns a writer to the same broker that refuses
	// every message (a driver with a size limit of a few bytes, say).
	RejectingWriter func(t *testing.T) herald.Writer
	// Timeout bounds each wait for the broker (a liveness bound, not a
	// performance target; default 60 s).
	Timeout time.Duration
	// Dedup returns the deduplication storage the redrive scenarios use
	// (the driver's own, such as redisdedup for Redis; default: a
	// memdedup store).
	Dedup func(t *testing.T) dedup.Storage
}

func (c Config) dedup(t *testing.T) dedup.Storage {
	if c.Dedup != nil {
		return c.Dedup(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := memdedup.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Run runs the whole suite.
func Run(t *testing.T, cfg Config) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	tests := []struct {
		name string
		fn   func(*testing.T, Config)
	}{
		{"ListAndGetDeadLetters", testListAndGet},
		{"RedriveAll", testRedriveAll},
		{"RedriveSelected", testRedriveSelected},
		{"RedriveRunsOnlyInTheGroupThatGaveUp", testRedriveAddressed},
		{"RedriveLeavesWhatCannotGoBack", testLeftBehind},
		{"FailedWriteMarksNothing", testFailedWrite},
		{"BadInput", testBadInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, cfg) })
	}
}

// traceparent is carried through the dead-letter topic and back.
const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// deadLettered is what deadLetter produced.
type deadLettered struct {
	topic, dlqTopic, group string
	ids                    []string // by Seq
	sent                   map[string]*herald.Message
}

// deadLetter publishes n events to a new topic and has a group whose
// handler always fails dead-letter them: even Seq fail permanently (one
// attempt), odd Seq transiently (three attempts). It returns once the
// dead-letter topic lists all n and the bus is shut down.
func deadLetter(t *testing.T, cfg Config, d herald.Driver, s dlq.Store, n int) deadLettered {
	t.Helper()
	ctx := testContext(t, cfg)
	dl := deadLettered{topic: drivertest.Name(t, "t"), group: drivertest.Name(t, "g"), sent: make(map[string]*herald.Message)}
	dl.dlqTopic = herald.DeadLetterTopic(dl.topic)
	bus := drivertest.NewBus(t, d, dl.topic)
	err := herald.Subscribe(bus, dl.group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		if e.Seq%2 == 0 {
			return herald.Permanent(fmt.Errorf("order %d rejected", e.Seq))
		}
		return fmt.Errorf("order %d: database down", e.Seq)
	}, herald.WithDeadLetter(), herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	events := make([]any, n)
	for i := range events {
		events[i] = drivertest.Event{Key: fmt.Sprintf("k%d", i%3), Seq: i}
	}
	msgs, err := bus.Publisher().Encode(herald.WithCorrelationID(ctx, "corr-"+dl.topic), events...)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		m.Headers["traceparent"] = traceparent
		dl.ids = append(dl.ids, m.ID)
		dl.sent[m.ID] = m.Clone()
	}
	if err := bus.PublishMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, cfg, fmt.Sprintf("%d entries in %s", n, dl.dlqTopic), func() bool {
		return len(listAll(t, s, dl.dlqTopic, 100)) == n
	})
	drivertest.Shutdown(t, bus)
	return dl
}

func testListAndGet(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	start := time.Now()
	dl := deadLetter(t, cfg, d, s, 5)

	entries := listAll(t, s, dl.dlqTopic, 100)
	bySeq := make(map[string]dlq.Entry)
	for _, e := range entries {
		bySeq[e.Message.ID] = e
	}
	for seq, id := range dl.ids {
		e, ok := bySeq[id]
		if !ok {
			t.Fatalf("message %s (seq %d) not listed", id, seq)
		}
		wantReason, wantAttempts := fmt.Sprintf("order %d rejected", seq), 1
		if seq%2 == 1 {
			wantReason, wantAttempts = fmt.Sprintf("order %d: database down", seq), 3
		}
		if !strings.Contains(e.Reason, wantReason) || e.Attempts != wantAttempts {
			t.Errorf("seq %d: reason %q attempts %d, want %q and %d", seq, e.Reason, e.Attempts, wantReason, wantAttempts)
		}
		if e.Topic != dl.topic || e.Group != dl.group {
			t.Errorf("seq %d: topic %q group %q, want %q %q", seq, e.Topic, e.Group, dl.topic, dl.group)
		}
		if e.Time.Before(start.Add(-time.Minute)) || e.Time.After(time.Now().Add(time.Minute)) {
			t.Errorf("seq %d: dead-lettered at %v, not around now", seq, e.Time)
		}
		m, sent := e.Message, dl.sent[id]
		if m.Topic != dl.dlqTopic || m.Key != sent.Key || string(m.Data) != string(sent.Data) || m.ContentType != sent.ContentType {
			t.Errorf("seq %d: message %+v, sent %+v", seq, m, sent)
		}
		if m.Headers.Get("traceparent") != traceparent || m.Headers.Get(herald.HeaderDeadLetterTopic) != dl.topic {
			t.Errorf("seq %d: headers %v", seq, m.Headers)
		}
	}
	// Paging returns each entry once, in the order of a full listing.
	var paged []dlq.Entry
	cursor := ""
	for pages := 0; ; pages++ {
		page, next, err := s.List(ctx, dl.dlqTopic, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 2 || (next != "" && len(page) != 2) || pages > 3 {
			t.Fatalf("page %d: %d entries, next %q", pages, len(page), next)
		}
		paged = append(paged, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	if !slices.Equal(positions(paged), positions(entries)) {
		t.Errorf("pages of 2 gave %v, one listing %v", positions(paged), positions(entries))
	}

	for _, e := range entries {
		for _, key := range []string{e.Position, e.Message.ID} {
			got, err := s.Get(ctx, dl.dlqTopic, key)
			if err != nil {
				t.Fatalf("Get(%q): %v", key, err)
			}
			if got.Position != e.Position || got.Message.ID != e.Message.ID || got.Reason != e.Reason {
				t.Errorf("Get(%q) = %s %s, want %s %s", key, got.Position, got.Message.ID, e.Position, e.Message.ID)
			}
		}
	}
	for _, missing := range []string{"no-such-id", "999999-0", "3:999999"} {
		if _, err := s.Get(ctx, dl.dlqTopic, missing); !errors.Is(err, dlq.ErrNotFound) {
			t.Errorf("Get(%q): %v, want ErrNotFound", missing, err)
		}
	}
	if _, err := s.Get(ctx, drivertest.Name(t, "none")+".dlq", dl.ids[0]); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get on a missing topic: %v, want ErrNotFound", err)
	}
	if got, next, err := s.List(ctx, drivertest.Name(t, "none")+".dlq", "", 10); err != nil || len(got) != 0 || next != "" {
		t.Errorf("List of a missing topic: %d entries, next %q, %v", len(got), next, err)
	}
}

func testRedriveAll(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	const n = 7
	dl := deadLetter(t, cfg, d, s, n)

	var progress []dlq.Progress
	res, err := dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{
		BatchSize: 3,
		Progress:  func(p dlq.Progress) { progress = append(progress, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Redriven != n || len(res.Skipped) != 0 || res.Deferred != 0 || len(res.NotFound) != 0 {
		t.Errorf("result %+v", res)
	}
	var done []int
	for _, p := range progress {
		done = append(done, p.Done)
		if len(p.Batch) > 3 || p.Total != 0 {
			t.Errorf("progress %d: batch of %d, total %d", p.Done, len(p.Batch), p.Total)
		}
	}
	if len(done) < 3 || done[len(done)-1] != n {
		t.Errorf("progress reported %v, want batches of at most 3 up to %d", done, n)
	}
	if left := listAll(t, s, dl.dlqTopic, 100); len(left) != 0 {
		t.Errorf("%d entries left after the redrive: %v", len(left), positions(left))
	}

	// The group that gave up, fixed, receives every message again, as
	// published, without the dead-letter headers.
	got := consume(t, cfg, d, dl, n)
	for id, m := range got {
		sent := dl.sent[id]
		if sent == nil {
			t.Errorf("unexpected message %s", id)
			continue
		}
		if m.Key != sent.Key || string(m.Data) != string(sent.Data) || m.ContentType != sent.ContentType ||
			!m.Time.Truncate(time.Millisecond).Equal(sent.Time.Truncate(time.Millisecond)) { // Kafka keeps milliseconds
			t.Errorf("message %s: got %+v, sent %+v", id, m, sent)
		}
		want := maps.Clone(sent.Headers)
		want[herald.HeaderRedriveGroup], want[herald.HeaderRedriveCount] = dl.group, "1"
		if !maps.Equal(m.Headers, want) {
			t.Errorf("message %s: headers %v, want those sent and the redrive's %v", id, m.Headers, want)
		}
	}

	// A second run finds nothing and writes nothing.
	before := len(listAll(t, s, dl.topic, 100))
	res, err = dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{})
	if err != nil || res.Redriven != 0 {
		t.Errorf("second redrive: %+v, %v", res, err)
	}
	if after := len(listAll(t, s, dl.topic, 100)); before != 2*n || after != before {
		t.Errorf("original topic holds %d messages before the second redrive and %d after, want %d", before, after, 2*n)
	}
	if _, err := s.Get(ctx, dl.dlqTopic, dl.ids[0]); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get of a redriven entry: %v, want ErrNotFound", err)
	}
}

func testRedriveSelected(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	dl := deadLetter(t, cfg, d, s, 4)
	entries := listAll(t, s, dl.dlqTopic, 100)

	res, err := dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{Select: []string{dl.ids[1]}})
	if err != nil || res.Redriven != 1 {
		t.Fatalf("redrive by ID: %+v, %v", res, err)
	}
	left := listAll(t, s, dl.dlqTopic, 100)
	if len(left) != 3 || slices.ContainsFunc(left, func(e dlq.Entry) bool { return e.Message.ID == dl.ids[1] }) {
		t.Errorf("after redriving %s: %d entries left", dl.ids[1], len(left))
	}

	// By position, twice (once by ID), with one unknown name.
	var pos string
	for _, e := range entries {
		if e.Message.ID == dl.ids[2] {
			pos = e.Position
		}
	}
	var total []int
	res, err = dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{
		Select:   []string{pos, dl.ids[2], "no-such-id", dl.ids[1]},
		Progress: func(p dlq.Progress) { total = append(total, p.Done, p.Total) },
	})
	if err != nil || res.Redriven != 1 || !slices.Equal(res.NotFound, []string{"no-such-id", dl.ids[1]}) {
		t.Fatalf("redrive by position: %+v, %v", res, err)
	}
	if !slices.Equal(total, []int{1, 1}) {
		t.Errorf("progress (done, total): %v", total)
	}
	if left := listAll(t, s, dl.dlqTopic, 100); len(left) != 2 {
		t.Errorf("%d entries left, want 2", len(left))
	}
	got := consume(t, cfg, d, dl, 2)
	if got[dl.ids[1]] == nil || got[dl.ids[2]] == nil {
		t.Errorf("redriven %v, want %s and %s", slices.Collect(maps.Keys(got)), dl.ids[1], dl.ids[2])
	}
}

// groupTally counts, per group, what a Bus did with each message.
type groupTally struct {
	mu      sync.Mutex
	handled map[string]map[string]int // group -> message ID -> handler runs
	skipped map[string]int            // group -> deliveries skipped (not for the group)
	dups    map[string]int            // group -> duplicates skipped by dedup
}

func newGroupTally() *groupTally {
	return &groupTally{handled: map[string]map[string]int{}, skipped: map[string]int{}, dups: map[string]int{}}
}

func (g *groupTally) handle(group, id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.handled[group] == nil {
		g.handled[group] = map[string]int{}
	}
	g.handled[group][id]++
}

func (g *groupTally) read(f func(g *groupTally) bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return f(g)
}

// testRedriveAddressed is the redrive a team runs after a bad deploy: a
// group that deduplicates dead-letters every message while two other
// groups of the topic (one deduplicating, one not) handle them all; the
// entries are redriven and the handler fixed. The group that gave up
// handles each message exactly once more; the others run none again; a
// second redrive writes nothing, and a second copy of the redriven
// messages (a crash between write and mark) is skipped by dedup.
func testRedriveAddressed(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	store := cfg.dedup(t)
	topic := drivertest.Name(t, "t")
	failing, done, plain := drivertest.Name(t, "failing"), drivertest.Name(t, "done"), drivertest.Name(t, "plain")
	const n = 20
	var broken atomic.Bool
	broken.Store(true)
	tally := newGroupTally()
	newBus := func() *herald.Bus {
		bus, err := herald.NewBus(d, herald.WithErrorHandler(func(error) {}), herald.WithLogger(slog.New(slog.DiscardHandler)),
			herald.WithHandleHook(func(r herald.HandleResult) {
				if r.Skipped {
					tally.mu.Lock()
					tally.skipped[r.Group]++
					tally.mu.Unlock()
				}
			}))
		if err != nil {
			t.Fatal(err)
		}
		if err := herald.Register[drivertest.Event](bus, topic, herald.WithKey(func(e drivertest.Event) string { return e.Key })); err != nil {
			t.Fatal(err)
		}
		dedupIn := func(group string) herald.SubscribeOption {
			return herald.WithDedupConfig(herald.DedupConfig{Storage: store, OnDuplicate: func(*herald.Message) {
				tally.mu.Lock()
				tally.dups[group]++
				tally.mu.Unlock()
			}})
		}
		for _, g := range []struct {
			name string
			opts []herald.SubscribeOption
		}{
			{failing, []herald.SubscribeOption{dedupIn(failing), herald.WithDeadLetter()}},
			{done, []herald.SubscribeOption{dedupIn(done)}},
			{plain, nil},
		} {
			err := herald.Subscribe(bus, g.name, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
				if g.name == failing && broken.Load() {
					return herald.Permanent(fmt.Errorf("order %d: bad deploy", e.Seq))
				}
				tally.handle(g.name, m.ID)
				return nil
			}, g.opts...)
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := bus.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return bus
	}

	bus := newBus()
	events := make([]any, n)
	for i := range events {
		events[i] = drivertest.Event{Key: fmt.Sprintf("k%d", i%4), Seq: i}
	}
	if err := bus.Publish(ctx, events...); err != nil {
		t.Fatal(err)
	}
	dlqTopic := herald.DeadLetterTopic(topic)
	waitFor(t, cfg, "every message dead-lettered by one group and handled by the others", func() bool {
		return len(listAll(t, s, dlqTopic, 100)) == n && tally.read(func(g *groupTally) bool {
			return len(g.handled[done]) == n && len(g.handled[plain]) == n
		})
	})
	drivertest.Shutdown(t, bus)

	var redriven []*herald.Message
	res, err := dlq.Redrive(ctx, s, d, dlqTopic, dlq.RedriveOptions{Progress: func(p dlq.Progress) {
		for _, e := range p.Batch {
			redriven = append(redriven, e.Redriven())
		}
	}})
	if err != nil || res.Redriven != n {
		t.Fatalf("redrive: %+v, %v; want %d redriven", res, err, n)
	}
	broken.Store(false) // the fix is deployed
	bus = newBus()
	defer drivertest.Shutdown(t, bus)
	waitFor(t, cfg, "the redriven messages handled by the group that gave up, skipped by the others", func() bool {
		return tally.read(func(g *groupTally) bool {
			return len(g.handled[failing]) == n && g.skipped[done] == n && g.skipped[plain] == n
		})
	})
	if res, err := dlq.Redrive(ctx, s, d, dlqTopic, dlq.RedriveOptions{}); err != nil || res.Redriven != 0 {
		t.Errorf("second redrive: %+v, %v; want nothing redriven", res, err)
	}
	// The same redrive written again, as after a crash between the write
	// and the mark: the group that gave up skips it as a duplicate.
	if err := d.Write(ctx, redriven); err != nil {
		t.Fatal(err)
	}
	waitFor(t, cfg, "the second copy of the redrive skipped", func() bool {
		return tally.read(func(g *groupTally) bool {
			return g.dups[failing] == n && g.skipped[done] == 2*n && g.skipped[plain] == 2*n
		})
	})
	tally.read(func(g *groupTally) bool {
		for group, want := range map[string]int{failing: n, done: n, plain: n} {
			if len(g.handled[group]) != want {
				t.Errorf("group %s handled %d messages, want %d", group, len(g.handled[group]), want)
			}
			for id, runs := range g.handled[group] {
				if runs != 1 {
					t.Errorf("group %s ran message %s %d times, want once", group, id, runs)
				}
			}
		}
		return true
	})
}

// testLeftBehind writes entries straight to a dead-letter topic: some
// cannot go back, one was dead-lettered after the redrive started.
func testLeftBehind(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	topic := drivertest.Name(t, "t")
	dlqTopic := herald.DeadLetterTopic(topic)
	now := time.Now().UTC()
	entry := func(id, origin string, at time.Time) *herald.Message {
		h := herald.Headers{herald.HeaderDeadLetterReason: "boom", herald.HeaderDeadLetterTime: at.Format(time.RFC3339Nano)}
		if origin != "" {
			h[herald.HeaderDeadLetterTopic] = origin
		}
		return &herald.Message{ID: id, Topic: dlqTopic, Key: "k", Headers: h, Data: []byte(id), Time: now}
	}
	err := d.Write(ctx, []*herald.Message{
		entry("no-origin", "", now),
		entry("bad-origin", "no spaces allowed", now),
		entry("loop", dlqTopic, now),
		entry("later", topic, now.Add(time.Hour)),
		entry("good", topic, now.Add(-time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, cfg, "5 entries", func() bool { return len(listAll(t, s, dlqTopic, 100)) == 5 })

	var batches [][]string
	res, err := dlq.Redrive(ctx, s, d, dlqTopic, dlq.RedriveOptions{DryRun: true, Progress: func(p dlq.Progress) {
		batches = append(batches, ids(p.Batch))
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Redriven != 1 || res.Deferred != 1 || len(res.Skipped) != 3 || len(batches) != 1 || !slices.Equal(batches[0], []string{"good"}) {
		t.Errorf("dry run: %+v, batches %v", res, batches)
	}
	if n := len(listAll(t, s, topic, 100)); n != 0 {
		t.Errorf("dry run wrote %d messages", n)
	}

	res, err = dlq.Redrive(ctx, s, d, dlqTopic, dlq.RedriveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	skipped := make(map[string]error)
	for _, sk := range res.Skipped {
		skipped[sk.Entry.Message.ID] = sk.Err
	}
	if res.Redriven != 1 || res.Deferred != 1 || len(skipped) != 3 ||
		!errors.Is(skipped["no-origin"], dlq.ErrNoOriginalTopic) ||
		!errors.Is(skipped["bad-origin"], herald.ErrInvalidName) || !errors.Is(skipped["loop"], herald.ErrInvalidName) {
		t.Errorf("redrive: %+v", res)
	}
	if left := ids(listAll(t, s, dlqTopic, 100)); !slices.Equal(sorted(left), []string{"bad-origin", "later", "loop", "no-origin"}) {
		t.Errorf("left in the dead-letter topic: %v", left)
	}
	back := listAll(t, s, topic, 100)
	if len(back) != 1 || back[0].Message.ID != "good" || len(back[0].Message.Headers) != 0 {
		t.Errorf("written back: %+v", back)
	}
	// Selecting an entry that was dead-lettered "later" redrives it.
	res, err = dlq.Redrive(ctx, s, d, dlqTopic, dlq.RedriveOptions{Select: []string{"later"}})
	if err != nil || res.Redriven != 1 {
		t.Errorf("redrive of the later entry: %+v, %v", res, err)
	}
}

func testFailedWrite(t *testing.T, cfg Config) {
	if cfg.RejectingWriter == nil {
		t.Skip("no RejectingWriter")
	}
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	dl := deadLetter(t, cfg, d, s, 3)
	res, err := dlq.Redrive(ctx, s, cfg.RejectingWriter(t), dl.dlqTopic, dlq.RedriveOptions{})
	if err == nil || res.Redriven != 0 {
		t.Fatalf("redrive through a rejecting writer: %+v, %v", res, err)
	}
	if n := len(listAll(t, s, dl.dlqTopic, 100)); n != 3 {
		t.Errorf("%d entries listed after the failed redrive, want all 3", n)
	}
	if res, err := dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{}); err != nil || res.Redriven != 3 {
		t.Errorf("redrive after the failure: %+v, %v", res, err)
	}
}

func testBadInput(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	const bad = "no spaces"
	if _, _, err := s.List(ctx, bad, "", 10); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("List: %v", err)
	}
	if _, err := s.Get(ctx, bad, "x"); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Get: %v", err)
	}
	if err := s.MarkRedriven(ctx, bad, nil); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("MarkRedriven: %v", err)
	}
	if _, err := dlq.Redrive(ctx, s, d, bad, dlq.RedriveOptions{}); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Redrive: %v", err)
	}
	topic := drivertest.Name(t, "t") + ".dlq"
	if _, _, err := s.List(ctx, topic, "", 0); err == nil {
		t.Error("List accepted limit 0")
	}
	if _, _, err := s.List(ctx, topic, "not a cursor", 10); err == nil {
		t.Error("List accepted a malformed cursor")
	}
	if err := s.MarkRedriven(ctx, topic, []dlq.Entry{{Position: "nowhere"}}); err == nil {
		t.Error("MarkRedriven accepted a malformed position")
	}
	if _, err := dlq.Redrive(ctx, s, d, topic, dlq.RedriveOptions{BatchSize: -1}); err == nil {
		t.Error("Redrive accepted a negative batch size")
	}
}

// consume subscribes dl's group again with a handler that succeeds and
// returns the first n messages it receives, by ID.
func consume(t *testing.T, cfg Config, d herald.Driver, dl deadLettered, n int) map[string]*herald.Message {
	t.Helper()
	ctx := testContext(t, cfg)
	bus := drivertest.NewBus(t, d, dl.topic)
	var mu sync.Mutex
	got := make(map[string]*herald.Message)
	err := herald.Subscribe(bus, dl.group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		mu.Lock()
		got[m.ID] = m.Clone()
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer drivertest.Shutdown(t, bus)
	waitFor(t, cfg, fmt.Sprintf("%d redriven messages", n), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= n
	})
	mu.Lock()
	defer mu.Unlock()
	return maps.Clone(got)
}

// listAll pages through topic with pages of limit.
func listAll(t *testing.T, s dlq.Store, topic string, limit int) []dlq.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var all []dlq.Entry
	cursor := ""
	for {
		page, next, err := s.List(ctx, topic, cursor, limit)
		if err != nil {
			t.Fatalf("List %s: %v", topic, err)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		cursor = next
	}
}

func positions(es []dlq.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Position
	}
	return out
}

func ids(es []dlq.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Message.ID
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func waitFor(t *testing.T, cfg Config, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(cfg.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", cfg.Timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testContext(t *testing.T, cfg Config) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*cfg.Timeout)
	t.Cleanup(cancel)
	return ctx
}
