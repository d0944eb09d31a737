package outbox_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqltest"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/outbox"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// liveness bounds every wait; it is never a performance target.
const liveness = 60 * time.Second

// testDB is one database under test (sqltest.DB; pools of 4 connections).
type testDB = sqltest.DB

func newTestDB(t testing.TB, d outbox.Dialect) *testDB {
	t.Helper()
	tdb := sqltest.New(t, d)
	tdb.MaxOpen = 4
	return tdb
}

var allDialects = sqltest.Dialects

func forEachDialect(t *testing.T, f func(t *testing.T, tdb *testDB)) {
	for _, d := range allDialects {
		t.Run(d.String(), func(t *testing.T) { f(t, newTestDB(t, d)) })
	}
}

// migrateTable creates an outbox table with a name of its own (tests of
// other packages and agents share the servers) and drops it, with its
// companions, when t ends.
func migrateTable(t testing.TB, tdb *testDB, db *sql.DB) string {
	t.Helper()
	name := tableName(t, tdb, db)
	if err := outbox.Migrate(context.Background(), db, tdb.D, name); err != nil {
		t.Fatal(err)
	}
	return name
}

// tableName returns a new table name and drops the table and its
// companions when t ends.
func tableName(t testing.TB, tdb *testDB, db *sql.DB) string {
	name := "hx_" + strings.ToLower(rand.Text()[:12])
	t.Cleanup(func() {
		for _, suffix := range []string{"", "_quarantine", "_sent"} {
			if _, err := db.Exec("DROP TABLE IF EXISTS " + tdb.Quote(name+suffix)); err != nil {
				t.Errorf("drop %s%s: %v", name, suffix, err)
			}
		}
	})
	return name
}

func countRows(t testing.TB, tdb *testDB, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM " + tdb.Quote(table)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// writeTx writes msgs through w in one transaction and commits it.
func writeTx(t testing.TB, db *sql.DB, w *outbox.Writer, msgs ...*herald.Message) {
	t.Helper()
	if err := writeInTx(db, w, msgs...); err != nil {
		t.Fatal(err)
	}
}

// writeInTx is writeTx for goroutines other than the test's: it returns
// the error.
func writeInTx(db *sql.DB, w *outbox.Writer, msgs ...*herald.Message) error {
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := w.Write(outbox.WithTx(ctx, tx), msgs); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// seqMsg is message seq of key on topic; its ID names both.
func seqMsg(topic, key string, seq int) *herald.Message {
	return &herald.Message{
		ID:          fmt.Sprintf("%s-%d", key, seq),
		Topic:       topic,
		Key:         key,
		Headers:     herald.Headers{"seq": strconv.Itoa(seq)},
		ContentType: "text/plain",
		Data:        []byte(strconv.Itoa(seq)),
	}
}

func newWriter(t testing.TB, d outbox.Dialect, table string, opts ...outbox.WriterOption) *outbox.Writer {
	t.Helper()
	w, err := outbox.NewWriter(d, table, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// recorder is a target Writer that keeps what it was given, in order. Its
// fail hook, when set, runs first and may refuse a write; onWrite runs
// after an accepted one.
type recorder struct {
	fail    func(msgs []*herald.Message) error
	onWrite func(msgs []*herald.Message)

	mu     sync.Mutex
	got    []*herald.Message
	writes int
}

func (rc *recorder) Write(ctx context.Context, msgs []*herald.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if rc.fail != nil {
		if err := rc.fail(msgs); err != nil {
			return err
		}
	}
	rc.mu.Lock()
	rc.got = append(rc.got, msgs...)
	rc.writes++
	rc.mu.Unlock()
	if rc.onWrite != nil {
		rc.onWrite(msgs)
	}
	return nil
}

func (rc *recorder) messages() []*herald.Message {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]*herald.Message(nil), rc.got...)
}

// distinct returns how many different message IDs were delivered.
func (rc *recorder) distinct() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	seen := make(map[string]bool, len(rc.got))
	for _, m := range rc.got {
		seen[m.ID] = true
	}
	return len(seen)
}

// checkKeyOrder checks at-least-once per-key order in a delivery log: the
// first delivery of each message of a key comes in seq order, starting at
// first, with no gap; redeliveries (at-least-once) may repeat earlier
// messages. It returns the number of distinct messages per key.
func checkKeyOrder(t testing.TB, got []*herald.Message, first int) map[string]int {
	t.Helper()
	next := make(map[string]int)
	seen := make(map[string]bool)
	for _, m := range got {
		if seen[m.ID] {
			continue
		}
		seen[m.ID] = true
		seq, err := strconv.Atoi(m.Headers.Get("seq"))
		if err != nil {
			t.Fatalf("message %s: bad seq header: %v", m.ID, err)
		}
		want, ok := next[m.Key]
		if !ok {
			want = first
		}
		if seq != want {
			t.Fatalf("key %q: first delivery of seq %d, want %d next (message %s)", m.Key, seq, want, m.ID)
		}
		next[m.Key] = seq + 1
	}
	counts := make(map[string]int, len(next))
	for k, n := range next {
		counts[k] = n - first
	}
	return counts
}

// eventually is the toolkit's, bounded by liveness.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	drivertest.Eventually(t, liveness, what, cond)
}

// testLogger logs warnings and errors to t, for failing tests.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = tWriter{}

// fastOptions make relays react in milliseconds, so tests stay short.
func fastOptions(t testing.TB) []outbox.RelayOption {
	return []outbox.RelayOption{
		outbox.WithBackoff(5*time.Millisecond, 50*time.Millisecond),
		outbox.WithPollInterval(5*time.Millisecond, 50*time.Millisecond),
		outbox.WithLockRetryInterval(20 * time.Millisecond),
		outbox.WithWriteTimeout(10 * time.Second),
		outbox.WithLogger(testLogger(t)),
	}
}

// runningRelay is a relay running in a goroutine of the test.
type runningRelay struct {
	*outbox.Relay
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startRelay runs a relay with fastOptions (then opts) until kill or the
// end of the test.
func startRelay(t testing.TB, db *sql.DB, d outbox.Dialect, table string, target herald.Writer, opts ...outbox.RelayOption) *runningRelay {
	t.Helper()
	r, err := outbox.NewRelay(db, d, table, target, append(fastOptions(t), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := &runningRelay{Relay: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	t.Cleanup(func() { rr.kill(t) })
	return rr
}

// kill cancels the relay's context (a hard stop) and waits for Run.
func (rr *runningRelay) kill(t testing.TB) {
	rr.once.Do(func() {
		rr.cancel()
		if err := <-rr.done; err != nil {
			t.Errorf("relay Run: %v", err)
		}
	})
}

// shutdown stops the relay gracefully.
func (rr *runningRelay) shutdown(t testing.TB) {
	rr.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), liveness)
		defer cancel()
		if err := rr.Shutdown(ctx); err != nil {
			t.Errorf("relay Shutdown: %v", err)
		}
		if err := <-rr.done; err != nil {
			t.Errorf("relay Run: %v", err)
		}
		rr.cancel()
	})
}
