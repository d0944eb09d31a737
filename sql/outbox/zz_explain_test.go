package outbox_test

import (
	"context"
	"os"
	"testing"

	"github.com/heraldbus/herald/sql/outbox"
)

func TestZZExplain(t *testing.T) {
	if os.Getenv("ZZ_EXPLAIN") == "" {
		t.Skip()
	}
	tdb := newTestDB(t, outbox.Postgres)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	q := tdb.Quote(table)
	ctx := context.Background()
	for _, st := range []string{
		`INSERT INTO ` + q + ` (message_id, topic, msg_key, content_type, payload, created_at, deliver_at)
		 SELECT 'd'||g, 'orders', 'k'||(g%100), '', 'x', now(), (EXTRACT(EPOCH FROM now())*1000)::bigint + 3600000 + g FROM generate_series(1, 100000) g`,
		`INSERT INTO ` + q + ` (message_id, topic, msg_key, content_type, payload, created_at)
		 SELECT 'r'||g, 'orders', 'k'||(g%100), '', 'x', now() FROM generate_series(1, 5000) g`,
		`ANALYZE ` + q,
	} {
		if _, err := db.ExecContext(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	for _, qu := range []string{
		`SELECT id, message_id, topic, msg_key, headers, content_type, payload, created_at, attempts FROM ` + q + ` WHERE deliver_at IS NULL ORDER BY id LIMIT 1000`,
		`SELECT id FROM ` + q + ` WHERE deliver_at IS NULL AND msg_key <> ALL('{k1,k2}'::text[]) AND id <> ALL('{}'::bigint[]) ORDER BY id LIMIT 1000`,
		`SELECT MIN(deliver_at), (EXTRACT(EPOCH FROM clock_timestamp())*1000)::BIGINT FROM ` + q + ` WHERE deliver_at IS NOT NULL`,
		`SELECT id FROM ` + q + ` WHERE deliver_at < (EXTRACT(EPOCH FROM now())*1000)::BIGINT + 3600000 + 300 ORDER BY deliver_at, id LIMIT 500`,
	} {
		rs, err := db.QueryContext(ctx, "EXPLAIN (ANALYZE, BUFFERS) "+qu)
		if err != nil {
			t.Fatal(err)
		}
		t.Log("----", qu)
		for rs.Next() {
			var l string
			_ = rs.Scan(&l)
			t.Log(l)
		}
		rs.Close()
	}
	if os.Getenv("ZZ_DROP") != "" {
		for _, ix := range []string{table + "_ready_idx", table + "_due_idx"} {
			if _, err := db.Exec("DROP INDEX " + tdb.Quote(ix)); err != nil {
				t.Fatal(err)
			}
		}
		rs, _ := db.QueryContext(ctx, `EXPLAIN (ANALYZE, BUFFERS) SELECT id, message_id, topic, msg_key, headers, content_type, payload, created_at, attempts FROM `+q+` WHERE deliver_at IS NULL ORDER BY id LIMIT 1000`)
		t.Log("---- without the indexes")
		for rs.Next() {
			var l string
			_ = rs.Scan(&l)
			t.Log(l)
		}
		rs.Close()
	}
}
