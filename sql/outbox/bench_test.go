package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
	"github.com/heraldbus/herald/sql/outbox"
)

// Benchmarks against the PostgreSQL of the test environment. Run them with
//
//	go test -run '^$' -bench . -benchtime 3x ./outbox        (or -benchtime 2s)
//
// They report events/s (and latency percentiles) with b.ReportMetric; ns/op
// is per transaction for the publish benchmarks and per drained backlog for
// the relay one.

const benchPayload = 256

// benchPublishers is the number of goroutines that publish at once, as in
// the Watermill baseline (../shared/notes/watermill-baseline.md).
const benchPublishers = 16

func benchMsg(seq int) *herald.Message {
	return &herald.Message{
		ID:          herald.NewKSUID(),
		Topic:       "bench",
		Key:         "k" + strconv.Itoa(seq%1000),
		Headers:     herald.Headers{herald.HeaderEvent: "BenchEvent"},
		ContentType: "application/json",
		Data:        make([]byte, benchPayload),
		Time:        time.Now(),
	}
}

func benchDB(b *testing.B) (*testDB, *sql.DB, string) {
	b.Helper()
	tdb := newTestDB(b, outbox.Postgres)
	db := tdb.Open(b)
	db.SetMaxOpenConns(benchPublishers)
	db.SetMaxIdleConns(benchPublishers)
	return tdb, db, migrateTable(b, tdb, db)
}

// BenchmarkPublish measures transactions that publish into the outbox (one
// event, or 100 in one multi-row INSERT) against the same transaction with
// a bare single-row INSERT into an identical table: the commit-bound
// ceiling.
func BenchmarkPublish(b *testing.B) {
	for _, bc := range []struct {
		name  string
		batch int
		bare  bool
		opts  []outbox.WriterOption
		// noIndexes drops the indexes of delayed delivery (the cost of
		// keeping them on every insert is the difference).
		noIndexes bool
	}{
		{"bare-insert/1", 1, true, nil, false},
		{"outbox/1", 1, false, nil, false},
		{"outbox-without-notify/1", 1, false, []outbox.WriterOption{outbox.WithoutNotify()}, false},
		{"bare-insert/100", 100, true, nil, false},
		{"outbox/100", 100, false, nil, false},
		{"outbox-without-delay-indexes/1", 1, false, nil, true},
		{"outbox-without-delay-indexes/100", 100, false, nil, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tdb, db, table := benchDB(b)
			if bc.noIndexes {
				for _, ix := range []string{table + "_ready_idx", table + "_due_idx"} {
					if _, err := db.Exec("DROP INDEX " + tdb.Quote(ix)); err != nil {
						b.Fatal(err)
					}
				}
			}
			w := newWriter(b, outbox.Postgres, table, bc.opts...)
			bare := `INSERT INTO "` + table + `" (message_id, topic, msg_key, headers, content_type, payload, created_at) VALUES `
			for i := range bc.batch {
				if i > 0 {
					bare += ","
				}
				n := i * 7
				bare += fmt.Sprintf("($%d,$%d,$%d,$%d,$%d,$%d,$%d)", n+1, n+2, n+3, n+4, n+5, n+6, n+7)
			}
			ctx := context.Background()
			var seq atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(max(1, benchPublishers/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				msgs := make([]*herald.Message, bc.batch)
				args := make([]any, 0, 7*bc.batch)
				for pb.Next() {
					for i := range msgs {
						msgs[i] = benchMsg(int(seq.Add(1)))
					}
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						b.Error(err)
						return
					}
					if bc.bare {
						args = args[:0]
						for _, m := range msgs {
							args = append(args, m.ID, m.Topic, m.Key, `{"herald-event":"BenchEvent"}`, m.ContentType, m.Data, m.Time.UTC())
						}
						_, err = tx.ExecContext(ctx, bare, args...)
					} else {
						err = w.WriteTx(ctx, tx, msgs)
					}
					if err != nil {
						_ = tx.Rollback()
						b.Error(err)
						return
					}
					if err := tx.Commit(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*bc.batch)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// countingWriter forwards to a Writer and counts what it accepted.
type countingWriter struct {
	herald.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(ctx context.Context, msgs []*herald.Message) error {
	if err := c.Writer.Write(ctx, msgs); err != nil {
		return err
	}
	c.n.Add(int64(len(msgs)))
	return nil
}

// fillBacklog writes n rows in 1000-row transactions.
func fillBacklog(b *testing.B, db *sql.DB, w *outbox.Writer, n int) {
	b.Helper()
	for done := 0; done < n; {
		k := min(1000, n-done)
		msgs := make([]*herald.Message, k)
		for i := range msgs {
			msgs[i] = benchMsg(done + i)
		}
		writeTx(b, db, w, msgs...)
		done += k
	}
}

// BenchmarkRelayThroughput drains a backlog of rows from PostgreSQL into
// the memory driver; one op is one whole backlog.
func BenchmarkRelayThroughput(b *testing.B) {
	for _, backlog := range []int{10_000, 100_000} {
		for _, lanes := range []int{1, 4} {
			b.Run(fmt.Sprintf("backlog=%d/lanes=%d", backlog, lanes), func(b *testing.B) {
				_, db, table := benchDB(b)
				w := newWriter(b, outbox.Postgres, table)
				broker := memtest.Broker(b, memdriver.WithCapacity(1024))
				defer broker.Close()
				target := &countingWriter{Writer: broker}
				var elapsed time.Duration
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					fillBacklog(b, db, w, backlog)
					if _, err := db.Exec(`VACUUM ANALYZE "` + table + `"`); err != nil {
						b.Fatal(err)
					}
					target.n.Store(0)
					r, err := outbox.NewRelay(db, outbox.Postgres, table, target, outbox.WithLanes(lanes),
						outbox.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					start := time.Now()
					done := make(chan error, 1)
					go func() { done <- r.Run(context.Background()) }()
					for target.n.Load() < int64(backlog) {
						time.Sleep(200 * time.Microsecond)
					}
					elapsed += time.Since(start)
					b.StopTimer()
					if err := r.Shutdown(context.Background()); err != nil {
						b.Fatal(err)
					}
					if err := <-done; err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(b.N*backlog)/elapsed.Seconds(), "events/s")
			})
		}
	}
}

// BenchmarkCommitToHandler publishes one event per transaction at a fixed
// rate (1,000/s, from several goroutines) through an outbox Writer, relays
// it to the memory driver, and handles it with a herald.Bus subscriber. It
// reports the latency from the start of the commit to the start of the
// handler (p50, p99, max), the commit's own duration (commit-p50/p99, the
// floor of the first figures), and, after the load, how many read queries
// the idle relay issues per second.
func BenchmarkCommitToHandler(b *testing.B) {
	const rate = 1000
	for _, listen := range []bool{true, false} {
		name := "listen"
		if !listen {
			name = "poll-only"
		}
		b.Run(name, func(b *testing.B) {
			_, db, table := benchDB(b)
			w := newWriter(b, outbox.Postgres, table)
			broker := memtest.Broker(b)
			defer broker.Close()
			bus, err := herald.NewBus(broker, herald.WithPublishWriter(w))
			if err != nil {
				b.Fatal(err)
			}
			type BenchEvent struct{ Seq int }
			herald.MustRegister[BenchEvent](bus, "latency")

			commitAt := make([]atomic.Int64, b.N)
			latency := make([]time.Duration, b.N)
			commitDur := make([]time.Duration, b.N)
			var handled atomic.Int64
			allDone := make(chan struct{})
			err = herald.Subscribe(bus, "bench", func(ctx context.Context, e BenchEvent, m *herald.Message) error {
				now := time.Now().UnixNano()
				for commitAt[e.Seq].Load() == 0 {
					// The relay can see the row before Commit returns to the
					// publisher; the start time is stored before Commit.
					time.Sleep(time.Microsecond)
				}
				latency[e.Seq] = time.Duration(now - commitAt[e.Seq].Load())
				if handled.Add(1) == int64(b.N) {
					close(allDone)
				}
				return nil
			}, herald.WithConcurrency(4))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := bus.Start(ctx); err != nil {
				b.Fatal(err)
			}
			defer bus.Shutdown(ctx)
			opts := []outbox.RelayOption{outbox.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}
			if !listen {
				opts = append(opts, outbox.WithoutListen())
			}
			r, err := outbox.NewRelay(db, outbox.Postgres, table, broker, opts...)
			if err != nil {
				b.Fatal(err)
			}
			go r.Run(ctx)
			defer r.Shutdown(ctx)
			for !r.Active() {
				time.Sleep(time.Millisecond)
			}

			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for {
						i := int(next.Add(1) - 1)
						if i >= b.N {
							return
						}
						time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
						tx, err := db.BeginTx(ctx, nil)
						if err != nil {
							b.Error(err)
							return
						}
						if err := bus.Publish(outbox.WithTx(ctx, tx), BenchEvent{Seq: i}); err != nil {
							b.Error(err)
							return
						}
						commitAt[i].Store(time.Now().UnixNano())
						if err := tx.Commit(); err != nil {
							b.Error(err)
							return
						}
						commitDur[i] = time.Duration(time.Now().UnixNano() - commitAt[i].Load())
					}
				})
			}
			wg.Wait()
			select {
			case <-allDone:
			case <-time.After(liveness):
				b.Fatalf("%d of %d events handled", handled.Load(), b.N)
			}
			b.StopTimer()
			slices.Sort(latency)
			pct := func(p float64) float64 {
				return float64(latency[min(len(latency)-1, int(p*float64(len(latency))))]) / float64(time.Millisecond)
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(latency[len(latency)-1])/float64(time.Millisecond), "max-ms")
			latency = commitDur
			slices.Sort(latency)
			b.ReportMetric(pct(0.50), "commit-p50-ms")
			b.ReportMetric(pct(0.99), "commit-p99-ms")

			if b.N < 100 {
				return // the calibration run; the idle cost is measured once
			}
			// Idle cost: read queries per second once the relay has
			// settled at its maximum poll interval.
			time.Sleep(3 * time.Second)
			before, err := r.Stats(ctx)
			if err != nil {
				b.Fatal(err)
			}
			const idle = 5 * time.Second
			time.Sleep(idle)
			after, err := r.Stats(ctx)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(after.Reads-before.Reads)/idle.Seconds(), "idle-reads/s")
		})
	}
}
