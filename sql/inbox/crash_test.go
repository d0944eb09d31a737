package inbox_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/sql/inbox"
	"github.com/heraldbus/herald/sql/internal/sqltest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// crashChildEnv makes the test binary run runCrashChild instead of the
// tests; its value is the child's crashConfig in JSON.
const crashChildEnv = "HERALD_INBOX_TEST_CRASH_CHILD"

// The crash test's sizes: crashMessages keyed messages are written while
// crashMembers consumer processes handle them as one group; crashKills
// of them are killed in turn, each replaced at once.
const (
	crashMessages = 3000
	// crashMessagesSlow is the count on SQLite under the race detector,
	// which slows modernc.org/sqlite (C translated to Go) about sevenfold.
	crashMessagesSlow = 1000
	crashKeys         = 40
	crashMembers      = 3
	crashKills        = 6
	crashLease        = 2 * time.Second
)

// How a consumer dies: killed by the parent at a random moment; by its
// own hand inside a handler, after the effect and the follow-up event
// and before the commit; or right after the commit, before the
// acknowledgment.
const (
	killRandom      = "random"
	killInTx        = "in-tx"
	killAfterCommit = "after-commit"
)

var killModes = [...]string{killRandom, killInTx, killAfterCommit}

// crashConfig tells a child where everything is.
type crashConfig struct {
	Dialect  inbox.Dialect
	Driver   string // database/sql driver name
	DSN      string
	Log      string // the SQL driver's log table: the transport
	Inbox    string // the inbox table
	Effects  string // the effects table
	Topic    string // what the consumers read
	FollowUp string // where their handler publishes, in its transaction
	Group    string
	Results  string // the file of the children's records
	Name     string
}

// TestCrashConsumersKilled is the inbox's promise under fire: consumers
// in processes of their own (this test binary again) handle messages
// from the SQL driver's log, each handler inserting an effect row and
// publishing a follow-up event through the same driver in the inbox's
// transaction, while they are killed with SIGKILL one after another: at
// random moments, inside the transaction, and between the commit and the
// acknowledgment. At the end every message has exactly one effect row,
// one follow-up event and one mark: nothing lost, nothing doubled. The
// children's records show that the kills hit where they were meant to:
// a message whose handler died in its transaction ran again, one killed
// after its commit was delivered again and skipped.
func TestCrashConsumersKilled(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	forEachDialect(t, testCrash)
}

// crashCount is how many messages the crash test writes on d.
func crashCount(d inbox.Dialect) int {
	if d == inbox.SQLite && raceDetector {
		return crashMessagesSlow
	}
	return crashMessages
}

func testCrash(t *testing.T, tdb *testDB) {
	ctx := context.Background()
	total := crashCount(tdb.D)
	db := tdb.Open(t)
	logTable := newLog(t, tdb, db)
	ib := newInbox(t, tdb, db)
	eff := newEffects(t, tdb, db)
	dir := t.TempDir()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(uint64(seed), 1))
	base := crashConfig{
		Dialect: tdb.D, Driver: tdb.Driver, DSN: tdb.DSN, Log: logTable, Inbox: ib.Table(), Effects: eff.table,
		Topic: drivertest.Name(t, "t"), FollowUp: drivertest.Name(t, "f"), Group: drivertest.Name(t, "g"),
		Results: filepath.Join(dir, "records"),
	}
	began := time.Now()
	var live []*sqltest.Child
	started := 0
	start := func() {
		started++
		cfg := base
		cfg.Name = fmt.Sprintf("c%d", started)
		env, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, sqltest.StartChild(t, dir, cfg.Name, "^TestCrashConsumersKilled$", crashChildEnv+"="+string(env)))
	}
	for range crashMembers {
		start()
	}

	drv, err := sqldriver.New(db, tdb.D, sqldriver.WithTable(logTable))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = drv.Close() })
	produced := make(chan error, 1)
	pctx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	pseed := rng.Uint64()
	go func() { produced <- produce(pctx, drv, base.Topic, total, pseed) }()

	var notes []string
	for i := range crashKills {
		time.Sleep(time.Duration(300+rng.IntN(700)) * time.Millisecond)
		k := rng.IntN(len(live))
		victim := live[k]
		mode := killModes[i%len(killModes)]
		how := mode
		if mode == killRandom {
			victim.Kill()
		} else {
			if _, err := victim.Stdin.WriteString(mode + "\n"); err != nil {
				t.Fatal(err)
			}
			select {
			case <-victim.Exited:
			case <-time.After(15 * time.Second):
				victim.Kill()
				how += " (nothing to handle: killed by the parent)"
			}
		}
		if !victim.Killed() {
			t.Fatalf("%s exited with %d, want killed by a signal", victim.Name, victim.Cmd.ProcessState.ExitCode())
		}
		notes = append(notes, victim.Name+" "+how)
		live = append(live[:k], live[k+1:]...)
		start()
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	t.Logf("kills done and messages written after %v", time.Since(began).Round(time.Millisecond))
	drivertest.Eventually(t, 2*time.Minute, "every message marked", func() bool {
		return countWhere(db, tdb, ib.Table(), "grp", base.Group) == total
	})
	t.Logf("all marked after %v", time.Since(began).Round(time.Millisecond))
	for _, c := range live {
		_ = c.Stdin.Close()
	}
	for _, c := range live {
		c.Stop(t, time.Minute)
	}

	// Every message's effect and follow-up exactly once.
	counts := eff.counts()
	followUps := groupCount(t, db, tdb, "SELECT message_id, COUNT(*) FROM "+tdb.Quote(logTable)+" WHERE topic = "+ph(tdb, 1)+" GROUP BY message_id", base.FollowUp)
	var lost, doubled, strays []string
	for i := range total {
		id := msgID(i)
		if counts[id] == 0 || followUps["f-"+id] == 0 {
			lost = append(lost, id)
		}
		if counts[id] > 1 || followUps["f-"+id] > 1 {
			doubled = append(doubled, fmt.Sprintf("%s (%d effects, %d follow-ups)", id, counts[id], followUps["f-"+id]))
		}
		delete(counts, id)
		delete(followUps, "f-"+id)
	}
	for id := range counts {
		strays = append(strays, id)
	}
	for id := range followUps {
		strays = append(strays, id)
	}
	if len(lost)+len(doubled)+len(strays) > 0 {
		t.Errorf("%d lost: %v\n%d doubled: %v\n%d strays: %v", len(lost), head(lost), len(doubled), head(doubled), len(strays), head(strays))
	}
	if n := countWhere(db, tdb, ib.Table(), "grp", base.Group); n != total {
		t.Errorf("%d marks, want %d", n, total)
	}

	// The kills hit where they were meant to.
	recs := readRecords(t, base.Results)
	runs, dups := map[string]int{}, map[string]int{}
	totalRuns, totalDups := 0, 0
	for _, r := range recs {
		switch r.kind {
		case "run":
			runs[r.id]++
			totalRuns++
		case "dup":
			dups[r.id]++
			totalDups++
		}
	}
	for _, r := range recs {
		switch {
		case r.kind == killInTx && runs[r.id] < 2:
			t.Errorf("%s died in the transaction of %s, which did not run again", r.child, r.id)
		case r.kind == killAfterCommit && dups[r.id] < 1:
			t.Errorf("%s died after committing %s, which was not delivered again and skipped", r.child, r.id)
		}
	}
	t.Logf("%s: %d messages, %d effects and %d follow-ups each exactly once (%d lost, %d doubled); %d handler runs (%d rolled back by kills or errors), %d duplicate deliveries skipped; %d consumers killed: %s",
		tdb.D, total, total, total, len(lost), len(doubled), totalRuns, totalRuns-total, totalDups, crashKills, strings.Join(notes, ", "))
}

func msgID(i int) string { return fmt.Sprintf("m-%05d", i) }

// produce writes total messages in batches of 1 to 30, paced over
// about six seconds, so that they arrive while consumers are killed.
func produce(ctx context.Context, drv *sqldriver.Driver, topic string, total int, seed uint64) error {
	rng := mrand.New(mrand.NewPCG(seed, 2))
	pace := 6 * time.Second * 15 / time.Duration(total) // per batch of 15 on average
	for i := 0; i < total; {
		n := min(1+rng.IntN(30), total-i)
		msgs := make([]*herald.Message, n)
		for j := range msgs {
			id := msgID(i + j)
			msgs[j] = &herald.Message{ID: id, Topic: topic, Key: fmt.Sprintf("k%02d", rng.IntN(crashKeys)), Data: []byte(id)}
		}
		if err := drv.Write(ctx, msgs); err != nil {
			return fmt.Errorf("produce: %w", err)
		}
		i += n
		if !backoff.Sleep(ctx, time.Duration(rng.Int64N(int64(2*pace)))) {
			return ctx.Err()
		}
	}
	return nil
}

// newLog makes an SQL driver log of its own, migrated, and drops its
// tables when t ends.
func newLog(t testing.TB, tdb *testDB, db *sql.DB) string {
	t.Helper()
	name := "hl_" + strings.ToLower(rand.Text()[:10])
	drv, err := sqldriver.New(db, tdb.D, sqldriver.WithTable(name))
	if err != nil {
		t.Fatal(err)
	}
	if err := drv.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, suffix := range []string{"", "_offsets", "_members", "_meta", "_redriven"} {
			if _, err := db.Exec("DROP TABLE IF EXISTS " + tdb.Quote(name+suffix)); err != nil {
				t.Errorf("drop %s%s: %v", name, suffix, err)
			}
		}
	})
	return name
}

func countWhere(db *sql.DB, tdb *testDB, table, column, value string) int {
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM "+tdb.Quote(table)+" WHERE "+column+" = "+ph(tdb, 1), value).Scan(&n); err != nil {
		return -1
	}
	return n
}

func groupCount(t testing.TB, db *sql.DB, tdb *testDB, query string, args ...any) map[string]int {
	t.Helper()
	rs, err := db.Query(query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := map[string]int{}
	for rs.Next() {
		var id string
		var n int
		if err := rs.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = n
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func head(s []string) []string { return s[:min(len(s), 10)] }

// record is one line of the children's records: a handler run ("run"),
// a delivery skipped as a duplicate ("dup"), or a child about to kill
// itself (killInTx, killAfterCommit) with the message it was handling.
type record struct{ kind, id, child string }

// appendRecord appends a record's line, written with one write(2) on a
// file opened with O_APPEND: the kernel keeps each whole, and a SIGKILL
// does not lose what was written. The line starts with a newline and
// ends with "end", so a torn one cannot pass for a record.
func appendRecord(f *os.File, r record) error {
	_, err := fmt.Fprintf(f, "\n%s %s %s end\n", r.kind, r.id, r.child)
	return err
}

func readRecords(t testing.TB, path string) []record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []record
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) == 4 && f[3] == "end" {
			out = append(out, record{f[0], f[1], f[2]})
		}
	}
	return out
}

type ranKey struct{}

// crashConcurrency is a child's handler concurrency: 4, and 1 on SQLite,
// where the handlers' transactions take the file's one write lock in
// turn and more of them only wait on each other (and on the busy
// timeout's sleeps).
func crashConcurrency(d inbox.Dialect) int {
	if d == inbox.SQLite {
		return 1
	}
	return 4
}

// runCrashChild is one consumer in a process of its own: a Bus on the SQL
// driver whose handler runs in the inbox's transaction, inserts the
// effect and publishes the follow-up with the handler's context (so in
// the transaction). It reads commands from its standard input: killInTx
// and killAfterCommit arm a suicide at that point of the next handled
// message; the end of its input shuts it down gracefully.
func runCrashChild() int {
	var cfg crashConfig
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
	db.SetMaxOpenConns(8) // 4 handlers, the pump and its heartbeats, as the SQL driver's crash test
	results, err := os.OpenFile(cfg.Results, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fail(err)
	}
	defer results.Close()
	record := func(kind, id string) {
		if err := appendRecord(results, record{kind, id, cfg.Name}); err != nil {
			logf("record: %v", err)
		}
	}
	drv, err := sqldriver.New(db, cfg.Dialect, sqldriver.WithTable(cfg.Log), sqldriver.WithLease(crashLease),
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
	ib, err := inbox.New(db, cfg.Dialect, inbox.WithTable(cfg.Inbox),
		inbox.WithOnDuplicate(func(_ string, m *herald.Message) { record("dup", m.ID) }))
	if err != nil {
		return fail(err)
	}
	var die atomic.Value // "", killInTx or killAfterCommit
	die.Store("")
	insertEffect := "INSERT INTO " + cfg.Dialect.Quote(cfg.Effects) + " (msg, grp) VALUES (" + map[bool]string{true: "$1, $2", false: "?, ?"}[cfg.Dialect == inbox.Postgres] + ")"
	hf, err := ib.Handler(cfg.Group, func(ctx context.Context, tx *sql.Tx, m *herald.Message) error {
		*ctx.Value(ranKey{}).(*bool) = true
		record("run", m.ID)
		if _, err := tx.ExecContext(ctx, insertEffect, m.ID, cfg.Group); err != nil {
			return err
		}
		if err := bus.PublishMessages(ctx, &herald.Message{ID: "f-" + m.ID, Topic: cfg.FollowUp, Key: m.Key, Data: m.Data}); err != nil {
			return err
		}
		if die.CompareAndSwap(killInTx, "") {
			record(killInTx, m.ID)
			sqltest.KillSelf()
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	err = bus.Handle(cfg.Topic, cfg.Group, func(ctx context.Context, m *herald.Message) error {
		ran := new(bool)
		if err := hf(context.WithValue(ctx, ranKey{}, ran), m); err != nil {
			return err
		}
		if *ran && die.CompareAndSwap(killAfterCommit, "") {
			record(killAfterCommit, m.ID)
			sqltest.KillSelf()
		}
		return nil
	}, herald.WithConcurrency(crashConcurrency(cfg.Dialect)))
	if err != nil {
		return fail(err)
	}
	if err := bus.Start(context.Background()); err != nil {
		return fail(err)
	}
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		if cmd := lines.Text(); cmd == killInTx || cmd == killAfterCommit {
			die.Store(cmd)
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
