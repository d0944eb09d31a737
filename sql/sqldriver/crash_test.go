package sqldriver_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/sql/internal/sqltest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// crashChildEnv makes the test binary run runCrashChild instead of the
// tests; its value is the child's crashChildConfig in JSON.
const crashChildEnv = "HERALD_SQL_TEST_CRASH_CHILD"

// The crash test's sizes: two producers, each with half of the keys,
// write crashMessages messages in all while crashMembers child processes
// consume them as one group, crashKills of which are killed in turn.
const (
	crashMessages = 3000
	crashKeys     = 40
	crashMembers  = 3
	crashKills    = 3
	// crashLease is the lease of the children's drivers: newDriver's.
	crashLease = 2 * time.Second
)

// crashChildConfig tells a child where the log and the results file are.
type crashChildConfig struct {
	Dialect sqldriver.Dialect
	Driver  string // database/sql driver name
	DSN     string
	Table   string // the log
	// Results is the file every child appends a line to for each message
	// it handles (see runCrashChild).
	Results string
	Topic   string
	Group   string
	Name    string // the child's, recorded with each handling
}

// TestCrashMembersKilledMidBatch runs the members of a group as child
// processes (this test binary again) and kills them with SIGKILL in the
// middle of their work, one after another, on each dialect, while two
// producers write keyed messages, some in caller transactions that commit
// and some in ones that roll back. Each child records every message it
// handles in a results file before its handler returns nil. After each
// kill the survivors must take the dead member's partitions over and
// consume them up to where the log was at the kill; then a replacement
// joins. At the end, with the group drained: every committed message was
// handled, nothing rolled back was, and per key the first handlings
// follow the publish order. Duplicates are allowed (at-least-once) and
// logged.
func TestCrashMembersKilledMidBatch(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	forEachDialect(t, testCrashMembers)
}

func testCrashMembers(t *testing.T, tdb *testDB) {
	r := newCrashRun(t, tdb)
	for range crashMembers {
		r.startChild()
	}
	producers := r.startProducers()
	for round := range crashKills {
		r.waitEveryMemberOwns()
		owners := r.owners()
		victim := r.live[r.rng.IntN(len(r.live))]
		if round == 1 { // between a record and its acknowledgment
			r.killInHandler(victim)
		} else {
			r.killAtRandom(victim)
		}
		r.waitTakenOver(victim, owners, r.heads())
		r.startChild()
	}
	written, rolledBack, _ := waitProducers(t, producers)
	drivertest.Eventually(t, time.Minute, "the group to drain the log", func() bool { return r.lag() == 0 })
	r.stopChildren()
	handled := r.handled()
	dups := verifyDeliveries(t, written, rolledBack, handled)
	checkRedelivered(t, handled)
	t.Logf("%s: %d messages written (and %d rolled back), %d handlings: %d duplicates; %d members killed (%s), taken over after %v",
		tdb.D, len(written), len(rolledBack), len(handled), dups, crashKills, strings.Join(r.killNotes, ", "), r.takeovers)
}

// checkRedelivered checks that each message a child recorded just before
// it killed itself, so never acknowledged, was handled again.
func checkRedelivered(t *testing.T, handled []handling) {
	t.Helper()
	times := map[string]int{}
	for _, h := range handled {
		times[h.id]++
	}
	for _, h := range handled {
		if strings.HasSuffix(h.child, dyingMark) && times[h.id] < 2 {
			t.Errorf("%s, which %s recorded and died before acknowledging, was not handled again", h.id, strings.TrimSuffix(h.child, dyingMark))
		}
	}
}

// crashRun is one crash test's log, results file and child processes.
type crashRun struct {
	groupView
	base crashChildConfig
	dir  string // the results file and the children's logs
	rng  *rand.Rand

	live      []*sqltest.Child
	children  int
	killNotes []string
	takeovers []time.Duration
}

func newCrashRun(t *testing.T, tdb *testDB) *crashRun {
	g := newGroupView(t, tdb, tdb.Open(t))
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	return &crashRun{
		groupView: g, dir: dir, rng: rand.New(rand.NewPCG(uint64(seed), 1)),
		base: crashChildConfig{
			Dialect: tdb.D, Driver: tdb.Driver, DSN: tdb.DSN, Table: g.table, Results: filepath.Join(dir, "handled"),
			Topic: g.topic, Group: g.group,
		},
	}
}

// startProducers starts two producers with half of the keys each, paced
// so that they write while members are killed.
func (r *crashRun) startProducers() <-chan producerResult {
	drv := newDriver(r.t, r.db, r.tdb.D, sqldriver.WithTable(r.table))
	var ps []*producer
	for i := range 2 {
		var keys []string
		for k := i * crashKeys / 2; k < (i+1)*crashKeys/2; k++ {
			keys = append(keys, fmt.Sprintf("k%02d", k))
		}
		ps = append(ps, newProducer(fmt.Sprintf("p%d", i), drv, r.db, r.topic, keys, r.rng.Uint64()))
	}
	return runProducers(r.t, ps, crashMessages/len(ps), 70*time.Millisecond)
}

// waitEveryMemberOwns waits until each live member holds a partition, so
// that the next victim has some to hand over by dying.
func (r *crashRun) waitEveryMemberOwns() {
	drivertest.Eventually(r.t, time.Minute, fmt.Sprintf("each of %d members to own a partition", len(r.live)), func() bool {
		return len(distinctOwners(r.owners())) == len(r.live)
	})
}

// killAtRandom kills the child with SIGKILL at a random moment of its work.
func (r *crashRun) killAtRandom(c *sqltest.Child) {
	time.Sleep(time.Duration(r.rng.IntN(500)) * time.Millisecond)
	c.Kill()
	r.dead(c, "by the parent")
}

// killInHandler has the child kill itself right after it has recorded a
// message and before its handler returns, so before the acknowledgment.
// A child that gets nothing to handle (the log was drained) is killed
// from outside after a while instead.
func (r *crashRun) killInHandler(c *sqltest.Child) {
	if _, err := c.Stdin.WriteString("die\n"); err != nil {
		r.t.Fatal(err)
	}
	select {
	case <-c.Exited:
		r.dead(c, "in its handler")
	case <-time.After(10 * time.Second):
		c.Kill()
		r.dead(c, "by the parent (nothing to handle)")
	}
}

func (r *crashRun) dead(c *sqltest.Child, how string) {
	r.t.Helper()
	if code := c.Cmd.ProcessState.ExitCode(); code != -1 {
		r.t.Fatalf("%s exited with %d, want killed by a signal", c.Name, code)
	}
	r.live = slices.DeleteFunc(r.live, func(x *sqltest.Child) bool { return x == c })
	r.killNotes = append(r.killNotes, c.Name+" "+how)
}

// waitTakenOver waits until the survivors own every partition, those of
// the dead member included, and have consumed each up to where the log
// was after the kill (heads).
func (r *crashRun) waitTakenOver(victim *sqltest.Child, before map[int]string, heads map[int]int64) {
	r.t.Helper()
	start := time.Now()
	known := distinctOwners(before)
	var now map[int]string
	drivertest.Eventually(r.t, time.Minute, "the survivors to take over the partitions of "+victim.Name, func() bool {
		now = r.owners()
		owners := distinctOwners(now)
		if len(now) != sqldriver.DefaultPartitions || len(owners) != len(r.live) {
			return false
		}
		for _, o := range owners {
			if !slices.Contains(known, o) {
				return false
			}
		}
		pos := r.positions()
		for p, head := range heads {
			if pos[p] < head {
				return false
			}
		}
		return true
	})
	r.takeovers = append(r.takeovers, time.Since(start).Round(10*time.Millisecond))
	var moved []int
	survivors := distinctOwners(now)
	for p, o := range before {
		if !slices.Contains(survivors, o) {
			moved = append(moved, p)
		}
	}
	slices.Sort(moved)
	if len(moved) == 0 {
		r.t.Errorf("%s owned no partition when it was killed: owners before %v, after %v", victim.Name, before, now)
	}
	r.t.Logf("%s killed; its partitions %v taken over in %v", victim.Name, moved, r.takeovers[len(r.takeovers)-1])
}

// handled returns what the children recorded, in the order they did.
func (r *crashRun) handled() []handling {
	r.t.Helper()
	b, err := os.ReadFile(r.base.Results)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []handling
	torn := 0
	for line := range strings.Lines(string(b)) {
		h, ok := parseRecord(line)
		switch {
		case ok:
			out = append(out, h)
		case strings.TrimSpace(line) != "":
			torn++
		}
	}
	if torn > 0 {
		r.t.Logf("%d records torn by a kill", torn)
	}
	return out
}

func distinctOwners(owners map[int]string) []string {
	out := slices.Collect(maps.Values(owners))
	slices.Sort(out)
	return slices.Compact(out)
}

// startChild starts a member (sqltest.StartChild) and registers it.
func (r *crashRun) startChild() {
	r.t.Helper()
	r.children++
	cfg := r.base
	cfg.Name = fmt.Sprintf("c%d", r.children)
	env, err := json.Marshal(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.live = append(r.live, sqltest.StartChild(r.t, r.dir, cfg.Name, "^TestCrashMembersKilledMidBatch$", crashChildEnv+"="+string(env)))
}

// stopChildren closes the live children's input, which shuts them down
// gracefully, and checks that they exited cleanly.
func (r *crashRun) stopChildren() {
	r.t.Helper()
	for _, c := range r.live {
		_ = c.Stdin.Close()
	}
	for _, c := range r.live {
		c.Stop(r.t, time.Minute)
	}
}

// runCrashChild is one member of the group in a process of its own: a
// Bus on its own Driver and *sql.DB, whose handler records each message
// it handles in the results file (appendRecord), written and fsynced
// before the handler returns nil and the Bus acknowledges. It reads
// commands from its standard input: "die" makes it kill itself with
// SIGKILL right after its next record (marked dyingMark), before the
// acknowledgment; the end of its input shuts it down gracefully, so it
// never outlives the test.
func runCrashChild() int {
	var cfg crashChildConfig
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s %s: %s\n", time.Now().Format("15:04:05.000"), cfg.Name, fmt.Sprintf(format, args...))
	}
	fail := func(err error) int {
		logf("%v", err)
		return 2
	}
	if err := json.Unmarshal([]byte(os.Getenv(crashChildEnv)), &cfg); err != nil {
		return fail(fmt.Errorf("bad %s: %w", crashChildEnv, err))
	}
	db, err := sql.Open(cfg.Driver, cfg.DSN)
	if err != nil {
		return fail(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(8)
	results, err := os.OpenFile(cfg.Results, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fail(err)
	}
	defer results.Close()
	drv, err := sqldriver.New(db, cfg.Dialect, sqldriver.WithTable(cfg.Table), sqldriver.WithLease(crashLease),
		sqldriver.WithErrorHandler(func(err error) { logf("driver: %v", err) }))
	if err != nil {
		return fail(err)
	}
	defer drv.Close()
	bus, err := herald.NewBus(drv, herald.WithLogger(slog.New(slog.DiscardHandler)),
		herald.WithErrorHandler(func(err error) { logf("bus: %v", err) }))
	if err != nil {
		return fail(err)
	}
	var die atomic.Bool
	err = bus.Handle(cfg.Topic, cfg.Group, func(ctx context.Context, m *herald.Message) error {
		seq, err := strconv.Atoi(string(m.Data))
		if err != nil {
			return err
		}
		dying := die.Load()
		h := handling{id: m.ID, key: m.Key, seq: seq, child: cfg.Name}
		if dying {
			h.child += dyingMark
		}
		if _, err := results.Write(appendRecord(nil, h)); err != nil {
			return err
		}
		if err := results.Sync(); err != nil {
			return err
		}
		if dying {
			sqltest.KillSelf()
		}
		return nil
	}, herald.WithConcurrency(4))
	if err != nil {
		return fail(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		return fail(err)
	}
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		if lines.Text() == "die" {
			die.Store(true)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.Shutdown(ctx); err != nil {
		return fail(fmt.Errorf("shutdown: %w", err))
	}
	if err := drv.Close(); err != nil {
		return fail(fmt.Errorf("close: %w", err))
	}
	return 0
}

// sent is a message as its producer wrote it: its key and its number in
// the key's sequence (also its Data).
type sent struct {
	key string
	seq int
}

// handling is one run of a handler that returned nil (or was about to).
type handling struct {
	id, key string
	seq     int
	child   string // the child process that recorded it (the crash test)
}

// dyingMark ends the child name of a record after which the child killed
// itself: the message was never acknowledged.
const dyingMark = "/dying"

// appendRecord appends the line a child writes for a handling, with one
// write(2) on a file opened with O_APPEND: the kernel appends the writes
// of all the children one after another, so the file's order is the
// order in which the handlings were recorded. The line starts with a
// newline and ends with "end", so a record torn by a kill cannot glue
// itself to the next one or pass for a whole one.
func appendRecord(b []byte, h handling) []byte {
	return fmt.Appendf(b, "\n%s %s %d %s end\n", h.id, h.key, h.seq, h.child)
}

// parseRecord parses a line of appendRecord; ok is false for a torn one.
func parseRecord(line string) (h handling, ok bool) {
	f := strings.Fields(line)
	if len(f) != 5 || f[4] != "end" {
		return handling{}, false
	}
	seq, err := strconv.Atoi(f[2])
	if err != nil {
		return handling{}, false
	}
	return handling{id: f[0], key: f[1], seq: seq, child: f[3]}, true
}

// verifyDeliveries checks handled, in the order the handlings happened,
// against what was written: every written message handled at least once,
// nothing handled that was never committed (rolledBack, or unknown), and
// per key the first handlings in increasing sequence order. It returns
// how many handlings were repeats.
func verifyDeliveries(t *testing.T, written, rolledBack map[string]sent, handled []handling) (duplicates int) {
	t.Helper()
	const show = 10
	var problems []string
	count := 0
	problem := func(format string, args ...any) {
		if count++; count <= show {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	first := make(map[string]bool, len(written))
	last := map[string]int{} // per key, the sequence number of its latest first handling
	for i, h := range handled {
		w, ok := written[h.id]
		if !ok {
			what := "was never written"
			if _, rb := rolledBack[h.id]; rb {
				what = "was rolled back, never committed"
			}
			problem("handling %d: %s (key %s, seq %d) %s", i, h.id, h.key, h.seq, what)
			continue
		}
		if w.key != h.key || w.seq != h.seq {
			problem("handling %d: %s has key %s seq %d, written as key %s seq %d", i, h.id, h.key, h.seq, w.key, w.seq)
		}
		if first[h.id] {
			duplicates++
			continue
		}
		first[h.id] = true
		if prev, ok := last[w.key]; ok && w.seq <= prev {
			problem("handling %d: key %s: seq %d (%s) handled for the first time after seq %d", i, w.key, w.seq, h.id, prev)
		}
		last[w.key] = w.seq
	}
	var lost []string
	for id := range written {
		if !first[id] {
			lost = append(lost, id)
		}
	}
	slices.Sort(lost)
	if len(lost) > 0 {
		problem("%d of %d written messages never handled: %v", len(lost), len(written), lost[:min(len(lost), show)])
	}
	if count > 0 {
		more := ""
		if count > show {
			more = fmt.Sprintf("\n(and %d more)", count-show)
		}
		t.Errorf("%d problems in %d handlings of %d written messages:\n%s%s",
			count, len(handled), len(written), strings.Join(problems, "\n"), more)
	}
	return duplicates
}

// producer writes keyed messages one batch at a time, so that each key's
// sequence numbers follow the order of the writes. A batch goes through
// Write's own transaction, or a caller transaction (sqldriver.WithTx,
// two Writes, held open a little so that other writers' commits overtake
// it) that commits, or one that rolls back. A message counts as written
// once its Write or Commit returned nil. A producer is used by one
// goroutine; progress and failures may be read from others.
type producer struct {
	name  string
	drv   *sqldriver.Driver
	db    *sql.DB
	topic string
	keys  []string
	rng   *rand.Rand
	retry bool // write a failed batch again (the database comes back) instead of giving up

	made       int
	next       map[string]int
	written    map[string]sent
	rolledBack map[string]sent
	progress   atomic.Int64 // messages written
	failures   atomic.Int64 // failed attempts
}

func newProducer(name string, drv *sqldriver.Driver, db *sql.DB, topic string, keys []string, seed uint64) *producer {
	return &producer{
		name: name, drv: drv, db: db, topic: topic, keys: keys, rng: rand.New(rand.NewPCG(seed, 2)),
		next: map[string]int{}, written: map[string]sent{}, rolledBack: map[string]sent{},
	}
}

// batch is the next messages of a producer and its key sequence after
// them, which it adopts when they are written.
type batch struct {
	msgs []*herald.Message
	sent map[string]sent
	next map[string]int
}

func (p *producer) makeBatch(n int, prefix string) batch {
	b := batch{sent: map[string]sent{}, next: maps.Clone(p.next)}
	for range n {
		key := p.keys[p.rng.IntN(len(p.keys))]
		seq := b.next[key]
		b.next[key]++
		p.made++
		id := fmt.Sprintf("%s%s-%05d", prefix, p.name, p.made)
		b.msgs = append(b.msgs, &herald.Message{ID: id, Topic: p.topic, Key: key, Data: []byte(strconv.Itoa(seq))})
		b.sent[id] = sent{key, seq}
	}
	return b
}

// run writes total messages, pausing about pace between batches.
func (p *producer) run(ctx context.Context, total int, pace time.Duration) error {
	for len(p.written) < total {
		n := min(1+p.rng.IntN(30), total-len(p.written))
		var err error
		if mode := p.rng.IntN(10); mode == 0 {
			err = p.rollBack(ctx, p.makeBatch(n, "rb-"))
		} else {
			err = p.commit(ctx, p.makeBatch(n, ""), mode < 5)
		}
		if err != nil {
			return fmt.Errorf("producer %s: %w", p.name, err)
		}
		if !backoff.Sleep(ctx, time.Duration(p.rng.Int64N(int64(2*pace)))) {
			return ctx.Err()
		}
	}
	return nil
}

// commit writes b, again after each failure when p retries.
func (p *producer) commit(ctx context.Context, b batch, ownTx bool) error {
	for {
		err := p.writeOnce(ctx, b, ownTx)
		if err == nil {
			maps.Copy(p.written, b.sent)
			p.next = b.next
			p.progress.Store(int64(len(p.written)))
			return nil
		}
		p.failures.Add(1)
		if !p.retry || ctx.Err() != nil {
			return err
		}
		if !backoff.Sleep(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func (p *producer) writeOnce(ctx context.Context, b batch, ownTx bool) error {
	if ownTx {
		return p.drv.Write(ctx, b.msgs)
	}
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	half := len(b.msgs) / 2
	for _, msgs := range [][]*herald.Message{b.msgs[:half], b.msgs[half:]} {
		if err := p.drv.Write(sqldriver.WithTx(ctx, tx), msgs); err != nil {
			_ = tx.Rollback()
			return err
		}
		time.Sleep(time.Duration(p.rng.IntN(5)) * time.Millisecond)
	}
	return tx.Commit()
}

// rollBack writes b in a caller transaction and rolls it back.
func (p *producer) rollBack(ctx context.Context, b batch) error {
	maps.Copy(p.rolledBack, b.sent)
	tx, err := p.db.BeginTx(ctx, nil)
	if err == nil {
		err = p.drv.Write(sqldriver.WithTx(ctx, tx), b.msgs)
		err = errors.Join(err, tx.Rollback())
	}
	if err != nil {
		p.failures.Add(1)
		if p.retry {
			return nil // nothing was committed either way
		}
	}
	return err
}

type producerResult struct {
	p   *producer
	err error
}

// runProducers runs each producer in a goroutine of its own until it has
// written total messages; a cleanup stops them and waits for them.
func runProducers(t *testing.T, ps []*producer, total int, pace time.Duration) <-chan producerResult {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	results := make(chan producerResult, len(ps))
	for _, p := range ps {
		wg.Go(func() { results <- producerResult{p, p.run(ctx, total, pace)} })
	}
	return results
}

// waitProducers waits for the producers and merges what they wrote.
func waitProducers(t *testing.T, results <-chan producerResult) (written, rolledBack map[string]sent, failures int64) {
	t.Helper()
	written, rolledBack = map[string]sent{}, map[string]sent{}
	for range cap(results) {
		select {
		case r := <-results:
			if r.err != nil {
				t.Fatal(r.err)
			}
			maps.Copy(written, r.p.written)
			maps.Copy(rolledBack, r.p.rolledBack)
			failures += r.p.failures.Load()
		case <-time.After(time.Minute):
			t.Fatal("the producers did not finish within a minute")
		}
	}
	return written, rolledBack, failures
}

// groupView reads the state of a group on a log of its own straight
// from the log's tables.
type groupView struct {
	t                   *testing.T
	tdb                 *testDB
	db                  *sql.DB
	table, topic, group string
}

// newGroupView makes a log on db, and names a topic and a group on it.
func newGroupView(t *testing.T, tdb *testDB, db *sql.DB) groupView {
	return groupView{t: t, tdb: tdb, db: db, table: newLog(t, tdb, db), topic: drivertest.Name(t, "t"), group: drivertest.Name(t, "g")}
}

// owners returns the owner of each owned partition.
func (g groupView) owners() map[int]string {
	g.t.Helper()
	out := map[int]string{}
	g.query(func(rs *sql.Rows) error {
		var p int
		var owner sql.NullString
		if err := rs.Scan(&p, &owner); err != nil {
			return err
		}
		if owner.Valid {
			out[p] = owner.String
		}
		return nil
	}, "SELECT part, owner FROM "+g.tdb.Quote(g.table+"_offsets")+" WHERE grp = "+ph(g.tdb.D, 1)+" AND topic = "+ph(g.tdb.D, 2), g.group, g.topic)
	return out
}

// positions returns the group's committed position of each partition.
func (g groupView) positions() map[int]int64 {
	g.t.Helper()
	out := map[int]int64{}
	g.query(func(rs *sql.Rows) error {
		var p int
		var pos int64
		err := rs.Scan(&p, &pos)
		out[p] = pos
		return err
	}, "SELECT part, pos FROM "+g.tdb.Quote(g.table+"_offsets")+" WHERE grp = "+ph(g.tdb.D, 1)+" AND topic = "+ph(g.tdb.D, 2), g.group, g.topic)
	return out
}

// heads returns the newest readable position of each partition.
func (g groupView) heads() map[int]int64 {
	g.t.Helper()
	pos := posColumn(g.tdb.D)
	out := map[int]int64{}
	g.query(func(rs *sql.Rows) error {
		var p int
		var head int64
		err := rs.Scan(&p, &head)
		out[p] = head
		return err
	}, "SELECT part, MAX("+pos+") FROM "+g.tdb.Quote(g.table)+" WHERE topic = "+ph(g.tdb.D, 1)+" AND "+pos+" IS NOT NULL GROUP BY part", g.topic)
	return out
}

// lag counts the rows the group has not committed past, and the rows
// not sequenced yet; -1 when the database cannot tell.
func (g groupView) lag() int64 {
	pos := posColumn(g.tdb.D)
	var n int64
	err := g.db.QueryRow("SELECT COUNT(*) FROM "+g.tdb.Quote(g.table)+" l JOIN "+g.tdb.Quote(g.table+"_offsets")+" o ON o.grp = "+ph(g.tdb.D, 1)+
		" AND o.topic = l.topic AND o.part = l.part WHERE l.topic = "+ph(g.tdb.D, 2)+" AND (l."+pos+" IS NULL OR l."+pos+" > o.pos)",
		g.group, g.topic).Scan(&n)
	if err != nil {
		return -1
	}
	return n
}

func (g groupView) query(row func(*sql.Rows) error, query string, args ...any) {
	g.t.Helper()
	rs, err := g.db.Query(query, args...)
	if err != nil {
		g.t.Fatal(err)
	}
	defer rs.Close()
	for rs.Next() {
		if err := row(rs); err != nil {
			g.t.Fatal(err)
		}
	}
	if err := rs.Err(); err != nil {
		g.t.Fatal(err)
	}
}

// posColumn is the log's column that positions count in.
func posColumn(d sqldriver.Dialect) string {
	if d == sqldriver.SQLite {
		return "id"
	}
	return "seq"
}

// ph returns the dialect's i-th (1-based) bind placeholder.
func ph(d sqldriver.Dialect, i int) string {
	if d == sqldriver.Postgres {
		return "$" + strconv.Itoa(i)
	}
	return "?"
}
