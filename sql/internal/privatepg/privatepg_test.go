package privatepg_test

import (
	"context"
	"database/sql"
	"slices"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"

	"github.com/heraldbus/herald/sql/internal/privatepg"
)

// TestMain checks for leaks after the servers' cleanups, which run after
// each test's deferred calls.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestKillKeepsCommittedRowsAndLosesOpenTransactions(t *testing.T) {
	t.Parallel()
	s := privatepg.Start(t)
	db := open(t, s)
	ctx := t.Context()
	mustExec(t, db, "CREATE TABLE kept (id int PRIMARY KEY)")
	mustExec(t, db, "INSERT INTO kept VALUES (1)")
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO kept VALUES (2)"); err != nil {
		t.Fatal(err)
	}

	s.Kill(t)
	if err := tx.Commit(); err == nil {
		t.Error("Commit on a killed server succeeded")
	}
	if _, err := ids(t, db); err == nil {
		t.Error("query on a killed server succeeded")
	}

	s.Restart(t)
	got, err := ids(t, db)
	if err != nil {
		t.Fatalf("query after Restart: %v", err)
	}
	if want := []int{1}; !slices.Equal(got, want) {
		t.Errorf("ids after Kill and Restart = %v, want %v (committed kept, open lost)", got, want)
	}
}

func TestStopThenRestart(t *testing.T) {
	t.Parallel()
	s := privatepg.Start(t)
	db := open(t, s)
	mustExec(t, db, "CREATE TABLE kept (id int PRIMARY KEY)")
	mustExec(t, db, "INSERT INTO kept VALUES (1)")

	s.Stop(t)
	if _, err := ids(t, db); err == nil {
		t.Error("query on a stopped server succeeded")
	}

	s.Restart(t)
	got, err := ids(t, db)
	if err != nil {
		t.Fatalf("query after Restart: %v", err)
	}
	if want := []int{1}; !slices.Equal(got, want) {
		t.Errorf("ids after Stop and Restart = %v, want %v", got, want)
	}
}

func TestServersAreSeparate(t *testing.T) {
	t.Parallel()
	a, b := privatepg.Start(t), privatepg.Start(t)
	if a.DSN() == b.DSN() {
		t.Fatalf("two servers share DSN %s", a.DSN())
	}
	mustExec(t, open(t, a), "CREATE TABLE kept (id int PRIMARY KEY)")
	a.Kill(t)
	dbB := open(t, b)
	if err := dbB.PingContext(t.Context()); err != nil {
		t.Errorf("the other server after Kill: %v", err)
	}
	if _, err := ids(t, dbB); err == nil {
		t.Error("table kept created on one server is on the other")
	}
}

func open(t *testing.T, s *privatepg.Server) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", s.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
	})
	return db
}

func mustExec(t *testing.T, db *sql.DB, query string) {
	t.Helper()
	if _, err := db.ExecContext(t.Context(), query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// ids returns the ids in table kept, in order.
func ids(t *testing.T, db *sql.DB) ([]int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, "SELECT id FROM kept ORDER BY id")
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var got []int
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		got = append(got, id)
	}
	return got, rows.Err()
}
