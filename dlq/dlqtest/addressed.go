package dlqtest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/drivertest"
)

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

// handleHook is a Bus's HandleHook: it counts the deliveries a group
// skipped as not meant for it.
func (g *groupTally) handleHook(r herald.HandleResult) {
	if !r.Skipped {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.skipped[r.Group]++
}

func (g *groupTally) duplicate(group string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dups[group]++
}

func (g *groupTally) read(f func(g *groupTally) bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return f(g)
}

// addressedRedrive is the redrive a team runs after a bad deploy: a
// group that deduplicates dead-letters every message while two other
// groups of the topic (one deduplicating, one not) handle them all; the
// entries are redriven and the handler fixed. The group that gave up
// handles each message exactly once more; the others run none again; a
// second redrive writes nothing, and a second copy of the redriven
// messages (a crash between write and mark) is skipped by dedup.
type addressedRedrive struct {
	cfg                  Config
	ctx                  context.Context
	d                    herald.Driver
	s                    dlq.Store
	dedup                dedup.Storage
	topic, dlqTopic      string
	failing, done, plain string      // the groups
	n                    int         // messages published
	broken               atomic.Bool // the failing group's handler is not fixed yet
	tally                *groupTally
	redriven             []*herald.Message // what the redrive wrote
	fixed                *herald.Bus       // the bus after the fix
}

func testRedriveAddressed(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	topic := drivertest.Name(t, "t")
	sc := &addressedRedrive{
		cfg: cfg, ctx: testContext(t, cfg), d: d, s: s, dedup: cfg.dedup(t),
		topic: topic, dlqTopic: herald.DeadLetterTopic(topic),
		failing: drivertest.Name(t, "failing"), done: drivertest.Name(t, "done"), plain: drivertest.Name(t, "plain"),
		n: 20, tally: newGroupTally(),
	}
	sc.broken.Store(true)
	defer sc.shutdownFixed(t)
	runSteps(t,
		step{"OneGroupDeadLettersWhatTheOthersHandle", sc.deadLetterInOneGroup},
		step{"RedriveWritesEveryEntryBack", sc.redrive},
		step{"OnlyTheGroupThatGaveUpRunsThemAgain", sc.handleAfterTheFix},
		step{"SecondRedriveWritesNothing", sc.redriveAgain},
		step{"RedriveWrittenTwiceIsSkippedAsDuplicate", sc.writeRedriveAgain},
		step{"EachGroupRanEachMessageOnce", sc.checkEachRanOnce},
	)
}

// newBus starts a Bus on the scenario's topic with its three groups: the
// failing one deduplicates and dead-letters, done only deduplicates,
// plain does neither.
func (sc *addressedRedrive) newBus(t *testing.T) *herald.Bus {
	t.Helper()
	bus, err := herald.NewBus(sc.d, herald.WithErrorHandler(func(error) {}), herald.WithLogger(slog.New(slog.DiscardHandler)),
		herald.WithHandleHook(sc.tally.handleHook))
	if err != nil {
		t.Fatal(err)
	}
	if err := herald.Register[drivertest.Event](bus, sc.topic, herald.WithKey(func(e drivertest.Event) string { return e.Key })); err != nil {
		t.Fatal(err)
	}
	sc.subscribe(t, bus, sc.failing, sc.dedupIn(sc.failing), herald.WithDeadLetter())
	sc.subscribe(t, bus, sc.done, sc.dedupIn(sc.done))
	sc.subscribe(t, bus, sc.plain)
	if err := bus.Start(sc.ctx); err != nil {
		t.Fatal(err)
	}
	return bus
}

// dedupIn deduplicates group's deliveries in the scenario's storage and
// counts the duplicates.
func (sc *addressedRedrive) dedupIn(group string) herald.SubscribeOption {
	return herald.WithDedupConfig(herald.DedupConfig{Storage: sc.dedup, OnDuplicate: func(*herald.Message) {
		sc.tally.duplicate(group)
	}})
}

// subscribe subscribes group with a handler that fails permanently in
// the failing group until the fix, and otherwise counts the run.
func (sc *addressedRedrive) subscribe(t *testing.T, bus *herald.Bus, group string, opts ...herald.SubscribeOption) {
	t.Helper()
	err := herald.Subscribe(bus, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		if group == sc.failing && sc.broken.Load() {
			return herald.Permanent(fmt.Errorf("order %d: bad deploy", e.Seq))
		}
		sc.tally.handle(group, m.ID)
		return nil
	}, opts...)
	if err != nil {
		t.Fatal(err)
	}
}

// deadLetterInOneGroup publishes the messages and waits for the failing
// group to dead-letter them all and the others to handle them all.
func (sc *addressedRedrive) deadLetterInOneGroup(t *testing.T) {
	bus := sc.newBus(t)
	defer drivertest.Shutdown(t, bus)
	events := make([]any, sc.n)
	for i := range events {
		events[i] = drivertest.Event{Key: fmt.Sprintf("k%d", i%4), Seq: i}
	}
	if err := bus.Publish(sc.ctx, events...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sc.cfg, "every message dead-lettered by one group and handled by the others", func() bool {
		return len(listAll(t, sc.s, sc.dlqTopic, 100)) == sc.n && sc.tally.read(func(g *groupTally) bool {
			return len(g.handled[sc.done]) == sc.n && len(g.handled[sc.plain]) == sc.n
		})
	})
}

// redrive redrives every entry and keeps the messages it wrote.
func (sc *addressedRedrive) redrive(t *testing.T) {
	res, err := dlq.Redrive(sc.ctx, sc.s, sc.d, sc.dlqTopic, dlq.RedriveOptions{Progress: func(p dlq.Progress) {
		for _, e := range p.Batch {
			sc.redriven = append(sc.redriven, e.Redriven())
		}
	}})
	if err != nil || res.Redriven != sc.n {
		t.Fatalf("redrive: %+v, %v; want %d redriven", res, err, sc.n)
	}
}

// handleAfterTheFix deploys the fix and waits for the group that gave up
// to handle every redriven message and the others to skip them.
func (sc *addressedRedrive) handleAfterTheFix(t *testing.T) {
	sc.broken.Store(false)
	sc.fixed = sc.newBus(t)
	waitFor(t, sc.cfg, "the redriven messages handled by the group that gave up, skipped by the others", func() bool {
		return sc.tally.read(func(g *groupTally) bool {
			return len(g.handled[sc.failing]) == sc.n && g.skipped[sc.done] == sc.n && g.skipped[sc.plain] == sc.n
		})
	})
}

func (sc *addressedRedrive) redriveAgain(t *testing.T) {
	if res, err := dlq.Redrive(sc.ctx, sc.s, sc.d, sc.dlqTopic, dlq.RedriveOptions{}); err != nil || res.Redriven != 0 {
		t.Errorf("second redrive: %+v, %v; want nothing redriven", res, err)
	}
}

// writeRedriveAgain writes the redrive again, as after a crash between
// the write and the mark, and waits for the group that gave up to skip
// it as a duplicate and the others to skip it as not theirs.
func (sc *addressedRedrive) writeRedriveAgain(t *testing.T) {
	if err := sc.d.Write(sc.ctx, sc.redriven); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sc.cfg, "the second copy of the redrive skipped", func() bool {
		return sc.tally.read(func(g *groupTally) bool {
			return g.dups[sc.failing] == sc.n && g.skipped[sc.done] == 2*sc.n && g.skipped[sc.plain] == 2*sc.n
		})
	})
}

// checkEachRanOnce checks every group handled every message, and none
// more than once.
func (sc *addressedRedrive) checkEachRanOnce(t *testing.T) {
	sc.tally.read(func(g *groupTally) bool {
		for _, group := range []string{sc.failing, sc.done, sc.plain} {
			if len(g.handled[group]) != sc.n {
				t.Errorf("group %s handled %d messages, want %d", group, len(g.handled[group]), sc.n)
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

func (sc *addressedRedrive) shutdownFixed(t *testing.T) {
	if sc.fixed != nil {
		drivertest.Shutdown(t, sc.fixed)
	}
}
