package sqldriver_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// BenchmarkBatchInsert is the bulk-write case batch handlers are for:
// events read from a bus and written to a PostgreSQL table, one row each,
// either by a batch handler that writes each batch of up to 100 in one
// multi-row INSERT (herald.SubscribeBatch, WithBatch(100, 5ms)) or by a
// single handler that INSERTs one row per event (herald.Subscribe), both
// at the same concurrency, in the same run. The transport is the memory
// driver, so that what differs is the handler's database work. One op is
// a backlog of benchBatchEvents events over 1000 keys, published while the
// subscription runs, until the last row is written. It reports msgs/s and
// this process's CPU (user + system, from getrusage) per message;
// PostgreSQL's own CPU is not in it. Run it with
//
//	go test -run '^$' -bench BatchInsert -benchtime 3x ./sqldriver
func BenchmarkBatchInsert(b *testing.B) {
	for _, conc := range []int{1, 4} {
		for _, batch := range []bool{false, true} {
			name := "one-row-per-event"
			if batch {
				name = "batch-100-multirow"
			}
			b.Run(fmt.Sprintf("%s/concurrency-%d", name, conc), func(b *testing.B) {
				benchBatchInsert(b, batch, conc)
			})
		}
	}
}

const benchBatchEvents = 10000

type benchRow struct {
	Key     string `json:"key"`
	Seq     int    `json:"seq"`
	Payload string `json:"payload"`
}

func benchBatchInsert(b *testing.B, batch bool, conc int) {
	tdb := newTestDB(b, sqldriver.Postgres)
	db := tdb.Open(b)
	db.SetMaxOpenConns(conc + 2)
	table := "bench_rows_" + strings.ToLower(herald.NewKSUID())
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE "`+table+`" (id text PRIMARY KEY, k text NOT NULL, seq integer NOT NULL, payload text NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = db.ExecContext(context.Background(), `DROP TABLE "`+table+`"`) })
	payload := strings.Repeat("x", 200)

	var msgs, cpu time.Duration
	var events int
	var inserts atomic.Int64
	b.ResetTimer()
	for range b.N {
		start, cpu0 := time.Now(), testenv.ProcessCPU()
		benchBatchDrain(b, db, table, payload, batch, conc, &inserts)
		msgs += time.Since(start)
		cpu += testenv.ProcessCPU() - cpu0
		events += benchBatchEvents
	}
	b.StopTimer()
	b.ReportMetric(float64(events)/msgs.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(events), "cpu-µs/msg")
	b.ReportMetric(float64(events)/float64(inserts.Load()), "rows/INSERT")
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM "`+table+`"`).Scan(&n); err != nil || n != events {
		b.Fatalf("%d rows (%v), want %d", n, err, events)
	}
}

// benchBatchDrain runs one bus until benchBatchEvents events are rows.
// inserts counts the INSERT statements.
func benchBatchDrain(b *testing.B, db *sql.DB, table, payload string, batch bool, conc int, inserts *atomic.Int64) {
	broker := memtest.Broker(b, memdriver.WithCapacity(benchBatchEvents))
	bus, err := herald.NewBus(broker, herald.WithLogger(slog.New(slog.DiscardHandler)), herald.WithErrorHandler(func(err error) { b.Error(err) }), herald.WithoutTelemetry())
	if err != nil {
		b.Fatal(err)
	}
	must(b, herald.Register[benchRow](bus, "rows", herald.WithKey(func(r benchRow) string { return r.Key })))
	var written atomic.Int64
	done := make(chan struct{})
	count := func(n int) {
		inserts.Add(1)
		if written.Add(int64(n)) == benchBatchEvents {
			close(done)
		}
	}
	insert := `INSERT INTO "` + table + `" (id, k, seq, payload) VALUES `
	if batch {
		err = herald.SubscribeBatch(bus, "writer", func(ctx context.Context, items []herald.Item[benchRow]) error {
			var q strings.Builder
			q.WriteString(insert)
			args := make([]any, 0, 4*len(items))
			for i, it := range items {
				if i > 0 {
					q.WriteString(", ")
				}
				n := 4 * i
				fmt.Fprintf(&q, "($%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4)
				args = append(args, it.Message.ID, it.Event.Key, it.Event.Seq, it.Event.Payload)
			}
			if _, err := db.ExecContext(ctx, q.String(), args...); err != nil {
				return err
			}
			count(len(items))
			return nil
		}, herald.WithBatch(100, 5*time.Millisecond), herald.WithConcurrency(conc))
	} else {
		one := insert + "($1, $2, $3, $4)"
		err = herald.Subscribe(bus, "writer", func(ctx context.Context, r benchRow, m *herald.Message) error {
			if _, err := db.ExecContext(ctx, one, m.ID, r.Key, r.Seq, r.Payload); err != nil {
				return err
			}
			count(1)
			return nil
		}, herald.WithConcurrency(conc))
	}
	must(b, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	must(b, bus.Start(ctx))
	for i := 0; i < benchBatchEvents; i += 500 {
		events := make([]any, 0, 500)
		for j := i; j < i+500; j++ {
			events = append(events, benchRow{Key: "k" + strconv.Itoa(j%1000), Seq: j, Payload: payload})
		}
		must(b, bus.Publish(ctx, events...))
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("%d of %d rows written", written.Load(), benchBatchEvents)
	}
	must(b, bus.Shutdown(ctx))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
