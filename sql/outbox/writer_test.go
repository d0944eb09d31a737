package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memtest"
	"github.com/heraldbus/herald/sql/outbox"
)

func TestValidateTable(t *testing.T) {
	for _, name := range []string{"outbox", "herald_outbox", "_x", "t1", strings.Repeat("a", outbox.MaxTableNameLength)} {
		if err := outbox.ValidateTable(name); err != nil {
			t.Errorf("ValidateTable(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{
		"", "Outbox", "1outbox", "out-box", "out box", "out.box", `out"box`, "out`box", "out;box",
		"outbox; DROP TABLE users", "ünïcode", strings.Repeat("a", outbox.MaxTableNameLength+1),
	} {
		err := outbox.ValidateTable(name)
		var ne *herald.NameError
		if !errors.Is(err, herald.ErrInvalidName) || !errors.As(err, &ne) || ne.Kind != "table" {
			t.Errorf("ValidateTable(%q) = %v, want a table NameError", name, err)
		}
	}
}

func TestInvalidTableRejectedEverywhere(t *testing.T) {
	tdb := newTestDB(t, outbox.SQLite)
	db := tdb.Open(t)
	const bad = `x"; DROP TABLE y; --`
	if err := outbox.Migrate(context.Background(), db, outbox.SQLite, bad); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Migrate: %v", err)
	}
	if _, err := outbox.NewWriter(outbox.SQLite, bad); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("NewWriter: %v", err)
	}
	if _, err := outbox.NewRelay(db, outbox.SQLite, bad, memtest.Broker(t)); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("NewRelay: %v", err)
	}
	if _, err := outbox.NewQuarantine(db, outbox.SQLite, bad); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("NewQuarantine: %v", err)
	}
	if _, err := outbox.NewWriter(outbox.Dialect(42), "outbox"); !errors.Is(err, outbox.ErrUnknownDialect) {
		t.Errorf("NewWriter with a bad dialect: %v", err)
	}
}

func TestParseDialect(t *testing.T) {
	for in, want := range map[string]outbox.Dialect{
		"postgres": outbox.Postgres, "PostgreSQL": outbox.Postgres, "pgx": outbox.Postgres,
		"mysql": outbox.MySQL, "mariadb": outbox.MySQL, "sqlite": outbox.SQLite, "sqlite3": outbox.SQLite,
	} {
		got, err := outbox.ParseDialect(in)
		if err != nil || got != want {
			t.Errorf("ParseDialect(%q) = %v, %v; want %v", in, got, err, want)
		}
		if again, err := outbox.ParseDialect(got.String()); err != nil || again != got {
			t.Errorf("ParseDialect(%v.String()) = %v, %v", got, again, err)
		}
	}
	if _, err := outbox.ParseDialect("oracle"); !errors.Is(err, outbox.ErrUnknownDialect) {
		t.Errorf("ParseDialect(oracle) = %v", err)
	}
}

// TestWriterRejectsBadInput checks that every refused write inserts
// nothing, and that no transaction means no insert at all.
func TestWriterRejectsBadInput(t *testing.T) {
	tdb := newTestDB(t, outbox.SQLite)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	w := newWriter(t, outbox.SQLite, table, outbox.WithMaxMessageBytes(16))
	ctx := context.Background()
	good := func() *herald.Message { return &herald.Message{ID: "ok", Topic: "orders", Data: []byte("x")} }

	if err := w.Write(ctx, []*herald.Message{good()}); !errors.Is(err, outbox.ErrNoTransaction) {
		t.Errorf("Write without a transaction = %v, want ErrNoTransaction", err)
	}
	if err := w.WriteTx(ctx, nil, []*herald.Message{good()}); !errors.Is(err, outbox.ErrNoTransaction) {
		t.Errorf("WriteTx(nil) = %v, want ErrNoTransaction", err)
	}
	if err := w.Write(ctx, nil); err != nil {
		t.Errorf("empty Write = %v, want nil", err)
	}

	cases := []struct {
		name string
		msg  *herald.Message
		want error
	}{
		{"nil message", nil, herald.ErrNilEvent},
		{"bad topic", &herald.Message{ID: "a", Topic: "no spaces"}, herald.ErrInvalidName},
		{"too large", &herald.Message{ID: "a", Topic: "orders", Data: make([]byte, 17)}, herald.ErrMessageTooLarge},
		{"too large by its headers", &herald.Message{ID: "a", Topic: "orders", Headers: herald.Headers{"h": strings.Repeat("v", 16)}}, herald.ErrMessageTooLarge},
		{"too large by its key", &herald.Message{ID: "a", Topic: "orders", Key: strings.Repeat("k", 17)}, herald.ErrMessageTooLarge},
		{"long id", &herald.Message{ID: strings.Repeat("i", 256), Topic: "orders"}, outbox.ErrInvalidMessage},
		{"key not UTF-8", &herald.Message{ID: "a", Topic: "orders", Key: "\xff"}, outbox.ErrInvalidMessage},
		{"NUL in key", &herald.Message{ID: "a", Topic: "orders", Key: "a\x00b"}, outbox.ErrInvalidMessage},
		{"header not UTF-8", &herald.Message{ID: "a", Topic: "orders", Headers: herald.Headers{"h": "\xfe"}}, outbox.ErrInvalidMessage},
	}
	for _, c := range cases {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The bad message comes second: the good one before it must not
		// be inserted either.
		err = w.Write(outbox.WithTx(ctx, tx), []*herald.Message{good(), c.msg})
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Write = %v, want %v", c.name, err, c.want)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if n := countRows(t, tdb, db, table); n != 0 {
		t.Errorf("%d rows after refused writes, want 0", n)
	}
}

// TestRoundTrip writes messages in a transaction on each database, relays
// them to the memory driver and checks that every field survives.
func TestRoundTrip(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		ctx := context.Background()
		at := time.Date(2026, 11, 23, 10, 11, 12, 345678901, time.UTC)
		want := []*herald.Message{
			{ID: "m1", Topic: "orders", Key: "order-1", Headers: herald.Headers{"herald-event": "OrderPlaced", "traceparent": "00-abc-def-01", "ünï": "cödé"},
				ContentType: "application/json", Data: []byte(`{"id":1}`), Time: at},
			{ID: "m2", Topic: "orders", Key: "order-1", ContentType: "application/octet-stream", Data: []byte{0, 1, 2, 255}, Time: at.Add(time.Second)},
			{ID: "m3", Topic: "orders.audit", Data: nil, Time: at.Add(2 * time.Second)},
			{ID: "m4", Topic: "orders", Key: "order-2", Data: []byte{}, Time: at.Add(3 * time.Second)},
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(outbox.WithTx(ctx, tx), want[:2]); err != nil {
			t.Fatal(err)
		}
		if err := w.WriteTx(ctx, tx, want[2:]); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}

		broker := memtest.Broker(t)
		defer broker.Close()
		subs := map[string]herald.Subscription{}
		for _, topic := range []string{"orders", "orders.audit"} {
			sub, err := broker.Subscribe(ctx, topic, "g")
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close(ctx)
			subs[topic] = sub
		}
		startRelay(t, db, tdb.D, table, broker)

		got := map[string]*herald.Message{}
		fctx, cancel := context.WithTimeout(ctx, liveness)
		defer cancel()
		for topic, n := range map[string]int{"orders": 3, "orders.audit": 1} {
			buf := make([]herald.Delivery, 8)
			for have := 0; have < n; {
				k, err := subs[topic].Fetch(fctx, buf)
				if err != nil {
					t.Fatalf("fetch %s: %v", topic, err)
				}
				for _, d := range buf[:k] {
					got[d.Message.ID] = d.Message
				}
				have += k
			}
		}
		for _, m := range want {
			g := got[m.ID]
			if g == nil {
				t.Fatalf("message %s not delivered", m.ID)
			}
			if g.Topic != m.Topic || g.Key != m.Key || g.ContentType != m.ContentType || string(g.Data) != string(m.Data) {
				t.Errorf("message %s: got %+v, want %+v", m.ID, g, m)
			}
			if (g.Data == nil) != (m.Data == nil) {
				t.Errorf("message %s: Data nil = %v, want %v", m.ID, g.Data == nil, m.Data == nil)
			}
			if fmt.Sprint(g.Headers) != fmt.Sprint(m.Headers) {
				t.Errorf("message %s: headers %v, want %v", m.ID, g.Headers, m.Headers)
			}
			if !g.Time.Equal(m.Time.Truncate(time.Microsecond)) || g.Time.Location() != time.UTC {
				t.Errorf("message %s: time %v, want %v (UTC, to the microsecond)", m.ID, g.Time, m.Time.Truncate(time.Microsecond))
			}
		}
		eventually(t, "the outbox to empty", func() bool { return countRows(t, tdb, db, table) == 0 })
	})
}

// TestRollbackSendsNothing checks that a rolled-back transaction leaves
// nothing to relay, while a committed one next to it is relayed.
func TestRollbackSendsNothing(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		ctx := context.Background()

		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(outbox.WithTx(ctx, tx), []*herald.Message{seqMsg("orders", "k", 0), seqMsg("orders", "k", 1)}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		committed := seqMsg("orders", "after", 0)
		writeTx(t, db, w, committed)

		rec := &recorder{}
		startRelay(t, db, tdb.D, table, rec)
		eventually(t, "the committed message", func() bool { return rec.distinct() == 1 })
		eventually(t, "the outbox to empty", func() bool { return countRows(t, tdb, db, table) == 0 })
		for _, m := range rec.messages() {
			if m.ID != committed.ID {
				t.Errorf("relayed %s from a rolled-back transaction", m.ID)
			}
		}
	})
}

// TestPgxTx writes through a native pgx transaction, from the context and
// as an argument.
func TestPgxTx(t *testing.T) {
	tdb := newTestDB(t, outbox.Postgres)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	w := newWriter(t, outbox.Postgres, table)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, tdb.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(outbox.WithPgxTx(ctx, tx), []*herald.Message{seqMsg("orders", "k", 0)}); err != nil {
		t.Fatal(err)
	}
	if err := w.WritePgxTx(ctx, tx, []*herald.Message{seqMsg("orders", "k", 1)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WritePgxTx(ctx, tx, []*herald.Message{seqMsg("orders", "k", 99)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	sqliteWriter := newWriter(t, outbox.SQLite, "outbox")
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sqliteWriter.WritePgxTx(ctx, tx, []*herald.Message{seqMsg("orders", "k", 0)}); !errors.Is(err, outbox.ErrDialectMismatch) {
		t.Errorf("SQLite writer with a pgx.Tx: %v, want ErrDialectMismatch", err)
	}
	_ = tx.Rollback(ctx)

	rec := &recorder{}
	startRelay(t, db, outbox.Postgres, table, rec)
	eventually(t, "two messages", func() bool { return rec.distinct() == 2 })
	checkKeyOrder(t, rec.messages(), 0)
}

// TestLargeBatch writes more rows in one Write than one statement can
// carry (so the Writer splits it) while no relay runs, then checks that a
// relay started afterwards delivers them all, in order.
func TestLargeBatch(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		const n = 10000 // above 65535/7 and 32766/7 rows
		msgs := make([]*herald.Message, n)
		for i := range msgs {
			msgs[i] = seqMsg("bulk", fmt.Sprintf("k%d", i%7), i/7)
		}
		writeTx(t, db, w, msgs...)
		if got := countRows(t, tdb, db, table); got != n {
			t.Fatalf("%d rows, want %d", got, n)
		}
		rec := &recorder{}
		startRelay(t, db, tdb.D, table, rec)
		eventually(t, "every row", func() bool { return rec.distinct() == n })
		checkKeyOrder(t, rec.messages(), 0)
	})
}

// TestMigrateConcurrentlyAndTwice runs Migrate from several goroutines
// on one pool and from several pools on one database (as several instances
// of a service starting at once on a new database would), each writing a
// first event right after, and then Migrate again. On SQLite the first
// connections to a new file race to switch it to WAL, which returns
// SQLITE_BUSY at once whatever the busy timeout: Migrate must ride that
// out. Run it with -count=200 after touching Migrate.
func TestMigrateConcurrentlyAndTwice(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := tableName(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		pools := []*sql.DB{db, db, tdb.Open(t), tdb.Open(t)}
		var wg sync.WaitGroup
		errs := make([]error, len(pools))
		for i, pool := range pools {
			wg.Go(func() {
				if errs[i] = outbox.Migrate(context.Background(), pool, tdb.D, table); errs[i] != nil {
					return
				}
				errs[i] = writeInTx(pool, w, seqMsg("first", "k", i))
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if err := outbox.Migrate(context.Background(), db, tdb.D, table); err != nil {
			t.Error(err)
		}
		if n := countRows(t, tdb, db, table); n != len(pools) {
			t.Errorf("%d rows after the first writes, want %d", n, len(pools))
		}
		writeTx(t, db, w, seqMsg("orders", "k", 0))
		if n := countRows(t, tdb, db, table); n != len(pools)+1 {
			t.Errorf("%d rows, want %d", n, len(pools)+1)
		}
	})
}

// TestBusPublishesBothWays: with herald.WithOutbox one Bus and one registry
// publish through the outbox inside a transaction and to the driver
// outside one.
func TestBusPublishesBothWays(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		broker := memtest.Broker(t)
		bus, err := herald.NewBus(broker, herald.WithOutbox(newWriter(t, tdb.D, table)))
		if err != nil {
			t.Fatal(err)
		}
		type OrderPlaced struct{ ID string }
		if err := herald.Register[OrderPlaced](bus, "orders"); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		sub, err := broker.Subscribe(ctx, "orders", "g")
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close(ctx)

		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(outbox.WithTx(ctx, tx), OrderPlaced{ID: "in-tx"}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctx, OrderPlaced{ID: "direct"}); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, tdb, db, table); n != 1 {
			t.Errorf("%d rows in the outbox, want the one published in the transaction", n)
		}
		got := drivertest.FetchExactly(t, sub, 1)
		if !strings.Contains(string(got[0].Message.Data), "direct") {
			t.Errorf("the broker got %s, want only the direct publish", got[0].Message.Data)
		}
	})
}

// TestSchemaIsWhatMigrateRuns: the exported statements, run by hand (as a
// migration tool would), make tables the Writer and the Relay use.
func TestSchemaIsWhatMigrateRuns(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := tableName(t, tdb, db)
		stmts, err := outbox.Schema(tdb.D, table)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range stmts {
			if _, err := db.Exec(st); err != nil {
				t.Fatalf("%s: %v", st, err)
			}
		}
		w := newWriter(t, tdb.D, table)
		writeTx(t, db, w, seqMsg("orders", "k", 0))
		rec := &recorder{}
		startRelay(t, db, tdb.D, table, rec)
		eventually(t, "the row relayed", func() bool { return rec.distinct() == 1 })
		if _, err := outbox.Schema(tdb.D, "no spaces"); !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("Schema of a bad table name: %v", err)
		}
	})
}
