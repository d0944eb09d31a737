package sqldriver_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/dlq/dlqtest"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

func TestDeadLetters(t *testing.T) {
	for _, d := range allDialects {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			dlqtest.Run(t, dlqtest.Config{
				NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
					drv := newEnv(t, d).driver(t)
					return drv, drv.DeadLetters()
				},
				RejectingWriter: func(t *testing.T) herald.Writer {
					return newEnv(t, d).driver(t, sqldriver.WithMaxMessageBytes(1))
				},
				// Partition 0, which every log has, at a position far past
				// what a test's own log reaches.
				MissingPosition: "0:999999999",
				BadPositions:    []string{"0", "0:", "0:x", "a:1", "0:-1"},
			})
		})
	}
}

// deadLetters writes entries with the given IDs straight to orders.dlq,
// as herald.WithDeadLetter would, from a driver without subscriptions.
func writeDeadLetters(t *testing.T, w herald.Writer, ids ...string) {
	t.Helper()
	msgs := make([]*herald.Message, len(ids))
	for i, id := range ids {
		msgs[i] = &herald.Message{ID: id, Topic: "orders.dlq", Key: "k" + id, Data: []byte(id),
			Headers: herald.Headers{herald.HeaderDeadLetterTopic: "orders", herald.HeaderDeadLetterReason: "boom"}}
	}
	if err := w.Write(drivertest.Context(t, time.Minute), msgs); err != nil {
		t.Fatal(err)
	}
}

func listIDs(t *testing.T, s dlq.Store) []string {
	t.Helper()
	entries, next, err := s.List(drivertest.Context(t, time.Minute), "orders.dlq", "", 100)
	if err != nil || next != "" {
		t.Fatalf("List: next %q, %v", next, err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Message.ID)
	}
	slices.Sort(ids)
	return ids
}

// TestDeadLetterPositionsAndDurableMarks checks the SQL form of the
// store: an entry's position is its row's partition and position, rows
// are listed at once without a subscription anywhere (List runs the
// sequencer), and the marks live in <table>_redriven, so another process
// does not list what one redrove.
func TestDeadLetterPositionsAndDurableMarks(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := newEnv(t, tdb.D)
		db, d := e.db, e.driver(t)
		ctx := drivertest.Context(t, time.Minute)
		writeDeadLetters(t, d, "a", "b", "c", "d")
		entries, _, err := d.DeadLetters().List(ctx, "orders.dlq", "", 100)
		if err != nil || len(entries) != 4 {
			t.Fatalf("List right after the write: %d entries, %v", len(entries), err)
		}
		pos := "seq"
		if tdb.D == sqldriver.SQLite {
			pos = "id"
		}
		for _, entry := range entries {
			var part, at int64
			err := db.QueryRowContext(ctx, "SELECT part, "+pos+" FROM "+tdb.Quote(e.table)+" WHERE message_id = '"+entry.Message.ID+"'").Scan(&part, &at)
			if err != nil || entry.Position != fmt.Sprintf("%d:%d", part, at) {
				t.Errorf("entry %s at %q, its row at %d:%d (%v)", entry.Message.ID, entry.Position, part, at, err)
			}
		}

		res, err := dlq.Redrive(ctx, d.DeadLetters(), d, "orders.dlq", dlq.RedriveOptions{Select: []string{"b", "d"}})
		if err != nil || res.Redriven != 2 {
			t.Fatalf("redrive: %+v, %v", res, err)
		}
		if got := listIDs(t, e.driver(t).DeadLetters()); !slices.Equal(got, []string{"a", "c"}) {
			t.Errorf("another process lists %v, want [a c]", got)
		}
		var marks int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+tdb.Quote(e.table+sqldriver.RedrivenSuffix)).Scan(&marks); err != nil || marks != 2 {
			t.Errorf("%d marks (%v), want 2", marks, err)
		}
		if _, err := d.DeadLetters().Get(ctx, "orders.dlq", "b"); !errors.Is(err, dlq.ErrNotFound) {
			t.Errorf("Get of a redriven entry: %v, want ErrNotFound", err)
		}
	})
}

// TestDeadLetterMarksOfDeletedRowsGo checks that the marks of rows
// retention deleted are deleted with the next mark of their topic, and
// the others are kept.
func TestDeadLetterMarksOfDeletedRowsGo(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := newEnv(t, tdb.D)
		db, d := e.db, e.driver(t)
		ctx := drivertest.Context(t, time.Minute)
		writeDeadLetters(t, d, "a", "b", "c")
		s := d.DeadLetters()
		entries, _, err := s.List(ctx, "orders.dlq", "", 100)
		if err != nil || len(entries) != 3 {
			t.Fatalf("List: %d entries, %v", len(entries), err)
		}
		if err := s.MarkRedriven(ctx, "orders.dlq", entries[:2]); err != nil {
			t.Fatal(err)
		}
		// Retention deletes the first entry's row.
		if _, err := db.ExecContext(ctx, "DELETE FROM "+tdb.Quote(e.table)+" WHERE message_id = '"+entries[0].Message.ID+"'"); err != nil {
			t.Fatal(err)
		}
		// A fresh store sweeps at its first mark.
		if err := e.driver(t).DeadLetters().MarkRedriven(ctx, "orders.dlq", entries[2:]); err != nil {
			t.Fatal(err)
		}
		rs, err := db.QueryContext(ctx, "SELECT part, pos FROM "+tdb.Quote(e.table+sqldriver.RedrivenSuffix)+" ORDER BY part, pos")
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var marks []string
		for rs.Next() {
			var part, pos int64
			if err := rs.Scan(&part, &pos); err != nil {
				t.Fatal(err)
			}
			marks = append(marks, fmt.Sprintf("%d:%d", part, pos))
		}
		want := []string{entries[1].Position, entries[2].Position}
		slices.Sort(want)
		slices.Sort(marks)
		if !slices.Equal(marks, want) {
			t.Errorf("marks %v, want %v (not %s, whose row is gone)", marks, want, entries[0].Position)
		}
		if got := listIDs(t, s); len(got) != 0 {
			t.Errorf("listed %v, want nothing", got)
		}
	})
}

// TestDeadLetterErrors checks the store's errors are typed: a bad topic,
// limit, cursor or position, an unknown position, a closed driver and a
// log that was never migrated.
func TestDeadLetterErrors(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := newEnv(t, tdb.D)
		db, d := e.db, e.driver(t)
		s := d.DeadLetters()
		ctx := drivertest.Context(t, time.Minute)
		writeDeadLetters(t, d, "a")
		_, _, err := s.List(ctx, "orders.dlq", "", 0)
		checkError(t, "List with limit 0", err, herald.ErrInvalidOption, "list dead letters")
		for _, cursor := range []string{"7", "x:1", "1:-2", "-1:2", "1:2:3", " 1:2"} {
			_, _, err := s.List(ctx, "orders.dlq", cursor, 10)
			checkError(t, fmt.Sprintf("List after cursor %q", cursor), err, dlq.ErrBadPosition, "list dead letters")
		}
		err = s.MarkRedriven(ctx, "orders.dlq", []dlq.Entry{{Position: "a"}})
		checkError(t, "MarkRedriven of a malformed position", err, dlq.ErrBadPosition, "mark dead letters redriven")
		for _, missing := range []string{"0:0", "4095:1", "no-such-id"} {
			_, err := s.Get(ctx, "orders.dlq", missing)
			checkError(t, "Get "+missing, err, dlq.ErrNotFound, "get dead letter")
		}
		_, err = s.Get(ctx, "orders.dlq!", "a")
		checkError(t, "Get on an invalid topic", err, herald.ErrInvalidName, "get dead letter")

		unmigrated := newDriver(t, db, tdb.D, sqldriver.WithTable(e.table+"_none")).DeadLetters()
		_, _, err = unmigrated.List(ctx, "orders.dlq", "", 10)
		checkError(t, "List before Migrate", err, sqldriver.ErrNoLog, "list dead letters")
		_, err = unmigrated.Get(ctx, "orders.dlq", "a")
		checkError(t, "Get before Migrate", err, sqldriver.ErrNoLog, "get dead letter")

		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		_, _, err = s.List(ctx, "orders.dlq", "", 10)
		checkError(t, "List after Close", err, herald.ErrClosed, "list dead letters")
		err = s.MarkRedriven(ctx, "orders.dlq", nil)
		checkError(t, "MarkRedriven after Close", err, herald.ErrClosed, "mark dead letters redriven")
	})
}

// checkError checks err is the driver's error for op and wraps want.
func checkError(t *testing.T, what string, err, want error, op string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: %v, want %v", what, err, want)
		return
	}
	var de *herald.DriverError
	if !errors.As(err, &de) || de.Driver != "sqldriver" || de.Op != op || !strings.Contains(err.Error(), "orders.dlq") {
		t.Errorf("%s: %v, want a sqldriver error of %q on orders.dlq", what, err, op)
	}
}

// An operator's look at a dead-letter topic: list it, then redrive it.
func ExampleDriver_DeadLetters() {
	dir, err := os.MkdirTemp("", "herald-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	drv, err := sqldriver.New(db, sqldriver.SQLite, sqldriver.WithPartitions(4))
	if err != nil {
		log.Fatal(err)
	}
	defer drv.Close()
	ctx := context.Background()
	if err := drv.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	// What herald.WithDeadLetter writes when a group gives up.
	rec := herald.DeadLetterRecord{Reason: "card declined", Attempts: 3, Topic: "orders", Group: "billing", Time: time.Now()}
	failed := &herald.Message{ID: "order-1", Topic: "orders", Key: "customer-7", Data: []byte(`{"total":12}`)}
	if err := drv.Write(ctx, []*herald.Message{rec.Message(failed, herald.DeadLetterTopic("orders"))}); err != nil {
		log.Fatal(err)
	}

	store := drv.DeadLetters()
	entries, _, err := store.List(ctx, "orders.dlq", "", 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e.Position, e.Message.ID, e.Group, e.Attempts, e.Reason)
	}
	res, err := dlq.Redrive(ctx, store, drv, "orders.dlq", dlq.RedriveOptions{})
	if err != nil {
		log.Fatal(err)
	}
	left, _, err := store.List(ctx, "orders.dlq", "", 10)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("redriven:", res.Redriven, "left:", len(left))
	// Output:
	// 3:1 order-1 billing 3 card declined
	// redriven: 1 left: 0
}
