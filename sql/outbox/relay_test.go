package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/sql/outbox"
)

// killSession ends the database session of the relay that holds table's
// lock, from the server side, and returns once it is gone: what the
// database sees when a relay process dies. It returns false on SQLite,
// which has no sessions.
func killSession(t testing.TB, tdb *testDB, admin *sql.DB, table string) bool {
	t.Helper()
	switch tdb.D {
	case outbox.Postgres:
		var schema string
		if err := admin.QueryRow("SELECT current_schema()").Scan(&schema); err != nil {
			t.Fatal(err)
		}
		key := uint64(outbox.LockKey(schema, table))
		var ok bool
		// The bigint form of an advisory lock shows its high half as
		// classid and its low half as objid.
		err := admin.QueryRow(`SELECT pg_terminate_backend(pid, 10000) FROM pg_locks
			WHERE locktype = 'advisory' AND objsubid = 1
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND classid::bigint = $1 AND objid::bigint = $2`, int64(key>>32), int64(key&0xffffffff)).Scan(&ok)
		if err != nil || !ok {
			t.Fatalf("terminate the relay's session: %v, %v", ok, err)
		}
		return true
	case outbox.MySQL:
		var database string
		if err := admin.QueryRow("SELECT DATABASE()").Scan(&database); err != nil {
			t.Fatal(err)
		}
		name := outbox.LockName(database, table)
		var id sql.NullInt64
		if err := admin.QueryRow("SELECT IS_USED_LOCK(?)", name).Scan(&id); err != nil || !id.Valid {
			t.Fatalf("find the relay's session: %v, %v", id, err)
		}
		if _, err := admin.Exec(fmt.Sprintf("KILL CONNECTION %d", id.Int64)); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the killed session's lock to go", func() bool {
			var holder sql.NullInt64
			if err := admin.QueryRow("SELECT IS_USED_LOCK(?)", name).Scan(&holder); err != nil {
				t.Fatal(err)
			}
			return holder.Int64 != id.Int64
		})
		return true
	}
	return false
}

// TestCrashBetweenWriteAndDelete kills the relay after the target accepted
// a batch and before the relay deleted it: the batch is delivered again
// (a duplicate), nothing is lost, and per-key order holds.
func TestCrashBetweenWriteAndDelete(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		admin := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		var msgs []*herald.Message
		for seq := range 5 {
			for _, k := range []string{"a", "b", "c", "d"} {
				msgs = append(msgs, seqMsg("orders", k, seq))
			}
		}
		writeTx(t, db, w, msgs...)

		const batch = 6
		rec := &recorder{}
		var crashed atomic.Bool
		ctx, crash := context.WithCancel(context.Background())
		rec.onWrite = func([]*herald.Message) {
			if crashed.CompareAndSwap(false, true) {
				// The session dies with the batch written and not deleted.
				// SQLite has no session to kill: the process dies instead.
				if !killSession(t, tdb, admin, table) {
					crash()
				}
			}
		}
		r, err := outbox.NewRelay(db, tdb.D, table, rec, append(fastOptions(t), outbox.WithBatchSize(batch))...)
		if err != nil {
			t.Fatal(err)
		}
		runErr := make(chan error, 1)
		go func() { runErr <- r.Run(ctx) }()
		defer crash()

		if tdb.D == outbox.SQLite {
			eventually(t, "the crash", crashed.Load)
			if err := <-runErr; err != nil {
				t.Fatal(err)
			}
			if n := countRows(t, tdb, db, table); n != len(msgs) {
				t.Fatalf("%d rows left after the crash, want all %d (none deleted)", n, len(msgs))
			}
			startRelay(t, tdb.Open(t), tdb.D, table, rec, outbox.WithBatchSize(batch))
		}
		// On the servers the same relay finds its session gone, and
		// starts over on a new one.
		eventually(t, "every message", func() bool { return rec.distinct() == len(msgs) })
		eventually(t, "the outbox to empty", func() bool { return countRows(t, tdb, db, table) == 0 })
		got := rec.messages()
		counts := checkKeyOrder(t, got, 0)
		for k, n := range counts {
			if n != 5 {
				t.Errorf("key %s: %d messages, want 5", k, n)
			}
		}
		times := map[string]int{}
		for _, m := range got {
			times[m.ID]++
		}
		for i, m := range msgs {
			if i < batch && times[m.ID] != 2 {
				t.Errorf("message %s of the crashed batch delivered %d times, want 2 (at-least-once)", m.ID, times[m.ID])
			}
			if i >= batch && times[m.ID] != 1 {
				t.Errorf("message %s delivered %d times, want 1", m.ID, times[m.ID])
			}
		}
	})
}

// TestThreeRelaysOneTable runs three relays (three "processes", each with
// its own *sql.DB) on one table while 10,000 rows over 100 keys are
// written, and kills the active relay halfway: every row is delivered,
// per-key order holds, and no two relays deliver at once.
func TestThreeRelaysOneTable(t *testing.T) {
	for _, d := range []outbox.Dialect{outbox.Postgres, outbox.MySQL} {
		t.Run(d.String(), func(t *testing.T) {
			tdb := newTestDB(t, d)
			db := tdb.Open(t)
			table := migrateTable(t, tdb, db)
			w := newWriter(t, d, table)

			rec := &recorder{}
			var relays []*runningRelay
			var overlaps atomic.Int32
			var mu sync.Mutex
			rec.fail = func([]*herald.Message) error {
				mu.Lock()
				defer mu.Unlock()
				active := 0
				for _, r := range relays {
					if r.Active() {
						active++
					}
				}
				if active > 1 {
					overlaps.Add(1)
				}
				return nil
			}
			mu.Lock()
			for i := range 3 {
				relays = append(relays, startRelay(t, tdb.Open(t), d, table, rec,
					outbox.WithBatchSize(250), outbox.WithLanes(1+i)))
			}
			mu.Unlock()

			const writers, keysPerWriter, txs = 4, 25, 100
			var wg sync.WaitGroup
			for wr := range writers {
				wg.Go(func() {
					// Each key belongs to one writer, which commits its
					// transactions one after the other: writes of one key
					// are serialized, as the package doc requires.
					for seq := range txs {
						msgs := make([]*herald.Message, keysPerWriter)
						for k := range msgs {
							msgs[k] = seqMsg("orders", fmt.Sprintf("k%02d-%02d", wr, k), seq)
						}
						writeTx(t, db, w, msgs...)
					}
				})
			}

			eventually(t, "a third of the rows", func() bool { return rec.distinct() >= writers*keysPerWriter*txs/3 })
			mu.Lock()
			var victim *runningRelay
			for _, r := range relays {
				if r.Active() {
					victim = r
				}
			}
			mu.Unlock()
			if victim == nil {
				t.Fatal("no relay is active while rows flow")
			}
			victim.kill(t)

			wg.Wait()
			total := writers * keysPerWriter * txs
			eventually(t, "every row", func() bool { return rec.distinct() == total })
			counts := checkKeyOrder(t, rec.messages(), 0)
			if len(counts) != writers*keysPerWriter {
				t.Errorf("%d keys delivered, want %d", len(counts), writers*keysPerWriter)
			}
			for k, n := range counts {
				if n != txs {
					t.Errorf("key %s: %d messages, want %d", k, n, txs)
				}
			}
			eventually(t, "the outbox to empty", func() bool { return countRows(t, tdb, db, table) == 0 })
			if n := overlaps.Load(); n > 0 {
				t.Errorf("%d target writes happened while two relays were active", n)
			}
		})
	}
}

// TestPoisonRowQuarantined checks that a row the target keeps refusing is
// quarantined after MaxAttempts, that other keys flow meanwhile, that the
// later rows of its key wait for it and then go, and that it can be
// replayed.
func TestPoisonRowQuarantined(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		poison := seqMsg("orders", "a", 1)
		poison.ID = "poison"
		writeTx(t, db, w,
			seqMsg("orders", "a", 0), poison, seqMsg("orders", "a", 2),
			seqMsg("orders", "b", 0), seqMsg("orders", "b", 1), seqMsg("orders", "b", 2),
			&herald.Message{ID: "keyless", Topic: "orders", Headers: herald.Headers{"seq": "0"}})

		var healed atomic.Bool
		var refused atomic.Int32
		rec := &recorder{fail: func(msgs []*herald.Message) error {
			for _, m := range msgs {
				if m.ID == "poison" && !healed.Load() {
					refused.Add(1)
					return errors.New("broker: record rejected by schema check")
				}
			}
			return nil
		}}
		const maxAttempts = 4
		startRelay(t, db, tdb.D, table, rec, outbox.WithMaxAttempts(maxAttempts))

		q, err := outbox.NewQuarantine(db, tdb.D, table)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		eventually(t, "the poison row in quarantine", func() bool {
			n, err := q.Count(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return n == 1
		})
		eventually(t, "the other rows", func() bool { return rec.distinct() == 6 })

		got := rec.messages()
		at := map[string]int{}
		for i, m := range got {
			if _, dup := at[m.ID]; dup {
				t.Errorf("message %s delivered twice", m.ID)
			}
			at[m.ID] = i
		}
		if _, ok := at["poison"]; ok {
			t.Error("the poison row was delivered")
		}
		if !(at["a-0"] < at["a-2"]) {
			t.Errorf("a-2 (at %d) overtook a-0 (at %d)", at["a-2"], at["a-0"])
		}
		for _, id := range []string{"b-2", "keyless"} {
			if !(at[id] < at["a-2"]) {
				t.Errorf("%s waited for the poison row of another key", id)
			}
		}
		if n := refused.Load(); n < maxAttempts {
			t.Errorf("the poison row was tried %d times, want at least %d", n, maxAttempts)
		}

		list, err := q.List(ctx, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 {
			t.Fatalf("List = %d rows, want 1", len(list))
		}
		qm := list[0]
		if qm.Message.ID != "poison" || qm.Message.Key != "a" || qm.Message.Topic != "orders" ||
			qm.Message.Headers.Get("seq") != "1" || string(qm.Message.Data) != "1" || qm.Message.ContentType != "text/plain" {
			t.Errorf("quarantined message = %+v", qm.Message)
		}
		if qm.Attempts != maxAttempts || !strings.Contains(qm.LastError, "rejected by schema check") || qm.OutboxID <= 0 || qm.QuarantinedAt.IsZero() {
			t.Errorf("quarantine row = %+v", qm)
		}
		eventually(t, "the outbox to empty", func() bool { return countRows(t, tdb, db, table) == 0 })

		healed.Store(true)
		n, err := q.Replay(ctx, qm.ID)
		if err != nil || n != 1 {
			t.Fatalf("Replay = %d, %v", n, err)
		}
		eventually(t, "the replayed row", func() bool { return rec.distinct() == 7 })
		if n, err := q.Count(ctx); err != nil || n != 0 {
			t.Errorf("quarantine after replay: %d, %v", n, err)
		}
	})
}

// TestQuarantineReplayAllAndDiscard exercises the operator functions.
func TestQuarantineReplayAllAndDiscard(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		var msgs []*herald.Message
		for i := range 5 {
			msgs = append(msgs, seqMsg("orders", fmt.Sprintf("k%d", i), 0))
		}
		writeTx(t, db, w, msgs...)
		var healed atomic.Bool
		rec := &recorder{fail: func(msgs []*herald.Message) error {
			if healed.Load() {
				return nil
			}
			return herald.Permanent(errors.New("no such topic"))
		}}
		r := startRelay(t, db, tdb.D, table, rec, outbox.WithMaxAttempts(1))
		q, err := outbox.NewQuarantine(db, tdb.D, table)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		eventually(t, "five rows in quarantine", func() bool { n, _ := q.Count(ctx); return n == 5 })
		list, err := q.List(ctx, 0, 2)
		if err != nil || len(list) != 2 {
			t.Fatalf("List(0, 2) = %d rows, %v", len(list), err)
		}
		rest, err := q.List(ctx, list[1].ID, 10)
		if err != nil || len(rest) != 3 {
			t.Fatalf("List(after, 10) = %d rows, %v", len(rest), err)
		}
		if n, err := q.Discard(ctx, list[0].ID); err != nil || n != 1 {
			t.Fatalf("Discard = %d, %v", n, err)
		}
		healed.Store(true)
		if n, err := q.ReplayAll(ctx); err != nil || n != 4 {
			t.Fatalf("ReplayAll = %d, %v", n, err)
		}
		eventually(t, "the replayed rows", func() bool { return rec.distinct() == 4 })
		if n, err := q.ReplayAll(ctx); err != nil || n != 0 {
			t.Errorf("ReplayAll of an empty quarantine = %d, %v", n, err)
		}
		eventually(t, "stats to count the replayed rows", func() bool {
			st, err := r.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return st.Quarantined == 5 && st.Quarantine == 0 && st.Sent == 4 && st.Backlog == 0
		})
	})
}

// TestOutageChargesNothing checks that a target that is down, or rejects
// every key, does not get rows quarantined, even with MaxAttempts 1; the
// rows go out in order once it recovers.
func TestOutageChargesNothing(t *testing.T) {
	outages := map[string]error{
		"unreachable":      &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED},
		"rejects-all-keys": errors.New("broker: cluster is read-only"),
	}
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		for name, outage := range outages {
			// The target comes back after a number of refused writes, so
			// at a different point of a round each time: before the
			// round, or after one or two of its keys were refused.
			for _, refusals := range []int32{12, 13, 14, 15} {
				t.Run(fmt.Sprintf("%s/back-after-%d", name, refusals), func(t *testing.T) {
					testOutage(t, tdb, outage, refusals)
				})
			}
		}
	})
}

// testOutage writes three rows for each of six keys, lets the target
// refuse the first refusals writes with outage and accept the rest, and
// checks that every row arrives in key order and none was quarantined
// (the relay allows one attempt per row).
func testOutage(t *testing.T, tdb *testDB, outage error, refusals int32) {
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	w := newWriter(t, tdb.D, table)
	var msgs []*herald.Message
	for seq := range 3 {
		for k := range 6 {
			msgs = append(msgs, seqMsg("orders", fmt.Sprintf("k%d", k), seq))
		}
	}
	writeTx(t, db, w, msgs...)
	var writes atomic.Int32
	rec := &recorder{fail: func([]*herald.Message) error {
		if writes.Add(1) <= refusals {
			return outage
		}
		return nil
	}}
	startRelay(t, db, tdb.D, table, rec, outbox.WithMaxAttempts(1))
	eventually(t, "every row", func() bool { return rec.distinct() == len(msgs) })
	checkKeyOrder(t, rec.messages(), 0)
	q, err := outbox.NewQuarantine(db, tdb.D, table)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := q.Count(context.Background()); err != nil || n != 0 {
		t.Errorf("%d rows quarantined during an outage (%v)", n, err)
	}
}

// TestPicksUpRowsWrittenWhileDown stops the relay, writes, and starts a
// new one: it delivers what was written meanwhile, after what the first
// one delivered, in order.
func TestPicksUpRowsWrittenWhileDown(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		rec := &recorder{}
		first := startRelay(t, db, tdb.D, table, rec)
		for seq := range 3 {
			writeTx(t, db, w, seqMsg("orders", "a", seq), seqMsg("orders", "b", seq))
		}
		eventually(t, "the first rows", func() bool { return rec.distinct() == 6 })
		first.shutdown(t)
		for seq := 3; seq < 10; seq++ {
			writeTx(t, db, w, seqMsg("orders", "a", seq), seqMsg("orders", "b", seq))
		}
		if n := countRows(t, tdb, db, table); n != 14 {
			t.Fatalf("%d rows waiting, want 14", n)
		}
		startRelay(t, db, tdb.D, table, rec)
		eventually(t, "the rows written while down", func() bool { return rec.distinct() == 20 })
		checkKeyOrder(t, rec.messages(), 0)
	})
}

// TestNotifyWakesRelay sets the idle poll interval to an hour: a row
// committed while the relay idles still arrives, so the relay was woken by
// the NOTIFY that the writer issued in the transaction.
func TestNotifyWakesRelay(t *testing.T) {
	tdb := newTestDB(t, outbox.Postgres)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	// Every transaction notifies: by default a write soon after another
	// would count on a poll that this test pushes an hour away.
	w := newWriter(t, outbox.Postgres, table, outbox.WithNotifyPause(0))
	rec := &recorder{}
	r := startRelay(t, db, outbox.Postgres, table, rec, outbox.WithPollInterval(time.Hour, time.Hour))
	ctx := context.Background()
	eventually(t, "the relay to go idle", func() bool {
		st, err := r.Stats(ctx)
		return err == nil && st.Active && st.Reads >= 1
	})
	for seq := range 3 {
		writeTx(t, db, w, seqMsg("orders", "k", seq))
		eventually(t, "the notified row", func() bool { return rec.distinct() == seq+1 })
	}
	checkKeyOrder(t, rec.messages(), 0)
	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One read at start, then one per wake-up (and at most one more each
	// if a notification raced a read): never a poll.
	if st.Reads > 1+2*3*2 {
		t.Errorf("%d reads for 3 rows with an hour-long poll interval", st.Reads)
	}
}

// TestRetention keeps sent rows in the _sent table, then purges them.
func TestRetention(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		for seq := range 10 {
			writeTx(t, db, w, seqMsg("orders", "k", seq))
		}
		rec := &recorder{}
		keep := startRelay(t, db, tdb.D, table, rec, outbox.WithRetention(time.Hour))
		eventually(t, "every row", func() bool { return rec.distinct() == 10 })
		eventually(t, "the rows moved to _sent", func() bool {
			return countRows(t, tdb, db, table) == 0 && countRows(t, tdb, db, table+"_sent") == 10
		})
		keep.shutdown(t)
		var id int64
		var msgID string
		if err := db.QueryRow("SELECT outbox_id, message_id FROM "+tdb.Quote(table+"_sent")+" ORDER BY id LIMIT 1").Scan(&id, &msgID); err != nil {
			t.Fatal(err)
		}
		if id <= 0 || msgID != "k-0" {
			t.Errorf("first sent row: outbox_id %d, message_id %q", id, msgID)
		}

		startRelay(t, db, tdb.D, table, rec, outbox.WithRetention(time.Millisecond), outbox.WithPurgeBatch(3))
		eventually(t, "the purge", func() bool { return countRows(t, tdb, db, table+"_sent") == 0 })
	})
}

// TestStatsHook checks what the stats report.
func TestStatsHook(t *testing.T) {
	tdb := newTestDB(t, outbox.SQLite)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	w := newWriter(t, outbox.SQLite, table)
	old := seqMsg("orders", "k", 0)
	old.Time = time.Now().Add(-time.Hour)
	writeTx(t, db, w, old, seqMsg("orders", "k", 1), seqMsg("orders", "bad", 0))

	rec := &recorder{fail: func(msgs []*herald.Message) error {
		for _, m := range msgs {
			if m.Key == "bad" {
				return fmt.Errorf("broker: %w", herald.ErrMessageTooLarge)
			}
		}
		return nil
	}}
	r, err := outbox.NewRelay(db, outbox.SQLite, table, rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Backlog != 3 || st.OldestAge < 59*time.Minute || st.Active || st.Sent != 0 {
		t.Errorf("stats before Run = %+v", st)
	}

	var last atomic.Pointer[outbox.Stats]
	startRelay(t, db, outbox.SQLite, table, rec, outbox.WithMaxAttempts(1),
		outbox.WithStatsHook(10*time.Millisecond, func(s outbox.Stats) { last.Store(&s) }))
	eventually(t, "stats of the finished work", func() bool {
		s := last.Load()
		return s != nil && s.Sent == 2 && s.Quarantined == 1 && s.Quarantine == 1 && s.Backlog == 0
	})
	s := last.Load()
	if !s.Active || s.Failures < 1 || s.Reads < 1 || s.OldestAge != 0 {
		t.Errorf("stats = %+v", *s)
	}
}

// TestRunOnceAndShutdown checks the lifecycle rules.
func TestRunOnceAndShutdown(t *testing.T) {
	tdb := newTestDB(t, outbox.SQLite)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	ctx := context.Background()

	closed, err := outbox.NewRelay(db, outbox.SQLite, table, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if err := closed.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := closed.Run(ctx); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Run after Shutdown = %v, want ErrClosed", err)
	}

	rr := startRelay(t, db, outbox.SQLite, table, &recorder{})
	eventually(t, "the relay to be active", rr.Active)
	if err := rr.Run(ctx); !errors.Is(err, outbox.ErrRelayStarted) {
		t.Errorf("second Run = %v, want ErrRelayStarted", err)
	}
	rr.shutdown(t)
	if rr.Active() {
		t.Error("active after Shutdown")
	}
	if err := rr.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown = %v", err)
	}
}

// TestGracefulShutdownFinishesTheRound stops the relay while the target
// is writing: Shutdown waits for the write and the delete, so nothing is
// delivered twice.
func TestGracefulShutdownFinishesTheRound(t *testing.T) {
	tdb := newTestDB(t, outbox.SQLite)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	w := newWriter(t, outbox.SQLite, table)
	writeTx(t, db, w, seqMsg("orders", "k", 0), seqMsg("orders", "k", 1))

	inWrite := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	rec := &recorder{fail: func([]*herald.Message) error {
		once.Do(func() { close(inWrite); <-release })
		return nil
	}}
	rr := startRelay(t, db, outbox.SQLite, table, rec)
	<-inWrite
	stopped := make(chan struct{})
	go func() { rr.shutdown(t); close(stopped) }()
	close(release)
	<-stopped
	if n := countRows(t, tdb, db, table); n != 0 {
		t.Errorf("%d rows left after a graceful stop, want 0", n)
	}
	if got := rec.messages(); len(got) != 2 {
		t.Errorf("%d deliveries, want 2", len(got))
	}
}

func TestRelayOptionsValidated(t *testing.T) {
	db, err := sql.Open("sqlite", "file:"+t.TempDir()+"/x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = outbox.NewRelay(db, outbox.SQLite, "outbox", &recorder{},
		outbox.WithBatchSize(0), outbox.WithLanes(1000), outbox.WithBackoff(time.Second, time.Millisecond),
		outbox.WithMaxAttempts(-1), outbox.WithStatsHook(0, func(outbox.Stats) {}))
	if err == nil {
		t.Fatal("NewRelay accepted bad options")
	}
	for _, want := range []string{"batch size", "lanes", "backoff", "max attempts", "stats interval"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := outbox.NewRelay(db, outbox.SQLite, "outbox", nil); err == nil {
		t.Error("NewRelay accepted a nil target")
	}
}

// TestUndecodableRowQuarantined damages a row's headers by hand: the row
// is quarantined like a poison row, the rows of its key before it go out,
// the ones after it wait for it, and other keys flow.
func TestUndecodableRowQuarantined(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		w := newWriter(t, tdb.D, table)
		bad := seqMsg("orders", "a", 1)
		bad.ID = "bad"
		writeTx(t, db, w, seqMsg("orders", "a", 0), bad, seqMsg("orders", "a", 2), seqMsg("orders", "b", 0))
		if _, err := db.Exec("UPDATE " + tdb.Quote(table) + " SET headers = '[1]' WHERE message_id = 'bad'"); err != nil {
			t.Fatal(err)
		}
		rec := &recorder{}
		startRelay(t, db, tdb.D, table, rec, outbox.WithMaxAttempts(2))
		q, err := outbox.NewQuarantine(db, tdb.D, table)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "the other rows", func() bool { return rec.distinct() == 3 })
		if n, err := q.Count(context.Background()); err != nil || n != 1 {
			t.Fatalf("quarantine: %d rows, %v", n, err)
		}
		var order []string
		for _, m := range rec.messages() {
			order = append(order, m.ID)
		}
		if i, j := slices.Index(order, "a-0"), slices.Index(order, "a-2"); i < 0 || j < i {
			t.Errorf("delivery order %v", order)
		}
		list, err := q.List(context.Background(), 0, 1)
		if err != nil || len(list) != 1 {
			t.Fatalf("List = %d rows, %v", len(list), err)
		}
		if qm := list[0]; qm.Message.ID != "bad" || qm.Message.Headers != nil || !strings.Contains(qm.LastError, "headers") {
			t.Errorf("quarantined row %+v", qm)
		}
	})
}

// TestSmallPool gives a PostgreSQL relay a pool of one connection: it
// cannot spare one for LISTEN, and polls instead of hanging.
func TestSmallPool(t *testing.T) {
	tdb := newTestDB(t, outbox.Postgres)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	w := newWriter(t, outbox.Postgres, table)
	small := tdb.Open(t)
	small.SetMaxOpenConns(1)
	rec := &recorder{}
	startRelay(t, small, outbox.Postgres, table, rec)
	for seq := range 3 {
		writeTx(t, db, w, seqMsg("orders", "k", seq))
	}
	eventually(t, "every row", func() bool { return rec.distinct() == 3 })
	checkKeyOrder(t, rec.messages(), 0)
}

// pingingTarget is a target that answers Ping with err.
type pingingTarget struct {
	recorder
	err error
}

func (p *pingingTarget) Ping(context.Context) error { return p.err }

// TestRelayCheck: Check says what stops a relay before it runs: a table
// that does not exist (ErrNoTable), a target that does not answer, a
// database that does not.
func TestRelayCheck(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		ctx := context.Background()
		check := func(table string, target herald.Writer, opts ...outbox.RelayOption) error {
			r, err := outbox.NewRelay(db, tdb.D, table, target, opts...)
			if err != nil {
				t.Fatal(err)
			}
			return r.Check(ctx)
		}
		if err := check(table, &pingingTarget{}); err != nil {
			t.Errorf("Check of a migrated table: %v", err)
		}
		if err := check(table, &recorder{}, outbox.WithRetention(time.Hour)); err != nil {
			t.Errorf("Check with retention: %v", err)
		}
		missing := tableName(t, tdb, db)
		if err := check(missing, &recorder{}); !errors.Is(err, outbox.ErrNoTable) || !strings.Contains(err.Error(), missing) {
			t.Errorf("Check of a table that does not exist = %v, want ErrNoTable naming it", err)
		}
		down := errors.New("broker down")
		if err := check(table, &pingingTarget{err: down}); !errors.Is(err, down) {
			t.Errorf("Check with a target that does not answer = %v, want %v", err, down)
		}
		closed := tdb.Open(t)
		_ = closed.Close()
		r, err := outbox.NewRelay(closed, tdb.D, table, &recorder{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Check(ctx); err == nil || errors.Is(err, outbox.ErrNoTable) {
			t.Errorf("Check on a closed database = %v, want a database error", err)
		}
	})
}

// eventLog collects a relay's events.
type eventLog struct {
	mu     sync.Mutex
	events []outbox.RelayEvent
}

func (l *eventLog) add(e outbox.RelayEvent) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

// last returns the kind of the newest event (0 for none).
func (l *eventLog) last() outbox.RelayEventKind {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == 0 {
		return 0
	}
	return l.events[len(l.events)-1].Kind
}

func (l *eventLog) has(k outbox.RelayEventKind) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if e.Kind == k {
			return true
		}
	}
	return false
}

// TestRelayEvents: a failover shows as events an operator can watch: the
// first relay Active, the second Standby; the first's session killed, it
// reports LeaseLost and the second Active. A round against a target that
// is down reports RoundFailed, as an outage.
func TestRelayEvents(t *testing.T) {
	for _, d := range []outbox.Dialect{outbox.Postgres, outbox.MySQL} {
		t.Run(d.String(), func(t *testing.T) {
			tdb := newTestDB(t, d)
			db := tdb.Open(t)
			table := migrateTable(t, tdb, db)
			var first, second eventLog
			a := startRelay(t, tdb.Open(t), d, table, &recorder{}, outbox.WithEventHook(first.add))
			eventually(t, "the first relay active", func() bool { return first.has(outbox.Active) && a.Active() })
			startRelay(t, tdb.Open(t), d, table, &recorder{}, outbox.WithEventHook(second.add))
			eventually(t, "the second relay on standby", func() bool { return second.has(outbox.Standby) })
			killSession(t, tdb, tdb.Open(t), table)
			eventually(t, "the first relay's lease lost", func() bool { return first.has(outbox.LeaseLost) })
			eventually(t, "a relay active again", func() bool { return second.has(outbox.Active) || first.last() == outbox.Active })
			first.mu.Lock()
			for _, e := range first.events {
				if e.Table != table || e.Time.IsZero() || (e.Kind == outbox.LeaseLost && e.Err == nil) {
					t.Errorf("event %+v", e)
				}
			}
			first.mu.Unlock()
		})
	}
	t.Run("round failed", func(t *testing.T) {
		tdb := newTestDB(t, outbox.SQLite)
		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		writeTx(t, db, newWriter(t, outbox.SQLite, table), seqMsg("orders", "k", 0))
		down := &recorder{fail: func([]*herald.Message) error { return errors.New("connection refused") }}
		var log eventLog
		startRelay(t, db, outbox.SQLite, table, down, outbox.WithEventHook(log.add))
		eventually(t, "a failed round", func() bool { return log.has(outbox.RoundFailed) })
		log.mu.Lock()
		defer log.mu.Unlock()
		for _, e := range log.events {
			if e.Kind == outbox.RoundFailed && (e.Rows != 1 || e.Err == nil || !strings.Contains(e.Err.Error(), "connection refused")) {
				t.Errorf("round failed event %+v", e)
			}
		}
	})
}
