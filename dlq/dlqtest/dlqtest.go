// Package dlqtest is the suite every dlq.Store runs against its real
// broker: messages are dead-lettered by a herald.Bus, listed, looked up,
// and redriven with dlq.Redrive, and the suite checks what arrives again
// on the original topic. Drivers call Run from their own tests.
package dlqtest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
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
	// MissingPosition is a position in the store's own form (the form of
	// dlq.Entry.Position: a Redis stream entry ID, a Kafka
	// "partition:offset") that holds no entry in the suite's dead-letter
	// topics: well formed, on a partition every topic has (for a form
	// with partitions), at an offset or entry ID never written. Get of
	// it must report dlq.ErrNotFound, not the entry nearest to it. The
	// suite cannot make one up, since only the driver knows its form;
	// when empty, that one check is skipped and says so.
	MissingPosition string
	// BadPositions are malformed positions in the store's own terms
	// (a partition out of range, a leading zero), beside the suite's
	// own ("nowhere", "-1", ...): List with one as its cursor and
	// MarkRedriven of one must fail with dlq.ErrBadPosition.
	BadPositions []string
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
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // every case has a driver, topics and groups of its own
			tc.fn(t, cfg)
		})
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

// step is one named part of a scenario.
type step struct {
	name string
	fn   func(t *testing.T)
}

// runSteps runs a scenario's steps in order, each as a subtest. Each step
// starts from what the steps before it left in the broker, so a step that
// stops (t.Fatal) ends the scenario; one that only reports errors does
// not, and the steps after it still run.
func runSteps(t *testing.T, steps ...step) {
	t.Helper()
	for _, s := range steps {
		finished := false
		t.Run(s.name, func(t *testing.T) {
			s.fn(t)
			finished = true
		})
		if !finished {
			return
		}
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
	all, _ := Pages(t, ctx, s, topic, limit)
	return all
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// waitFor and testContext are the toolkit's, bounded by the suite's
// timeout.
func waitFor(t *testing.T, cfg Config, what string, cond func() bool) {
	t.Helper()
	drivertest.Eventually(t, cfg.Timeout, what, cond)
}

func testContext(t *testing.T, cfg Config) context.Context {
	return drivertest.Context(t, 4*cfg.Timeout)
}
