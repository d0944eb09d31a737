package outbox_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/outbox"
)

// relayChildEnv holds, in a child process of TestDelayedSurvivesRelayKill,
// the relay it runs (relayChildConfig as JSON).
const relayChildEnv = "HERALD_OUTBOX_RELAY_CHILD"

type relayChildConfig struct {
	Dialect outbox.Dialect
	Driver  string // database/sql driver name
	DSN     string
	Table   string
	Results string // the file the target appends a line to per message
}

// fileTarget appends a line per message to a file, one write per Write,
// so that what it acknowledged survives the process: "id due at", due
// the message's data (its due time, Unix ns, or 0: the relay forwards it
// without herald-deliver-at), at when the target was given it.
type fileTarget struct {
	mu sync.Mutex
	f  *os.File
}

func (ft *fileTarget) Write(ctx context.Context, msgs []*herald.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var b strings.Builder
	now := time.Now().UnixNano()
	for _, m := range msgs {
		fmt.Fprintf(&b, "%s %s %d\n", m.ID, m.Data, now)
	}
	ft.mu.Lock()
	defer ft.mu.Unlock()
	_, err := ft.f.WriteString(b.String())
	return err
}

// runRelayChild runs a relay into a fileTarget, says "ready" and relays
// until it is killed or its standard input ends.
func runRelayChild() int {
	var cfg relayChildConfig
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "relay child:", err)
		return 2
	}
	if err := json.Unmarshal([]byte(os.Getenv(relayChildEnv)), &cfg); err != nil {
		return fail(err)
	}
	db, err := sql.Open(cfg.Driver, cfg.DSN)
	if err != nil {
		return fail(err)
	}
	db.SetMaxOpenConns(4)
	f, err := os.OpenFile(cfg.Results, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fail(err)
	}
	r, err := outbox.NewRelay(db, cfg.Dialect, cfg.Table, &fileTarget{f: f},
		outbox.WithBackoff(5*time.Millisecond, 50*time.Millisecond),
		outbox.WithPollInterval(time.Millisecond, 20*time.Millisecond),
		outbox.WithLockRetryInterval(20*time.Millisecond),
		outbox.WithBatchSize(16),
		outbox.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		return fail(err)
	}
	go func() {
		if err := r.Run(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "relay child:", err)
		}
	}()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// arrival is one line of the results file.
type arrival struct {
	id  string
	due int64 // Unix ns; 0 for an undelayed message
	at  int64 // Unix ns
}

func readArrivals(t *testing.T, path string) []arrival {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []arrival
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			t.Fatalf("results line %q: want id, due and time", sc.Text())
		}
		due, err1 := strconv.ParseInt(fields[1], 10, 64)
		at, err2 := strconv.ParseInt(fields[2], 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("results line %q: %v %v", sc.Text(), err1, err2)
		}
		out = append(out, arrival{fields[0], due, at})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDelayedSurvivesRelayKill writes delayed rows due over three seconds
// beside undelayed ones, runs the relay in a child process and kills it
// with SIGKILL three times at random points while rows come due (in the
// due-row move, in a forward, between them), then lets a last child relay
// the rest: every message reaches the target, none before it is due, the
// first copies of each key in order, and the outbox empties. A forward the
// kill cut after the target took it is sent again (at-least-once); the
// test counts those.
func TestDelayedSurvivesRelayKill(t *testing.T) {
	if os.Getenv(relayChildEnv) != "" {
		os.Exit(runRelayChild())
	}
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		const n, keys = 600, 8
		start := time.Now().Add(time.Second)
		var msgs []*herald.Message
		for i := range n {
			m := seqMsg("orders", "k"+strconv.Itoa(i%keys), i/keys)
			due := int64(0)
			if i%4 != 0 { // keys k0 and k4 undelayed, the others delayed in due order
				d := start.Add(time.Duration(i) * 5 * time.Millisecond)
				m.SetDeliverAt(d)
				due = d.UnixNano()
			}
			m.Data = []byte(strconv.FormatInt(due, 10))
			msgs = append(msgs, m)
		}
		writeTx(t, db, w, msgs...)
		cfg := relayChildConfig{Dialect: tdb.D, Driver: tdb.Driver, DSN: tdb.DSN, Table: table,
			Results: filepath.Join(t.TempDir(), "results")}
		for round := range 3 {
			child := startRelayChild(t, cfg)
			time.Sleep(time.Duration(300+rand.IntN(700)) * time.Millisecond)
			if err := child.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			_ = child.Wait()
			t.Logf("round %d: killed the relay with %d of %d rows in the outbox", round+1, countRows(t, tdb, db, table), n)
		}
		if countRows(t, tdb, db, table) == 0 {
			t.Fatal("the outbox was empty after the kills; the test proves nothing")
		}
		startRelayChild(t, cfg)
		eventually(t, "the outbox to empty", func() bool { return countRows(t, tdb, db, table) == 0 })
		checkArrivals(t, readArrivals(t, cfg.Results), msgs)
	})
}

func startRelayChild(t *testing.T, cfg relayChildConfig) *exec.Cmd {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return drivertest.StartReadyChild(t, "^TestDelayedSurvivesRelayKill$", relayChildEnv+"="+string(b))
}

// checkArrivals: every message of msgs arrived, none before it was due,
// and the first copies of each key in sequence order.
func checkArrivals(t *testing.T, got []arrival, msgs []*herald.Message) {
	t.Helper()
	first := map[string]arrival{}
	var order []string
	for _, a := range got {
		if _, ok := first[a.id]; !ok {
			first[a.id] = a
			order = append(order, a.id)
		}
		if a.at < a.due {
			t.Errorf("%s forwarded %v before it was due", a.id, time.Duration(a.due-a.at))
		}
	}
	lost := 0
	for _, m := range msgs {
		if _, ok := first[m.ID]; !ok {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d messages lost", lost, len(msgs))
	}
	last := map[string]int{}
	for _, id := range order {
		key, seq, _ := strings.Cut(id, "-")
		s, _ := strconv.Atoi(seq)
		if prev, ok := last[key]; ok && s < prev {
			t.Errorf("key %s: %s arrived after seq %d", key, id, prev)
		}
		last[key] = s
	}
	t.Logf("%d messages, %d arrivals: %d lost, %d sent again after a kill", len(msgs), len(got), lost, len(got)-len(first))
}
