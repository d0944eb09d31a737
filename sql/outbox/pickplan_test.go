package outbox_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/heraldbus/herald/sql/outbox"
)

// TestPickPlansUseDelayIndexes checks on PostgreSQL that, with 100,000
// delayed rows ahead of 5,000 forwardable ones, the relay's read uses the
// primary key from id 0 on, past the delayed rows' ids below zero
// (SchemaVersion 3), without stepping over any of them, and the due-row
// scan and next-due look use the due index. The queries are
// the relay's (the read with exclusions is spelled out), the due-row scan
// with a bound now an hour ahead, so that it finds rows. The plans are
// logged (-v) for the figures.
func TestPickPlansUseDelayIndexes(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts 105,000 rows")
	}
	tdb := newTestDB(t, outbox.Postgres)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	q := tdb.Quote(table)
	ctx := context.Background()
	for _, st := range []string{
		`INSERT INTO ` + q + ` (id, message_id, topic, msg_key, content_type, payload, created_at, deliver_at)
		 SELECT ` + outbox.DelayedID(table) + `, 'd'||g, 'orders', 'k'||(g%100), '', 'x', now(), (EXTRACT(EPOCH FROM now())*1000)::bigint + 3600000 + g FROM generate_series(1, 100000) g`,
		`INSERT INTO ` + q + ` (message_id, topic, msg_key, content_type, payload, created_at)
		 SELECT 'r'||g, 'orders', 'k'||(g%100), '', 'x', now() FROM generate_series(1, 5000) g`,
		`ANALYZE ` + q,
	} {
		if _, err := db.ExecContext(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	read, nextDue, dueIDs := outbox.RelayQueries(outbox.Postgres, table)
	var now int64
	if err := db.QueryRow("SELECT (EXTRACT(EPOCH FROM now())*1000)::BIGINT + 3600000 + 300").Scan(&now); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		query, index string
		args         []any
	}{
		{read, table + "_pkey", []any{1000}},
		{`SELECT id FROM ` + q + ` WHERE id > 0 AND deliver_at IS NULL AND msg_key <> ALL('{k1,k2}'::text[]) AND id <> ALL('{}'::bigint[]) ORDER BY id LIMIT 1000`,
			table + "_pkey", nil},
		{nextDue, table + "_due_idx", nil},
		{dueIDs, table + "_due_idx", []any{now}},
	} {
		plan := explain(t, db, c.query, c.args...)
		t.Logf("%s\n%s", c.query, plan)
		if !strings.Contains(plan, c.index) || strings.Contains(plan, "Rows Removed by Filter: 100000") {
			t.Errorf("plan of %s does not use %s:\n%s", c.query, c.index, plan)
		}
	}
}

func explain(t *testing.T, db *sql.DB, query string, args ...any) string {
	t.Helper()
	rs, err := db.Query("EXPLAIN (ANALYZE, BUFFERS) "+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var b strings.Builder
	for rs.Next() {
		var l string
		if err := rs.Scan(&l); err != nil {
			t.Fatal(err)
		}
		b.WriteString(l + "\n")
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
