package main

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sqlSmall are the sqldriver scenario's flags for the tests: small
// backlogs (Watermill reads half of the second), a short idle window.
var sqlSmall = []string{"-sql-backlogs=500,2000:1000", "-sql-idle=1s", "-sql-sqlite-backlog=1000"}

// sqlSmallConfig is the config sqlSmall and small give, for the expected
// rows.
func sqlSmallConfig() config {
	return config{
		messages: 3000, publishers: 4, batch: 10, keys: 50, concurrency: 4,
		sqlBacklogs: []sqlBacklog{{500, 500}, {2000, 1000}}, sqlIdle: time.Second, sqlMembers: 4, sqlSQLiteRows: 1000,
	}
}

// sqldriverRun runs the sqldriver scenario against the test PostgreSQL
// with small counts and checks that every run dropped its tables and
// removed its SQLite directory.
func sqldriverRun(t *testing.T, extra ...string) (table, progress string) {
	t.Helper()
	before := sqliteDirs(t)
	table, progress = postgresRun(t, sqldriverCases(sqlSmallConfig()), slices.Concat([]string{"-scenario", "sqldriver"}, small, sqlSmall, extra))
	for _, d := range sqliteDirs(t) {
		if !slices.Contains(before, d) {
			t.Errorf("the runs left the SQLite directory %s behind", d)
		}
	}
	return table, progress
}

// sqliteDirs lists the temporary directories SQLite runs make.
func sqliteDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), "herald-bench-sqlite-*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// rateOf parses a msgs/s cell ("9740", "16.2k", "1.23M").
func rateOf(t *testing.T, cell string) float64 {
	t.Helper()
	mult := 1.0
	switch {
	case strings.HasSuffix(cell, "k"):
		mult, cell = 1e3, strings.TrimSuffix(cell, "k")
	case strings.HasSuffix(cell, "M"):
		mult, cell = 1e6, strings.TrimSuffix(cell, "M")
	}
	v, err := strconv.ParseFloat(cell, 64)
	if err != nil {
		t.Fatalf("msgs/s cell %q: %v", cell, err)
	}
	return v * mult
}

// column returns the index of name in the header of the table row
// belongs to in out.
func column(t *testing.T, out, row, name string) int {
	t.Helper()
	header := ""
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(line, "| system ") {
			header = line
		}
		if line == row {
			break
		}
	}
	i := slices.Index(cells(header), name)
	if i < 0 {
		t.Fatalf("the table of %q has no column %q: %q", row, name, header)
	}
	return i
}

func TestSQLDriverScenarioInProcess(t *testing.T) {
	out, progress := sqldriverRun(t, "-isolate=false")
	cases := sqldriverCases(sqlSmallConfig())
	rows := checkRows(t, out, cases)
	for i, c := range cases {
		cs := cells(rows[i])
		if r := rateOf(t, cs[2]); r <= 0 {
			t.Errorf("row %q: msgs/s %v, want positive", rows[i], r)
		}
		if c.mode == paced {
			for _, name := range []string{"latency p50", "latency p99", "latency max"} {
				v := cs[column(t, out, rows[i], name)]
				ms, err := strconv.ParseFloat(strings.TrimSuffix(v, " ms"), 64)
				if err != nil || ms <= 0 {
					t.Errorf("row %q: %s %q, want a positive latency", rows[i], name, v)
				}
			}
		}
		if c.idle {
			v := cs[column(t, out, rows[i], "idle statements/s per member")]
			if n, err := strconv.ParseFloat(v, 64); err != nil || n <= 0 {
				t.Errorf("row %q: idle statements/s %q, want a positive number (an idle subscriber still polls)", rows[i], v)
			}
		}
		if c.order {
			if v := cs[column(t, out, rows[i], "order violations")]; v != "0" {
				t.Errorf("row %q: order violations %q, want 0", rows[i], v)
			}
		}
	}
	for _, want := range []string{
		"#### " + sqlConsumeTable(500), "#### " + sqlConsumeTable(2000), "#### " + sqlTablePublish, "#### " + sqlTableLatency,
		"#### " + sqlMembersTable(4), "#### " + sqlTableSQLitePublish, "#### " + sqlTableSQLiteConsume, "#### " + sqlTableSQLiteLatency,
		"Servers: PostgreSQL ", "the first 1,000 rows of the backlog", "(2,000 messages)", "(45 messages)",
		"| latency p50 | latency p99 | latency max | idle statements/s per member |", "| order violations |",
		"just before the publishing transaction's COMMIT",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(progress, "msgs/s"); got != len(cases) {
		t.Errorf("progress shows %d runs, want %d:\n%s", got, len(cases), progress)
	}
}

// TestSQLDriverScenarioIsolated runs the rows with the new columns in
// child processes: the latencies, the idle rate and the order check travel
// to the parent.
func TestSQLDriverScenarioIsolated(t *testing.T) {
	out, _ := sqldriverRun(t, "-case", "sqld-latency,sqld-members-4,sqlite-consume")
	rows := tableRows(out)
	if len(rows) != 3 {
		t.Fatalf("rows = %q, want 3", rows)
	}
	if r := rows[0]; strings.Contains(r, "| 0.00 ms |") || strings.HasSuffix(cells(r)[column(t, out, r, "idle statements/s per member")], "-") {
		t.Errorf("latency row %q lacks its latencies or idle rate", r)
	}
	if v := cells(rows[1])[column(t, out, rows[1], "order violations")]; v != "0" {
		t.Errorf("members row %q: order violations %q, want 0", rows[1], v)
	}
	for _, r := range rows {
		checkCPU(t, r)
	}
}

// TestSQLiteRowsNeedNoServer: a plan of SQLite rows alone does not
// contact PostgreSQL.
func TestSQLiteRowsNeedNoServer(t *testing.T) {
	t.Setenv("HERALD_POSTGRES_DSN", "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=2")
	var out, progress bytes.Buffer
	args := slices.Concat([]string{"-scenario", "sqldriver", "-isolate=false", "-case", "sqlite-publish,sqlite-bare-insert"}, small, sqlSmall)
	if err := run(args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	if rows := tableRows(out.String()); len(rows) != 2 || strings.Contains(out.String(), "Servers:") {
		t.Errorf("want the two SQLite rows and no server:\n%s", out.String())
	}
}

func TestParseSQLBacklogs(t *testing.T) {
	got, err := parseSQLBacklogs("10000, 100000,1000000:5000")
	want := []sqlBacklog{{10000, 10000}, {100000, 100000}, {1000000, 5000}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("parseSQLBacklogs = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"", "0", "x", "100:0", "100:200", "100:x", "1000,1000"} {
		if _, err := parseSQLBacklogs(bad); err == nil {
			t.Errorf("parseSQLBacklogs(%q) = nil error", bad)
		}
	}
	_, err = parseSQLBacklogs("0,100:200")
	if err == nil || strings.Count(err.Error(), "-sql-backlogs") != 2 {
		t.Errorf("every bad item at once: %v", err)
	}
	for n, tag := range map[int]string{10_000: "10k", 100_000: "100k", 1_000_000: "1m", 2500: "2500", 500: "500"} {
		if got := countTag(n); got != tag {
			t.Errorf("countTag(%d) = %q, want %q", n, got, tag)
		}
	}
}

func TestPublisherKeys(t *testing.T) {
	const n, publishers, keys = 1003, 4, 50
	ks := publisherKeys(n, publishers, keys)
	owner := make(map[string]int)
	for p := range publishers {
		for i := p * n / publishers; i < (p+1)*n/publishers; i++ {
			if o, ok := owner[ks[i]]; ok && o != p {
				t.Fatalf("key %q of message %d is published by goroutines %d and %d", ks[i], i, o, p)
			}
			owner[ks[i]] = p
		}
	}
	if len(owner) != publisherKeyCount(publishers, keys) {
		t.Errorf("%d distinct keys, want %d", len(owner), publisherKeyCount(publishers, keys))
	}
}

func TestKeyOrder(t *testing.T) {
	cnt := newCounter(10, 0)
	o := newKeyOrder()
	for _, id := range []string{"1", "3", "2", "5"} {
		o.see("a", id, cnt)
	}
	o.see("b", "2", cnt)
	if got := cnt.violations.Load(); got != 1 {
		t.Errorf("violations = %d, want 1 (a: 2 after 3)", got)
	}
	o.see("a", "x", cnt)
	if cnt.problem() == nil {
		t.Error("an ID that is no index did not fail the run")
	}
}

// TestCountingConnector counts the statements of an SQLite pool.
func TestCountingConnector(t *testing.T) {
	db, n, err := openCounted("sqlite", sqliteDSN(filepath.Join(t.TempDir(), "count.db")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (v INTEGER)"); err != nil {
		t.Fatal(err)
	}
	if err := inTx(ctx, db, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1), (2)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&v); err != nil || v != 2 {
		t.Fatalf("count = %d, %v", v, err)
	}
	st, err := db.PrepareContext(ctx, "SELECT v FROM t WHERE v = ?")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.QueryRowContext(ctx, 2).Scan(&v); err != nil {
		t.Fatal(err)
	}
	// CREATE, BEGIN, INSERT, COMMIT, SELECT, the prepared SELECT.
	if got := n.Load(); got != 6 {
		t.Errorf("counted %d statements, want 6", got)
	}
}
