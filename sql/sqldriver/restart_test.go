package sqldriver_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqltest"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/internal/keyhash"
	"github.com/heraldbus/herald/sql/internal/privatepg"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// TestRestartPostgresMidStream kills a private PostgreSQL server (SIGKILL,
// no shutdown) while a producer writes through sqldriver and two members
// of a group (Buses on drivers of their own, as two processes would have)
// consume, keeps it down until writes have failed, the members have
// reported failing fetches and background work and their leases have
// expired, and starts it again. The producer writes each failed batch
// again until it is acknowledged; the driver must recover by itself (the
// scheduler retries Fetch, the pump and the heartbeats get new connections
// from database/sql): every message acknowledged as written is handled,
// none that was rolled back is, and per key the first handlings follow
// the publish order.
func TestRestartPostgresMidStream(t *testing.T) {
	t.Parallel()
	const total, keys = 1200, 24
	e := newRestartEnv(t)
	handle := func(ctx context.Context, m *herald.Message) error {
		time.Sleep(time.Millisecond) // so that handlings are under way when the server dies
		return e.record(m)
	}
	// A short maximum poll, so that Fetch's safety-net read, which runs
	// every ten of them while the pump's head stands still, meets the dead
	// server within a second.
	for range 2 {
		e.startMember(handle, sqldriver.WithPollInterval(time.Millisecond, 100*time.Millisecond))
	}
	var ks []string
	for k := range keys {
		ks = append(ks, fmt.Sprintf("k%02d", k))
	}
	p := newProducer("p", newDriver(t, e.db, e.tdb.D, sqldriver.WithTable(e.table)), e.db, e.topic, ks, uint64(time.Now().UnixNano()))
	p.retry = true
	producers := runProducers(t, []*producer{p}, total, 10*time.Millisecond)

	// Mid-stream, with the members settled: a hand-over under way when
	// the server dies is TestRestartPostgresDuringHandOver's case.
	drivertest.Eventually(t, time.Minute, "a third of the messages written, and the partitions shared", func() bool {
		return p.progress.Load() >= total/3 && shared(e.owners(), 2)
	})
	e.srv.Kill(t)
	killed := time.Now()
	drivertest.Eventually(t, time.Minute, "failed writes, fetches and background work while the server is down", func() bool {
		return p.failures.Load() >= 3 && e.errs.get("fetch") > 0 && e.errs.get("background") > 0
	})
	time.Sleep(time.Until(killed.Add(crashLease))) // every lease expires
	e.srv.Restart(t)
	outage := time.Since(killed).Round(10 * time.Millisecond)
	written, rolledBack, failures := waitProducers(t, producers)

	e.waitDrained()
	e.shutdown()
	handled := e.recorded()
	dups := verifyDeliveries(t, written, rolledBack, handled)
	t.Logf("server down for %v: %d failed writes retried; subscription errors %v; %d messages written (and %d rolled back), %d handlings: %d duplicates",
		outage, failures, e.errs.snapshot(), len(written), len(rolledBack), len(handled), dups)
}

// TestRestartPostgresDuringHandOver kills the server while a member hands
// half of its partitions over to a member that has just joined: the first
// member holds every partition, a handler of the highest one (the highest
// are the ones handed over) is still running, so the hand-over waits for
// it, and the server dies in that wait. After the restart the group must still
// consume every partition: those of the interrupted hand-over included.
//
// It caught a stranded partition: the hand-over's giveBack failed while
// the server was down, the member had already forgotten the partition,
// and its heartbeats went on renewing the lease the offsets table still
// gave it, so nobody read the partition again (releaseStrays fixes it).
func TestRestartPostgresDuringHandOver(t *testing.T) {
	t.Parallel()
	e := newRestartEnv(t)
	// One key per partition; the first message of the last one blocks its
	// handler until the server is down.
	keys := keysPerPartition(sqldriver.DefaultPartitions)
	blocker := keys[len(keys)-1]
	blocking, release := make(chan struct{}, 1), make(chan struct{})
	handle := func(ctx context.Context, m *herald.Message) error {
		if m.Key == blocker && string(m.Data) == "0" {
			select {
			case blocking <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return e.record(m)
	}
	// The default lease: the outage ends long before the leases do, so
	// nobody may take over what a member holds; a quarter of it is how
	// long a hand-over waits for running handlers.
	lease := sqldriver.WithLease(sqldriver.DefaultLease)
	e.startMember(handle, lease)
	writer := newDriver(t, e.db, e.tdb.D, sqldriver.WithTable(e.table))
	written := map[string]sent{}
	write := func(seq int) {
		t.Helper()
		var msgs []*herald.Message
		for _, k := range keys {
			id := fmt.Sprintf("%s-%d", k, seq)
			msgs = append(msgs, &herald.Message{ID: id, Topic: e.topic, Key: k, Data: []byte(strconv.Itoa(seq))})
			written[id] = sent{k, seq}
		}
		// Right after the restart a pooled connection that was in use just
		// before the kill fails once; write again, as the producers do.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for err := writer.Write(ctx, msgs); err != nil; err = writer.Write(ctx, msgs) {
			if !backoff.Sleep(ctx, 20*time.Millisecond) {
				t.Fatal(err)
			}
		}
	}
	write(0)
	select {
	case <-blocking:
	case <-time.After(time.Minute):
		t.Fatal("the blocking handler never ran")
	}
	if owners := distinctOwners(e.owners()); len(owners) != 1 {
		t.Fatalf("owners %v before the second member joins, want the first alone", owners)
	}
	first := e.owners()[0]
	beat := e.memberExpiry(first)
	e.startMember(handle, lease)
	// The first member's next heartbeat counts two members and starts
	// handing over; its hand-over then waits for the blocked handler.
	drivertest.Eventually(t, time.Minute, "the first member's heartbeat after the join", func() bool {
		return e.memberExpiry(first) > beat
	})
	time.Sleep(sqldriver.DefaultLease / 16) // into the quarter-lease wait
	e.srv.Kill(t)
	close(release)
	drivertest.Eventually(t, time.Minute, "background errors while the server is down", func() bool { return e.errs.get("background") > 0 })
	e.srv.Restart(t)
	write(1)
	e.waitDrained()
	e.shutdown()
	verifyDeliveries(t, written, nil, e.recorded())
	t.Logf("subscription errors %v", e.errs.snapshot())
}

// restartEnv is a log on a private PostgreSQL server, its group's
// members, and what their handlers recorded.
type restartEnv struct {
	groupView
	srv   *privatepg.Server
	errs  opCounter
	buses []*herald.Bus

	mu      sync.Mutex
	handled []handling
}

func newRestartEnv(t *testing.T) *restartEnv {
	srv := privatepg.Start(t)
	tdb := sqltest.Postgres(srv.DSN())
	return &restartEnv{groupView: newGroupView(t, tdb, tdb.Open(t)), srv: srv}
}

// startMember starts a member of the group: a Bus on a driver of its own.
func (e *restartEnv) startMember(h herald.HandlerFunc, opts ...sqldriver.Option) *herald.Bus {
	e.t.Helper()
	drv := newDriver(e.t, e.db, e.tdb.D, append([]sqldriver.Option{sqldriver.WithTable(e.table)}, opts...)...)
	bus, err := herald.NewBus(drv, herald.WithLogger(slog.New(slog.DiscardHandler)), herald.WithErrorHandler(e.errs.add))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := bus.Handle(e.topic, e.group, h, herald.WithConcurrency(4)); err != nil {
		e.t.Fatal(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { shutdownBus(e.t, bus) })
	e.buses = append(e.buses, bus)
	return bus
}

// record notes that m was handled.
func (e *restartEnv) record(m *herald.Message) error {
	seq, err := strconv.Atoi(string(m.Data))
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.handled = append(e.handled, handling{id: m.ID, key: m.Key, seq: seq})
	e.mu.Unlock()
	return nil
}

// waitDrained waits until the group has committed past every row; when
// it does not within a minute, it fails with each partition's owner,
// position and head.
func (e *restartEnv) waitDrained() {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for e.lag() != 0 {
		if time.Now().After(deadline) {
			e.t.Fatalf("the group did not consume everything written within a minute; by partition:\n%s", e.describe())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// describe lists each partition's owner, committed position and head.
func (e *restartEnv) describe() string {
	owners, pos, heads := e.owners(), e.positions(), e.heads()
	var b strings.Builder
	for p := range sqldriver.DefaultPartitions {
		owner := owners[p]
		if owner == "" {
			owner = "(none)"
		}
		fmt.Fprintf(&b, "partition %2d: owner %s, position %d, head %d\n", p, owner, pos[p], heads[p])
	}
	return b.String()
}

// recorded returns what the handlers recorded so far, in order.
func (e *restartEnv) recorded() []handling {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.handled)
}

// shutdown stops the members.
func (e *restartEnv) shutdown() {
	e.t.Helper()
	for _, bus := range e.buses {
		shutdownBus(e.t, bus)
	}
}

// memberExpiry returns when the member's row in the members table
// expires: each heartbeat moves it.
func (e *restartEnv) memberExpiry(member string) int64 {
	e.t.Helper()
	var at int64
	if err := e.db.QueryRow("SELECT expires_at FROM "+e.tdb.Quote(e.table+"_members")+" WHERE grp = $1 AND topic = $2 AND member = $3",
		e.group, e.topic, member).Scan(&at); err != nil {
		e.t.Fatal(err)
	}
	return at
}

// shared reports whether members members own all the partitions, in
// equal shares: no hand-over is under way.
func shared(owners map[int]string, members int) bool {
	count := map[string]int{}
	for _, o := range owners {
		count[o]++
	}
	if len(owners) != sqldriver.DefaultPartitions || len(count) != members {
		return false
	}
	for _, n := range count {
		if n != sqldriver.DefaultPartitions/members {
			return false
		}
	}
	return true
}

// keysPerPartition returns a key for each of n partitions, in partition
// order.
func keysPerPartition(n int) []string {
	keys := make([]string, n)
	found := 0
	for i := 0; found < n; i++ {
		k := "k" + strconv.Itoa(i)
		if p := keyhash.Partition(k, n); keys[p] == "" {
			keys[p] = k
			found++
		}
	}
	return keys
}

func shutdownBus(t *testing.T, bus *herald.Bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// opCounter counts a Bus's errors by the operation that failed.
type opCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *opCounter) add(err error) {
	op := "other"
	var se *herald.SubscriptionError
	if errors.As(err, &se) {
		op = se.Op
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[op]++
}

func (c *opCounter) get(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[op]
}

func (c *opCounter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}
