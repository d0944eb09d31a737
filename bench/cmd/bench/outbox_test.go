package main

import (
	"bytes"
	"context"
	"database/sql"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald/internal/testenv"
)

// outboxRun runs the outbox scenario against the test PostgreSQL with
// small counts and checks that every run dropped its tables.
func outboxRun(t *testing.T, extra ...string) (table, progress string) {
	t.Helper()
	return postgresRun(t, outboxCases(config{}), slices.Concat([]string{"-scenario", "outbox"}, small, extra))
}

// postgresRun runs the command with args and a run token of its own
// against the test PostgreSQL, and checks that no run of cases left a
// table behind. It looks only for the tables its own runs may have made
// (named after their topics): other runs may share the server.
func postgresRun(t *testing.T, cases []benchCase, args []string) (table, progress string) {
	t.Helper()
	dsn := testenv.PostgresDSN(t)
	t.Setenv("HERALD_POSTGRES_DSN", dsn)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	token := testToken()
	var out, prog bytes.Buffer
	if err := run(slices.Concat(args, []string{"-run-token", token}), &out, &prog); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, prog.String())
	}
	var mine []string
	for _, topic := range runTopics(cases, token, 1) {
		mine = append(mine, outboxTableName(topic))
	}
	for _, name := range benchTables(t, db) {
		for _, base := range mine {
			if strings.Contains(name, base) { // herald's, and Watermill's prefixed ones
				t.Errorf("the runs left table %q behind", name)
			}
		}
	}
	return out.String(), prog.String()
}

// benchTables lists the tables the scenario's runs create.
func benchTables(t *testing.T, db *sql.DB) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx,
		`SELECT tablename FROM pg_tables WHERE tablename LIKE 'bench\_%' OR tablename LIKE 'watermill\_%bench\_%'`)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

func TestOutboxScenarioInProcess(t *testing.T) {
	out, progress := outboxRun(t, "-isolate=false")
	cases := outboxCases(config{messages: 3000, batch: 10})
	rows := checkRows(t, out, cases)
	for i, c := range cases {
		if c.mode == paced && (!strings.Contains(rows[i], " ms | ") || strings.Contains(rows[i], "| 0.00 ms | 0.00 ms |")) {
			t.Errorf("paced row %q lacks its latencies", rows[i])
		}
	}
	for _, want := range []string{
		"#### " + outboxTablePublish, "#### " + outboxTableRelay, "#### " + outboxTableLatency, "Servers: PostgreSQL ",
		"(150 messages)", "(1,500 messages)", "(45 messages)", paced.timed(), "| latency p50 | latency p99 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(progress, "msgs/s"); got != len(cases) {
		t.Errorf("progress shows %d runs, want %d:\n%s", got, len(cases), progress)
	}
}

// TestOutboxScenarioIsolated runs one case of each mode in child processes.
func TestOutboxScenarioIsolated(t *testing.T) {
	out, _ := outboxRun(t, "-case", "bare-insert,herald-relay,watermill-sql-subscriber,herald-latency")
	rows := tableRows(out)
	if len(rows) != 4 {
		t.Fatalf("rows = %q, want 4", rows)
	}
	// The child hands its latencies back to the parent.
	if r := rows[3]; !strings.Contains(r, " ms | ") || strings.Contains(r, "| 0.00 ms | 0.00 ms |") {
		t.Errorf("paced row %q lacks its latencies", r)
	}
}

func TestOutboxUnreachable(t *testing.T) {
	// Nothing listens on port 1: the scenario fails before any run.
	t.Setenv("HERALD_POSTGRES_DSN", "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=2")
	var out, progress bytes.Buffer
	err := run(slices.Concat([]string{"-scenario", "outbox"}, small), &out, &progress)
	if err == nil || !strings.Contains(err.Error(), "postgres (HERALD_POSTGRES_DSN)") {
		t.Fatalf("run = %v, want an error naming HERALD_POSTGRES_DSN", err)
	}
	if progress.Len() > 0 {
		t.Errorf("runs happened:\n%s", progress.String())
	}
}
