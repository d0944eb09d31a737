package sqldriver_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqltest"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/internal/privatepg"
	"github.com/heraldbus/herald/sql/sqldriver"
)

func countLog(t testing.TB, e *env, topic string) int {
	t.Helper()
	var n int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM " + e.tdb.Quote(e.table) + " WHERE topic = '" + topic + "'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Rows past the retention go once every group of their topic has
// acknowledged them; a group that has not read them keeps them.
func TestRetentionDeletesOnlyWhatEveryGroupAcknowledged(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		drv := e.driver(t, sqldriver.WithRetention(time.Millisecond))
		ctx := context.Background()
		var batch []*herald.Message
		for i := range 50 {
			batch = append(batch, msg("kept", fmt.Sprint("k", i%5), fmt.Sprint("kept-", i)), msg("gone", fmt.Sprint("k", i%5), fmt.Sprint("gone-", i)))
		}
		// Both groups exist before the rows are written; "slow" never reads.
		for _, g := range []string{"slow", "fast"} {
			sub, err := drv.Subscribe(ctx, "kept", g)
			if err != nil {
				t.Fatal(err)
			}
			drivertest.CloseSub(t, sub)
		}
		if err := drv.Write(ctx, batch); err != nil {
			t.Fatal(err)
		}
		fetchIDs(t, drv, "kept", "fast", 50)
		fetchIDs(t, drv, "gone", "fast", 50)
		// The pump of a driver with a subscription purges every second.
		sub, err := drv.Subscribe(ctx, "idle", "g")
		if err != nil {
			t.Fatal(err)
		}
		defer drivertest.CloseSub(t, sub)
		drivertest.Eventually(t, 30*time.Second, "the rows every group acknowledged are deleted", func() bool { return countLog(t, e, "gone") == 0 })
		if n := countLog(t, e, "kept"); n != 50 {
			t.Errorf("%d rows of the topic a group has not read are left, want 50", n)
		}
	})
}

// TestRetentionKeepsTheTableBounded writes and consumes at a steady rate
// with a short retention and samples the log's size on PostgreSQL
// (pg_total_relation_size, table and indexes), on a private server with
// PostgreSQL's default settings (autovacuum on; the shared test server
// runs without it). It runs for HERALD_SOAK (for example 20m; default 6s)
// and logs the samples; it fails only if rows are never deleted. The
// 20-minute figures are in the README.
func TestRetentionKeepsTheTableBounded(t *testing.T) {
	t.Parallel()
	run := 6 * time.Second
	if v := os.Getenv("HERALD_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("HERALD_SOAK=%q: %v", v, err)
		}
		run = d
	}
	retention := min(run/4, 30*time.Second)
	srv := privatepg.Start(t)
	tdb := sqltest.Postgres(srv.DSN())
	e := &env{tdb: tdb, db: tdb.Open(t)}
	e.table = newLog(t, tdb, e.db)
	drv := e.driver(t, sqldriver.WithRetention(retention))
	bus, err := herald.NewBus(drv)
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	if err := bus.Handle("soak", "g", func(context.Context, *herald.Message) error { handled.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	ctx := drivertest.Context(t, run+time.Minute)
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = bus.Shutdown(context.Background()) }()
	writer := e.driver(t)
	const rate = 1000 // messages a second, in batches of 10
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	sample := time.NewTicker(max(run/20, time.Second))
	defer sample.Stop()
	end := time.Now().Add(run)
	written, i := 0, 0
	var maxSize, lastSize int64
	for time.Now().Before(end) {
		select {
		case <-tick.C:
			batch := make([]*herald.Message, rate/100)
			for j := range batch {
				batch[j] = &herald.Message{Topic: "soak", Key: fmt.Sprint("k", i%64), Data: make([]byte, 200)}
				i++
			}
			if err := writer.Write(ctx, batch); err != nil {
				t.Fatal(err)
			}
			written += len(batch)
		case <-sample.C:
			var size, dead, vacuums int64
			var rows int
			if err := e.db.QueryRow("SELECT pg_total_relation_size($1::text::regclass), (SELECT COUNT(*) FROM "+e.tdb.Quote(e.table)+"), n_dead_tup, autovacuum_count FROM pg_stat_user_tables WHERE relname = $1::text",
				e.table).Scan(&size, &rows, &dead, &vacuums); err != nil {
				t.Fatal(err)
			}
			maxSize, lastSize = max(maxSize, size), size
			t.Logf("t=%4.0fs written=%d handled=%d rows=%d dead=%d autovacuums=%d size=%d KiB",
				run.Seconds()-time.Until(end).Seconds(), written, handled.Load(), rows, dead, vacuums, size>>10)
		}
	}
	drivertest.Eventually(t, time.Minute, "everything written is handled", func() bool { return handled.Load() >= int64(written) })
	rows := countLog(t, e, "soak")
	t.Logf("wrote %d at %d/s with retention %v: %d rows left, size last %d KiB, max %d KiB", written, rate, retention, rows, lastSize>>10, maxSize>>10)
	if rows >= written && run > 2*retention {
		t.Errorf("no row was deleted: %d rows of %d written", rows, written)
	}
}
