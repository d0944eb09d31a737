//go:build unix

package inbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/inbox"
	"github.com/heraldbus/herald/sql/internal/sqltest"
)

// BenchmarkHandle measures messages handled through a Bus on the memory
// broker by a handler that inserts one effect row into PostgreSQL: in a
// transaction of its own ("plain-tx": at least once), or in the inbox's
// transaction with the mark ("inbox": exactly once); "plain-tx-2" inserts
// two effect rows in its transaction, the control for what one more
// INSERT costs. An op is one message;
// it reports msgs/s and the process's CPU µs/msg (user + system, the
// database server's not included). Run it with
//
//	go test -run '^$' -bench Handle -benchtime 5000x ./inbox
func BenchmarkHandle(b *testing.B) {
	for _, conc := range []int{1, 8} {
		for _, mode := range []string{"plain-tx", "plain-tx-2", "inbox"} {
			b.Run(fmt.Sprintf("%s/concurrency-%d", mode, conc), func(b *testing.B) { benchHandle(b, mode, conc) })
		}
	}
}

func benchHandle(b *testing.B, mode string, conc int) {
	tdb := sqltest.New(b, inbox.Postgres)
	tdb.MaxOpen = conc + 2
	db := tdb.Open(b)
	eff := newEffects(b, tdb, db)
	insert := "INSERT INTO " + tdb.Quote(eff.table) + " (msg, grp) VALUES ($1, $2)"
	var handled atomic.Int64
	var h herald.HandlerFunc
	switch mode {
	case "plain-tx", "plain-tx-2":
		rows := map[string]int{"plain-tx": 1, "plain-tx-2": 2}[mode]
		h = func(ctx context.Context, m *herald.Message) error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback() }()
			for range rows {
				if _, err := tx.ExecContext(ctx, insert, m.ID, "bench"); err != nil {
					return err
				}
			}
			if err := tx.Commit(); err != nil {
				return err
			}
			handled.Add(1)
			return nil
		}
	default:
		ib := newInbox(b, tdb, db)
		hf, err := ib.Handler("bench", func(ctx context.Context, tx *sql.Tx, m *herald.Message) error {
			_, err := tx.ExecContext(ctx, insert, m.ID, "bench")
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		h = func(ctx context.Context, m *herald.Message) error {
			if err := hf(ctx, m); err != nil {
				return err
			}
			handled.Add(1)
			return nil
		}
	}
	broker, err := memdriver.New()
	if err != nil {
		b.Fatal(err)
	}
	defer broker.Close()
	bus, err := herald.NewBus(broker, herald.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	if err := bus.Handle("bench", "bench", h, herald.WithConcurrency(conc)); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	msgs := make([]*herald.Message, b.N)
	for i := range msgs {
		msgs[i] = &herald.Message{ID: herald.NewKSUID(), Topic: "bench", Key: fmt.Sprintf("k%d", i%1000), Data: make([]byte, 64)}
	}
	for i := 0; i < len(msgs); i += 1000 {
		if err := broker.Write(ctx, msgs[i:min(i+1000, len(msgs))]); err != nil {
			b.Fatal(err)
		}
	}
	cpu0 := testenv.ProcessCPU()
	b.ResetTimer()
	start := time.Now()
	if err := bus.Start(ctx); err != nil {
		b.Fatal(err)
	}
	for handled.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	b.StopTimer()
	cpu := testenv.ProcessCPU() - cpu0
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := bus.Shutdown(sctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/took.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
}
