package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memtest"
	"github.com/heraldbus/herald/sql/outbox"
)

// timedRecorder is a target that notes when each message arrived.
type timedRecorder struct {
	mu  sync.Mutex
	got []timedMsg
}

type timedMsg struct {
	m  *herald.Message
	at time.Time
}

func (tr *timedRecorder) Write(ctx context.Context, msgs []*herald.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, m := range msgs {
		tr.got = append(tr.got, timedMsg{m, now})
	}
	return nil
}

func (tr *timedRecorder) all() []timedMsg {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]timedMsg(nil), tr.got...)
}

// first returns the first arrival of the message with id.
func (tr *timedRecorder) first(id string) (timedMsg, bool) {
	for _, g := range tr.all() {
		if g.m.ID == id {
			return g, true
		}
	}
	return timedMsg{}, false
}

func (tr *timedRecorder) distinct() int {
	seen := map[string]bool{}
	for _, g := range tr.all() {
		seen[g.m.ID] = true
	}
	return len(seen)
}

// delayedMsg is seqMsg due at due.
func delayedMsg(topic, key string, seq int, due time.Time) *herald.Message {
	m := seqMsg(topic, key, seq)
	m.SetDeliverAt(due)
	return m
}

// TestDelayedPublishInTransaction publishes a delayed event through a Bus
// in a transaction: the outbox takes it (it is a DelayedWriter), the
// relay forwards it no earlier than its due time, and then soon, without
// HeaderDeliverAt; an event published after it in the same transaction,
// undelayed, is not held back.
func TestDelayedPublishInTransaction(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		if p := w.DelayPrecision(); p != outbox.DefaultMaxPollInterval {
			t.Errorf("DelayPrecision %v, want the relay's default max poll interval %v", p, outbox.DefaultMaxPollInterval)
		}
		bus, err := herald.NewBus(memtest.Broker(t), herald.WithOutbox(w))
		if err != nil {
			t.Fatal(err)
		}
		type Reminder struct{ N int }
		if err := herald.Register[Reminder](bus, "reminders"); err != nil {
			t.Fatal(err)
		}
		tr := &timedRecorder{}
		startRelay(t, db, tdb.D, table, tr)

		ctx := context.Background()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		txCtx := outbox.WithTx(ctx, tx)
		due := time.Now().Add(2 * time.Second)
		if err := bus.Publish(herald.DeliverAt(txCtx, due), Reminder{1}); err != nil {
			t.Fatalf("delayed publish in a transaction: %v", err)
		}
		if err := bus.Publish(txCtx, Reminder{2}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the undelayed event", func() bool { return tr.distinct() >= 1 })
		if g := tr.all(); len(g) != 1 || !strings.Contains(string(g[0].m.Data), `"N":2`) {
			t.Fatalf("first forwarded: %d messages (%v), want only the undelayed one", len(g), g)
		}
		eventually(t, "the delayed event", func() bool { return tr.distinct() == 2 })
		var got timedMsg
		for _, g := range tr.all() {
			if strings.Contains(string(g.m.Data), `"N":1`) {
				got = g
			}
		}
		if got.at.Before(due) {
			t.Errorf("delayed event forwarded %v before it was due", due.Sub(got.at))
		}
		t.Logf("forwarded %v after its due time", got.at.Sub(due))
		if _, ok := got.m.Headers[herald.HeaderDeliverAt]; ok {
			t.Errorf("forwarded message still carries %s", herald.HeaderDeliverAt)
		}
		if got.m.Headers.Get(herald.HeaderEvent) == "" {
			t.Errorf("forwarded message lost its other headers: %v", got.m.Headers)
		}
		eventually(t, "the outbox to empty", func() bool { return countRows(t, tdb, db, table) == 0 })
	})
}

// TestDueRowsNotHeldBack: a row that is not due, at the head of the table,
// holds back neither the rows behind it (even with a batch of one row) nor
// a later row of its own key (an undelayed row overtakes a delayed one).
func TestDueRowsNotHeldBack(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		later := delayedMsg("orders", "k", 0, time.Now().Add(time.Hour))
		writeTx(t, db, w, later)
		// A row due a moment ago counts as not delayed.
		past := delayedMsg("orders", "k", 1, time.Now().Add(-time.Second))
		writeTx(t, db, w, past, seqMsg("orders", "k", 2), seqMsg("orders", "other", 0))
		tr := &timedRecorder{}
		startRelay(t, db, tdb.D, table, tr, outbox.WithBatchSize(1))
		eventually(t, "the rows behind the delayed one", func() bool { return tr.distinct() == 3 })
		for _, g := range tr.all() {
			if g.m.ID == later.ID {
				t.Fatalf("row due in an hour forwarded")
			}
		}
		if g, _ := tr.first(past.ID); g.m != nil && g.m.Headers[herald.HeaderDeliverAt] != "" {
			t.Errorf("a past %s was forwarded", herald.HeaderDeliverAt)
		}
		// The target has them; their rows go once the round is settled.
		eventually(t, "only the delayed row left", func() bool { return countRows(t, tdb, db, table) == 1 })
		r, err := outbox.NewRelay(db, tdb.D, table, tr)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := r.Stats(context.Background()); err != nil || st.Backlog != 0 || st.Delayed != 1 || st.OldestAge != 0 {
			t.Errorf("Stats: backlog %d, delayed %d, oldest %v, err %v; want 0, 1, 0, nil", st.Backlog, st.Delayed, st.OldestAge, err)
		}
		if n := tr.distinct(); n != 3 {
			t.Errorf("%d messages forwarded, want 3", n)
		}
	})
}

// TestDelayedKeyInDueOrder: rows of one key due at different times are
// forwarded in due order, not write order, even when they are all due by
// the time the relay first looks (it was down).
func TestDelayedKeyInDueOrder(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		now := time.Now()
		// seq is the due order; the write order is 2, 0, 1.
		writeTx(t, db, w, delayedMsg("orders", "k", 2, now.Add(900*time.Millisecond)),
			delayedMsg("orders", "k", 0, now.Add(300*time.Millisecond)))
		writeTx(t, db, w, delayedMsg("orders", "k", 1, now.Add(600*time.Millisecond)))
		time.Sleep(time.Until(now.Add(time.Second)))
		rec := &recorder{}
		startRelay(t, db, tdb.D, table, rec)
		eventually(t, "the three rows", func() bool { return rec.distinct() == 3 })
		if n := checkKeyOrder(t, rec.messages(), 0)["k"]; n != 3 {
			t.Errorf("%d messages of k in order, want 3", n)
		}
	})
}

// TestDelayedRollback: a delayed message of a rolled-back transaction
// leaves no row and is never forwarded.
func TestDelayedRollback(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		ctx := context.Background()
		due := time.Now().Add(300 * time.Millisecond)
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(outbox.WithTx(ctx, tx), []*herald.Message{delayedMsg("orders", "k", 0, due)}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, tdb, db, table); n != 0 {
			t.Fatalf("%d rows after the rollback, want 0", n)
		}
		marker := delayedMsg("orders", "k", 1, due.Add(100*time.Millisecond))
		writeTx(t, db, w, marker)
		tr := &timedRecorder{}
		startRelay(t, db, tdb.D, table, tr)
		eventually(t, "the committed delayed row", func() bool { return tr.distinct() == 1 })
		for _, g := range tr.all() {
			if g.m.ID != marker.ID {
				t.Errorf("forwarded %s of a rolled-back transaction", g.m.ID)
			}
		}
	})
}

// TestDelayedBadValues: a malformed or too distant due time fails the
// whole Write with a typed error, and a Writer with delays off refuses a
// delayed message; nothing is inserted.
func TestDelayedBadValues(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		off := newWriter(t, tdb.D, table, outbox.WithDelayPrecision(0))
		if p := off.DelayPrecision(); p != 0 {
			t.Errorf("DelayPrecision with delays off: %v", p)
		}
		good := seqMsg("orders", "k", 0)
		malformed := seqMsg("orders", "k", 1)
		malformed.Headers[herald.HeaderDeliverAt] = "tomorrow"
		distant := delayedMsg("orders", "k", 2, time.Now().Add(2*herald.MaxDelay))
		soon := delayedMsg("orders", "k", 3, time.Now().Add(time.Minute))
		for _, c := range []struct {
			name string
			w    *outbox.Writer
			m    *herald.Message
			want error
		}{
			{"malformed", w, malformed, herald.ErrInvalidDelay},
			{"beyond MaxDelay", w, distant, herald.ErrInvalidDelay},
			{"delays off", off, soon, herald.ErrDelayNotSupported},
		} {
			err := writeInTx(db, c.w, good, c.m)
			var de *herald.DelayError
			if !errors.Is(err, c.want) || !errors.As(err, &de) || de.MessageID != c.m.ID {
				t.Errorf("%s: %v, want a *herald.DelayError for %s wrapping %v", c.name, err, c.m.ID, c.want)
			}
		}
		if n := countRows(t, tdb, db, table); n != 0 {
			t.Errorf("%d rows inserted by refused writes", n)
		}
		// The Publisher refuses a delayed publish to a Writer with delays
		// off before it reaches it.
		pub, err := herald.NewPublisher(off)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.PublishMessages(herald.DeliverAfter(outbox.WithTx(ctx, tx), time.Minute), seqMsg("orders", "k", 4)); !errors.Is(err, herald.ErrDelayNotSupported) {
			t.Errorf("Publisher to a Writer with delays off: %v, want herald.ErrDelayNotSupported", err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		// The caller's message keeps its header after a delayed write.
		writeTx(t, db, w, soon)
		if _, ok := soon.Headers[herald.HeaderDeliverAt]; !ok {
			t.Errorf("Write removed %s from the caller's message", herald.HeaderDeliverAt)
		}
	})
}

// v1Table creates an outbox table as SchemaVersion 1 did (before
// deliver_at), with one row in it.
func v1Table(t *testing.T, tdb *testDB, db *sql.DB) string {
	t.Helper()
	table := tableName(t, tdb, db)
	q := tdb.Quote(table)
	var ddl string
	switch tdb.D {
	case outbox.Postgres:
		ddl = `CREATE TABLE ` + q + ` (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	message_id TEXT NOT NULL, topic TEXT NOT NULL, msg_key TEXT NOT NULL DEFAULT '', headers JSON,
	content_type TEXT NOT NULL DEFAULT '', payload BYTEA, created_at TIMESTAMPTZ NOT NULL,
	attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)`
	case outbox.MySQL:
		ddl = `CREATE TABLE ` + q + ` (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
	message_id VARCHAR(255) NOT NULL, topic VARCHAR(200) NOT NULL, msg_key TEXT NOT NULL, headers JSON NULL,
	content_type VARCHAR(255) NOT NULL, payload LONGBLOB NULL, created_at DATETIME(6) NOT NULL,
	attempts INT NOT NULL DEFAULT 0, last_error TEXT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`
	default:
		ddl = `CREATE TABLE ` + q + ` (id INTEGER PRIMARY KEY AUTOINCREMENT,
	message_id TEXT NOT NULL, topic TEXT NOT NULL, msg_key TEXT NOT NULL DEFAULT '', headers TEXT,
	content_type TEXT NOT NULL DEFAULT '', payload BLOB, created_at INTEGER NOT NULL,
	attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)`
	}
	if _, err := db.Exec(ddl); err != nil {
		t.Fatal(err)
	}
	created := any(time.Now().UTC())
	if tdb.D == outbox.SQLite {
		created = time.Now().UnixMicro()
	}
	ph := "?, ?, ?, ?, ?, ?"
	if tdb.D == outbox.Postgres {
		ph = "$1, $2, $3, $4, $5, $6"
	}
	if _, err := db.Exec(`INSERT INTO `+q+` (message_id, topic, msg_key, content_type, payload, created_at) VALUES (`+ph+`)`,
		"old-0", "orders", "k", "text/plain", []byte("old"), created); err != nil {
		t.Fatal(err)
	}
	return table
}

// TestMigrateUpgradesV1: Migrate, run from several processes at once, adds
// deliver_at to an outbox table of version 1 and keeps its rows; delayed
// writes then work, and the old row is forwarded.
func TestMigrateUpgradesV1(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := v1Table(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		if err := writeInTx(db, w, seqMsg("orders", "k", 1)); err == nil {
			t.Fatal("write to a version 1 table: no error, want the missing deliver_at column")
		}
		r, err := outbox.NewRelay(db, tdb.D, table, &recorder{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Check(context.Background()); !errors.Is(err, outbox.ErrNoTable) {
			t.Errorf("Check of a version 1 table: %v, want outbox.ErrNoTable", err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range errs {
			pool := tdb.Open(t)
			wg.Go(func() { errs[i] = outbox.Migrate(context.Background(), pool, tdb.D, table) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("Migrate %d of a version 1 table: %v", i, err)
			}
		}
		if err := outbox.Migrate(context.Background(), db, tdb.D, table); err != nil {
			t.Fatalf("Migrate again: %v", err)
		}
		if n := countRows(t, tdb, db, table); n != 1 {
			t.Fatalf("%d rows after the upgrade, want the old one", n)
		}
		if err := r.Check(context.Background()); err != nil {
			t.Errorf("Check after the upgrade: %v", err)
		}
		writeTx(t, db, w, delayedMsg("orders", "k", 1, time.Now().Add(200*time.Millisecond)))
		rec := &recorder{}
		startRelay(t, db, tdb.D, table, rec)
		eventually(t, "the old and the delayed row", func() bool { return rec.distinct() == 2 })
		if got := rec.messages(); got[0].ID != "old-0" || string(got[0].Data) != "old" {
			t.Errorf("first forwarded %s %q, want the old row", got[0].ID, got[0].Data)
		}
	})
}

// TestSchemaUpgrade1To2ByHand: the exported upgrade, then Schema, run by
// hand on a version 1 table, as a migration tool would.
func TestSchemaUpgrade1To2ByHand(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := v1Table(t, tdb, db)
		up, err := outbox.SchemaUpgrade1To2(tdb.D, table)
		if err != nil {
			t.Fatal(err)
		}
		create, err := outbox.Schema(tdb.D, table)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range append(up, create...) {
			if _, err := db.Exec(st); err != nil {
				t.Fatalf("%s: %v", st, err)
			}
		}
		w := newWriter(t, tdb.D, table)
		writeTx(t, db, w, delayedMsg("orders", "k", 1, time.Now().Add(100*time.Millisecond)))
		rec := &recorder{}
		startRelay(t, db, tdb.D, table, rec)
		eventually(t, "both rows", func() bool { return rec.distinct() == 2 })
		if _, err := outbox.SchemaUpgrade1To2(tdb.D, "Bad"); !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("SchemaUpgrade1To2 of a bad name: %v", err)
		}
	})
}

// TestDelayedLateness measures how late delayed rows reach the target
// with the relay's default poll intervals: 60 rows, written one per
// transaction, due 0.5 to 2 s after their write. It asserts only that
// none is early (lateness follows the machine's load); the figures are
// logged (-v).
func TestDelayedLateness(t *testing.T) {
	if testing.Short() {
		t.Skip("takes seconds")
	}
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		tr := &timedRecorder{}
		r, err := outbox.NewRelay(db, tdb.D, table, tr, outbox.WithLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}()
		const n = 60
		dues := map[string]time.Time{}
		for i := range n {
			due := time.Now().Add(500*time.Millisecond + time.Duration(i*37%60)*25*time.Millisecond)
			m := delayedMsg("orders", "k"+strconv.Itoa(i%7), i, due)
			dues[m.ID] = due
			writeTx(t, db, w, m)
			time.Sleep(5 * time.Millisecond)
		}
		eventually(t, "every delayed row", func() bool { return tr.distinct() == n })
		var late []time.Duration
		for _, g := range tr.all() {
			d := g.at.Sub(dues[g.m.ID])
			if d < 0 {
				t.Errorf("%s forwarded %v early", g.m.ID, -d)
			}
			late = append(late, d)
		}
		slices.Sort(late)
		t.Logf("lateness over %d rows: p50 %v, p99 %v, max %v (precision %v)",
			len(late), late[len(late)/2], late[len(late)*99/100], late[len(late)-1], w.DelayPrecision())
	})
}

// TestMigrateUpgradesV2 (PostgreSQL): Migrate takes a version 2 table,
// its delayed rows at positive ids and its index of the rows not
// delayed, to version 3: the delayed rows get ids below zero in their
// order, the index is gone, and every row is forwarded, none early. A
// delayed row a version 2 writer adds after the upgrade (a positive id)
// is still forwarded when due. A Writer's delayed rows get ids below
// zero, in write order, and its other rows of the same batch do not.
func TestMigrateUpgradesV2(t *testing.T) {
	tdb := newTestDB(t, outbox.Postgres)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	q := tdb.Quote(table)
	ctx := context.Background()
	// Back to version 2: no sequence, the ready index, delayed rows at
	// positive ids (as a version 2 writer inserts them).
	due := time.Now().Add(700 * time.Millisecond).UnixMilli()
	for _, st := range []string{
		`DROP SEQUENCE ` + tdb.Quote(table+"_delayed_id_seq"),
		`CREATE INDEX ` + tdb.Quote(table+"_ready_idx") + ` ON ` + q + ` (id) WHERE deliver_at IS NULL`,
		`INSERT INTO ` + q + ` (message_id, topic, msg_key, content_type, payload, created_at, deliver_at) VALUES
		 ('v2-0', 'orders', 'k', '', 'a', now(), ` + strconv.FormatInt(due, 10) + `),
		 ('v2-1', 'orders', 'k', '', 'b', now(), ` + strconv.FormatInt(due, 10) + `),
		 ('v2-ready', 'orders', 'r', '', 'c', now(), NULL)`,
	} {
		if _, err := db.ExecContext(ctx, st); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
	r, err := outbox.NewRelay(db, tdb.D, table, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx); !errors.Is(err, outbox.ErrNoTable) {
		t.Errorf("Check of a version 2 table: %v, want outbox.ErrNoTable", err)
	}
	if err := outbox.Migrate(ctx, db, tdb.D, table); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Migrate(ctx, db, tdb.D, table); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	if err := r.Check(ctx); err != nil {
		t.Errorf("Check after the upgrade: %v", err)
	}
	ids := func(where string) string { // message ids in id order
		var got sql.NullString
		if err := db.QueryRowContext(ctx, `SELECT string_agg(message_id, ' ' ORDER BY id) FROM `+q+` WHERE `+where).Scan(&got); err != nil {
			t.Fatal(err)
		}
		return got.String
	}
	if got := ids("id < 0"); got != "v2-0 v2-1" {
		t.Errorf("rows below zero after the upgrade: %s, want the delayed ones in order", got)
	}
	var indexes int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_indexes WHERE indexname = $1`, table+"_ready_idx").Scan(&indexes); err != nil || indexes != 0 {
		t.Errorf("the ready index after the upgrade: %d (%v), want none", indexes, err)
	}
	// A version 2 writer, still running: a delayed row at a positive id.
	if _, err := db.ExecContext(ctx, `INSERT INTO `+q+` (message_id, topic, msg_key, content_type, payload, created_at, deliver_at)
		VALUES ('v2-late', 'orders', 'l', '', 'd', now(), `+strconv.FormatInt(due, 10)+`)`); err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, tdb.D, table)
	mixed := []*herald.Message{delayedMsg("orders", "w", 0, time.UnixMilli(due)), seqMsg("orders", "n", 0),
		delayedMsg("orders", "w", 1, time.UnixMilli(due))}
	writeTx(t, db, w, mixed...)
	if got := ids("id < 0"); got != "v2-0 v2-1 w-0 w-1" {
		t.Errorf("rows below zero after a mixed write: %s, want the Writer's delayed rows after the old ones", got)
	}
	rec := &timedRecorder{}
	startRelay(t, db, tdb.D, table, rec)
	eventually(t, "every row", func() bool { return rec.distinct() == 7 })
	for _, g := range rec.all() {
		if k := g.m.Key; (k == "k" || k == "l" || k == "w") && g.at.Before(time.UnixMilli(due)) {
			t.Errorf("%s forwarded %v before its due time", g.m.ID, time.UnixMilli(due).Sub(g.at))
		}
	}
}
