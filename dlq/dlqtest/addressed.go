package dlqtest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/heraldbus/herald"
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
