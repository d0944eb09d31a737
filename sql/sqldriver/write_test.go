package sqldriver_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/sql/outbox"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// fetchIDs reads n messages from a new member of group and acknowledges
// them.
func fetchIDs(t *testing.T, drv *sqldriver.Driver, topic, group string, n int) []string {
	t.Helper()
	ctx := drivertest.Context(t, 30*time.Second)
	sub, err := drv.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	var ids []string
	buf := make([]herald.Delivery, 16)
	for len(ids) < n {
		k, err := sub.Fetch(ctx, buf)
		if err != nil {
			t.Fatalf("fetch after %v: %v", ids, err)
		}
		for _, d := range buf[:k] {
			ids = append(ids, d.Message.ID)
			if err := sub.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	return ids
}

// A Write in the caller's transaction is published if and only if the
// transaction commits; outbox.WithTx carries it as well as WithTx.
func TestWriteTakesPartInTheCallersTransaction(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		drv := e.driver(t)
		ctx := context.Background()
		inTx := func(wrap func(context.Context, *sql.Tx) context.Context, id string, commit bool) {
			tx, err := e.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := drv.Write(wrap(ctx, tx), []*herald.Message{msg("t", "k", id)}); err != nil {
				t.Fatal(err)
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		inTx(sqldriver.WithTx, "rolled-back", false)
		inTx(sqldriver.WithTx, "committed", true)
		inTx(outbox.WithTx, "through-outbox-context", true)
		if err := drv.Write(ctx, []*herald.Message{msg("t", "k", "own-transaction")}); err != nil {
			t.Fatal(err)
		}
		got := fetchIDs(t, drv, "t", "g", 3)
		if strings.Join(got, ",") != "committed,through-outbox-context,own-transaction" {
			t.Errorf("delivered %v, want committed, through-outbox-context, own-transaction", got)
		}
	})
}

func TestWriteInANativePgxTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sqldriver.Postgres)
	drv := e.driver(t)
	ctx := drivertest.Context(t, 30*time.Second)
	conn, err := pgx.Connect(ctx, testenv.PostgresDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, commit := range []bool{false, true} {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id := map[bool]string{true: "committed", false: "rolled-back"}[commit]
		if err := drv.Write(sqldriver.WithPgxTx(ctx, tx), []*herald.Message{msg("t", "k", id)}); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := fetchIDs(t, drv, "t", "g", 1); got[0] != "committed" {
		t.Errorf("delivered %v, want committed", got)
	}
}

// Bad input gets a typed error, and nothing of a refused batch is
// written.
func TestBadInput(t *testing.T) {
	db, err := sql.Open("sqlite", sqliteDSN(filepath.Join(t.TempDir(), "x.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := sqldriver.New(nil, sqldriver.SQLite); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("New(nil) = %v, want ErrInvalidOption", err)
	}
	if _, err := sqldriver.New(db, sqldriver.Dialect(9)); !errors.Is(err, outbox.ErrUnknownDialect) {
		t.Errorf("New with dialect 9 = %v, want ErrUnknownDialect", err)
	}
	_, err = sqldriver.New(db, sqldriver.SQLite,
		sqldriver.WithTable("Bad-Name"), sqldriver.WithPartitions(0), sqldriver.WithMaxMessageBytes(-1),
		sqldriver.WithStartPosition(herald.StartPosition(7)), sqldriver.WithLease(0),
		sqldriver.WithPollInterval(time.Second, time.Millisecond), sqldriver.WithRetention(-time.Hour),
		sqldriver.WithFetchSize(0))
	if !errors.Is(err, herald.ErrInvalidOption) {
		t.Fatalf("New with bad options = %v, want ErrInvalidOption", err)
	}
	for _, want := range []string{"table", "partitions 0", "max message bytes -1", "start position", "lease", "poll interval", "retention", "fetch size 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %q: %v", want, err)
		}
	}

	if _, err := sqldriver.New(db, sqldriver.SQLite, sqldriver.WithCommitInterval(time.Minute)); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("a commit interval above the lease = %v, want ErrInvalidOption", err)
	}
	drv, err := sqldriver.New(db, sqldriver.SQLite, sqldriver.WithTable("log"))
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	if err := drv.Write(ctx, []*herald.Message{msg("t", "k", "1")}); !errors.Is(err, sqldriver.ErrNoLog) {
		t.Errorf("Write before Migrate = %v, want ErrNoLog", err)
	}
	if _, err := drv.Subscribe(ctx, "t", "g"); !errors.Is(err, sqldriver.ErrNoLog) {
		t.Errorf("Subscribe before Migrate = %v, want ErrNoLog", err)
	}
	if err := drv.Ping(ctx); !errors.Is(err, sqldriver.ErrNoLog) {
		t.Errorf("Ping before Migrate = %v, want ErrNoLog", err)
	}
	if err := drv.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := drv.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if err := drv.Ping(ctx); err != nil {
		t.Errorf("Ping after Migrate: %v", err)
	}
	other, _ := sqldriver.New(db, sqldriver.SQLite, sqldriver.WithTable("log"), sqldriver.WithPartitions(4))
	defer other.Close()
	if err := other.Write(ctx, []*herald.Message{msg("t", "k", "1")}); !errors.Is(err, sqldriver.ErrPartitions) {
		t.Errorf("Write with another partition count = %v, want ErrPartitions", err)
	}
	for name, batch := range map[string][]*herald.Message{
		"nil message":   {msg("t", "k", "ok"), nil},
		"invalid topic": {msg("t", "k", "ok"), msg("t/../x?", "k", "bad")},
		"NUL in key":    {msg("t", "k", "ok"), msg("t", "a\x00b", "bad")},
		"oversized":     {msg("t", "k", "ok"), {ID: "big", Topic: "t", Data: make([]byte, 2<<20)}},
	} {
		err := drv.Write(ctx, batch)
		var de *herald.DriverError
		if !errors.As(err, &de) || de.Driver != "sqldriver" || de.Op != "write" {
			t.Errorf("%s: Write = %v, want a *herald.DriverError of op write", name, err)
		}
	}
	if err := drv.Write(ctx, []*herald.Message{{ID: "big", Topic: "t", Data: make([]byte, 2<<20)}}); !errors.Is(err, herald.ErrMessageTooLarge) {
		t.Errorf("oversized: %v, want ErrMessageTooLarge", err)
	}
	var rows int
	if err := db.QueryRow("SELECT COUNT(*) FROM log").Scan(&rows); err != nil || rows != 0 {
		t.Errorf("refused batches left %d rows (%v), want 0", rows, err)
	}
	for _, name := range [][2]string{{"", "g"}, {"t", ""}, {"a b", "g"}, {"t", "g?"}} {
		if _, err := drv.Subscribe(ctx, name[0], name[1]); !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("Subscribe(%q, %q) = %v, want ErrInvalidName", name[0], name[1], err)
		}
	}
	if err := drv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := drv.Write(ctx, []*herald.Message{msg("t", "k", "1")}); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
}

// Through a Bus: a Publish whose context carries the transaction is part
// of it.
func TestBusPublishesInTheTransaction(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		drv := e.driver(t)
		bus, err := herald.NewBus(drv)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		for _, commit := range []bool{false, true} {
			tx, err := e.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			id := map[bool]string{true: "committed", false: "rolled-back"}[commit]
			if err := bus.PublishMessages(sqldriver.WithTx(ctx, tx), msg("t", "k", id)); err != nil {
				t.Fatal(err)
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := fetchIDs(t, drv, "t", "g", 1); got[0] != "committed" {
			t.Errorf("delivered %v, want committed", got)
		}
	})
}
