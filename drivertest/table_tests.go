package drivertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// RunTables checks group tables (herald.Table, herald.View) on a driver
// that is a herald.TableLog with herald.Partitioned subscriptions (Run
// runs it for a driver that declares Tables): state per key equal to a
// single in-order pass over the input while members come and go,
// deliveries whose update reached the changelog found applied by the
// next member, and views that converge.
func RunTables(t *testing.T, cfg Config) {
	cfg = cfg.withDefaults()
	tests := []struct {
		name string
		fn   func(*testing.T, Config)
	}{
		{"SumsPerKey", testTableSums},
		{"StateFollowsItsPartitions", testTableMembersComeAndGo},
		{"SkipsDeliveriesAlreadyApplied", testTableSkipsApplied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, cfg)
		})
	}
}

// Sum is the table value of the suite: the sum of a key's Event.Seq.
type Sum struct {
	Total int `json:"total"`
	Count int `json:"count"`
}

// SubscribeSums registers Event on topic and subscribes group to it with
// the suite's table handler: it adds each Event's Seq to its key's Sum in
// table, counting its runs in runs. Drivers' crash tests run it in the
// processes they kill.
func SubscribeSums(bus *herald.Bus, topic, group string, table *herald.Table[Sum], runs *atomic.Int64, opts ...herald.SubscribeOption) error {
	if err := herald.Register[Event](bus, topic, herald.WithKey(func(e Event) string { return e.Key })); err != nil {
		return err
	}
	return herald.Subscribe(bus, group, func(ctx context.Context, e Event, _ *herald.Message) error {
		runs.Add(1)
		sum, _, err := table.Get(ctx)
		if err != nil {
			return err
		}
		sum.Total += e.Seq
		sum.Count++
		return table.Set(ctx, sum)
	}, append([]herald.SubscribeOption{herald.WithTable(table)}, opts...)...)
}

// tableSetup is one test's topic, group and table name, its input and
// each key's expected sum.
type tableSetup struct {
	cfg                 Config
	d                   herald.Driver
	topic, group, table string
	events              []any
	sums                map[string]int
}

func newTableSetup(t *testing.T, cfg Config, d herald.Driver, n, keys int) *tableSetup {
	s := &tableSetup{cfg: cfg, d: d, topic: Name(t, "in"), group: Name(t, "g"), table: Name(t, "sums"), sums: map[string]int{}}
	for range n {
		e := Event{Key: fmt.Sprintf("k%d", rand.IntN(keys)), Seq: 1 + rand.IntN(100)}
		s.events = append(s.events, e)
		s.sums[e.Key] += e.Seq
	}
	return s
}

// tableMember is one member of the setup's group: a Bus with its own
// Table, counting its handler's runs and its settled deliveries.
type tableMember struct {
	bus           *herald.Bus
	table         *herald.Table[Sum]
	runs, settled atomic.Int64
}

func (s *tableSetup) member(t *testing.T, d herald.Driver, concurrency int) *tableMember {
	t.Helper()
	m := &tableMember{}
	bus, err := herald.NewBus(d, herald.WithErrorHandler(func(error) {}), herald.WithLogger(slog.New(slog.DiscardHandler)),
		herald.WithHandleHook(func(herald.HandleResult) { m.settled.Add(1) }))
	must(t, err)
	table, err := herald.NewTable[Sum](s.table)
	must(t, err)
	m.bus, m.table = bus, table
	must(t, SubscribeSums(bus, s.topic, s.group, table, &m.runs, herald.WithConcurrency(concurrency)))
	must(t, bus.Start(context4(t, s.cfg)))
	t.Cleanup(func() { Shutdown(t, bus) })
	return m
}

// publish writes the events from..to with a Bus of its own.
func (s *tableSetup) publish(t *testing.T, from, to int) {
	t.Helper()
	bus := NewBus(t, s.d, s.topic)
	must(t, bus.Publish(context4(t, s.cfg), s.events[from:to]...))
}

// converge waits until a View of the table holds every expected sum.
func (s *tableSetup) converge(t *testing.T) {
	t.Helper()
	WaitForSums(t, s.d.(herald.TableLog), s.table, s.sums, s.cfg.Timeout)
}

// WaitForSums waits until a View of the table named table (of Sum, as
// SubscribeSums writes it) holds sums exactly, and fails t with the
// differences if it does not within the time given, or if it changes
// again once the view has caught up.
func WaitForSums(t testing.TB, logs herald.TableLog, table string, sums map[string]int, within time.Duration) {
	t.Helper()
	ctx := Context(t, within+10*time.Second)
	v, err := herald.NewView[Sum](logs, table)
	must(t, err)
	must(t, v.Start(ctx))
	defer func() { must(t, v.Close()) }()
	diff := func() []string {
		var out []string
		for key, want := range sums {
			if got, _, err := v.Get(key); err != nil || got.Total != want {
				out = append(out, fmt.Sprintf("%s: %d (%v), want %d", key, got.Total, err, want))
			}
		}
		return out
	}
	deadline := time.Now().Add(within)
	for d := diff(); len(d) > 0; d = diff() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v the view differs in %d of %d keys: %v", within, len(d), len(sums), d[:min(len(d), 10)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(t, v.WaitCaughtUp(ctx))
	if d := diff(); len(d) > 0 { // later records must not change a converged state
		t.Errorf("after catching up, the view differs: %v", d)
	}
	n := 0
	must(t, v.Range(func(string, Sum) bool { n++; return true }))
	if n != len(sums) {
		t.Errorf("the view holds %d keys, want %d", n, len(sums))
	}
}

func testTableSums(t *testing.T, cfg Config) {
	s := newTableSetup(t, cfg, cfg.NewDriver(t), 2000, 40)
	m := s.member(t, s.d, 4)
	s.publish(t, 0, len(s.events))
	s.converge(t)
	for key, want := range s.sums {
		if got, ok, err := m.table.Value(key); err != nil || !ok || got.Total != want {
			t.Errorf("Value(%s) = %+v, %v, %v; want total %d", key, got, ok, err, want)
		}
	}
	if runs := m.runs.Load(); runs != int64(len(s.events)) {
		t.Errorf("the handler ran %d times for %d events (one member, no failure)", runs, len(s.events))
	}
}

// testTableMembersComeAndGo publishes in six parts; members join after
// the second and fourth and the oldest leaves after the third and fifth,
// so partitions, and their state, move while messages flow.
func testTableMembersComeAndGo(t *testing.T, cfg Config) {
	s := newTableSetup(t, cfg, cfg.NewDriver(t), 3000, 100)
	members := []*tableMember{s.member(t, s.d, 1)}
	chunk := len(s.events) / 6
	for i := range 6 {
		s.publish(t, i*chunk, (i+1)*chunk)
		switch i {
		case 1, 3:
			members = append(members, s.member(t, s.d, 1+len(members)%3))
		case 2, 4:
			Shutdown(t, members[0].bus)
			members = members[1:]
		}
	}
	s.converge(t)
}

// ackLosingDriver is a driver whose subscriptions lose the acknowledgment
// of every message of the keys lose picks, as a member killed between
// its changelog write and its acknowledgment would.
type ackLosingDriver struct {
	herald.Driver
	herald.TableLog
	lose func(*herald.Message) bool
}

type partitionedSubscription interface {
	herald.Subscription
	herald.Partitioned
}

type ackLosingSubscription struct {
	partitionedSubscription
	lose func(*herald.Message) bool
}

func (d ackLosingDriver) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	sub, err := d.Driver.Subscribe(ctx, topic, group)
	if err != nil {
		return nil, err
	}
	p, ok := sub.(partitionedSubscription)
	if !ok {
		_ = sub.Close(ctx)
		return nil, fmt.Errorf("the subscription is not herald.Partitioned: %w", herald.ErrTablesNotSupported)
	}
	return &ackLosingSubscription{p, d.lose}, nil
}

func (s *ackLosingSubscription) Ack(ctx context.Context, d herald.Delivery) error {
	if s.lose(d.Message) {
		return errors.New("acknowledgment lost")
	}
	return s.partitionedSubscription.Ack(ctx, d)
}

// testTableSkipsApplied: a first member handles everything but its
// acknowledgments of two keys are lost; it leaves, and the next member,
// which gets those messages again, must find every one applied.
func testTableSkipsApplied(t *testing.T, cfg Config) {
	s := newTableSetup(t, cfg, cfg.NewDriver(t), 1000, 20)
	lose := func(m *herald.Message) bool { return m.Key == "k3" || m.Key == "k7" }
	first := s.member(t, ackLosingDriver{s.d, s.d.(herald.TableLog), lose}, 4)
	s.publish(t, 0, len(s.events))
	Eventually(t, cfg.Timeout, "every event handled once", func() bool { return first.runs.Load() == int64(len(s.events)) })
	Shutdown(t, first.bus) // hands the unacknowledged back

	next := s.member(t, s.d, 4)
	Eventually(t, cfg.Timeout, "the next member receives the unacknowledged again", func() bool { return next.settled.Load() > 0 })
	s.converge(t)
	if runs := next.runs.Load(); runs != 0 {
		t.Errorf("the next member ran the handler %d times for %d redeliveries already applied, want 0", runs, next.settled.Load())
	}
}
