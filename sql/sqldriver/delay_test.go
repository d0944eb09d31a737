package sqldriver_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

func TestDelayPollIntervalIsValidated(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second, time.Microsecond, 2 * time.Minute} {
		_, err := sqldriver.New(&sql.DB{}, sqldriver.Postgres, sqldriver.WithDelayPollInterval(d))
		var oe *herald.OptionError
		if !errors.As(err, &oe) || !errors.Is(err, herald.ErrInvalidOption) || oe.Option != "sqldriver.WithDelayPollInterval" {
			t.Errorf("WithDelayPollInterval(%v): %v, want a *herald.OptionError", d, err)
		}
	}
}

// countRows counts the rows of table (the log's name plus suffix) whose
// message_id starts with prefix, and how many distinct ids they have.
func countRows(t *testing.T, e *env, suffix, prefix string) (rows, distinct int) {
	t.Helper()
	q := "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM " + e.tdb.Quote(e.table+suffix) + " WHERE message_id LIKE '" + prefix + "%'"
	if err := e.db.QueryRow(q).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	return rows, distinct
}

// A delayed message written in the caller's transaction is stored if and
// only if it commits, like an undelayed one.
func TestDelayedInCallerTransaction(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		d := e.driver(t)
		ctx := context.Background()
		topic := drivertest.Name(t, "t")
		for _, commit := range []bool{false, true} {
			prefix := fmt.Sprintf("tx-%v-", commit)
			tx, err := e.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			later, now := msg(topic, "k", prefix+"later"), msg(topic, "k", prefix+"now")
			later.SetDeliverAt(time.Now().Add(time.Hour))
			if err := d.Write(sqldriver.WithTx(ctx, tx), []*herald.Message{later, now}); err != nil {
				t.Fatal(err)
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
			want := map[bool]int{false: 0, true: 1}[commit]
			if n, _ := countRows(t, e, sqldriver.DelayedSuffix, prefix); n != want {
				t.Errorf("commit %v: %d delayed rows, want %d", commit, n, want)
			}
			if n, _ := countRows(t, e, "", prefix); n != want {
				t.Errorf("commit %v: %d log rows, want %d", commit, n, want)
			}
		}
		if n, err := d.Waiting(ctx, topic); err != nil || n != 1 {
			t.Errorf("Waiting = %d, %v; want 1", n, err)
		}
	})
}

// Movers of several processes (drivers) move each due row once.
func TestConcurrentMoversNeitherLoseNorDuplicate(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		ctx := context.Background()
		topic := drivertest.Name(t, "t")
		const n = 1500
		due := time.Now().Add(200 * time.Millisecond)
		var msgs []*herald.Message
		for i := range n {
			m := msg(topic, fmt.Sprint(i%9), fmt.Sprintf("m%04d", i))
			m.SetDeliverAt(due.Add(time.Duration(i%40) * time.Millisecond))
			msgs = append(msgs, m)
		}
		if err := e.driver(t).Write(ctx, msgs); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(due.Add(60 * time.Millisecond)))
		var wg sync.WaitGroup
		for range 4 {
			d := e.driver(t)
			wg.Go(func() {
				for {
					moved, _, err := d.MoveDue(ctx)
					if err != nil {
						t.Error(err)
						return
					}
					if moved == 0 {
						return
					}
				}
			})
		}
		wg.Wait()
		checkMoved(t, e, "m", n)
	})
}

// checkMoved checks that the log holds n rows with ids starting with
// prefix, each id once, and the delayed table none.
func checkMoved(t *testing.T, e *env, prefix string, n int) {
	t.Helper()
	if rows, distinct := countRows(t, e, "", prefix); rows != n || distinct != n {
		t.Errorf("log holds %d rows, %d distinct, want %d", rows, distinct, n)
	}
	if rows, _ := countRows(t, e, sqldriver.DelayedSuffix, prefix); rows != 0 {
		t.Errorf("%d rows still delayed", rows)
	}
}

// moverChildEnv makes TestDelayedSurvivesMoverCrash run runMoverChild;
// its value is a JSON crashChildConfig.
const moverChildEnv = "HERALD_SQL_TEST_MOVER_CHILD"

// runMoverChild subscribes (which runs the driver's mover, polling every
// millisecond) and runs three more movers back to back, says "ready" and
// moves until it is killed or its standard input ends.
func runMoverChild() int {
	var cfg crashChildConfig
	if err := json.Unmarshal([]byte(os.Getenv(moverChildEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "mover child:", err)
		return 2
	}
	db, err := sql.Open(cfg.Driver, cfg.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mover child:", err)
		return 2
	}
	db.SetMaxOpenConns(8)
	ctx := context.Background()
	drv, err := sqldriver.New(db, cfg.Dialect, sqldriver.WithTable(cfg.Table), sqldriver.WithDelayPollInterval(time.Millisecond),
		sqldriver.WithErrorHandler(func(err error) { fmt.Fprintln(os.Stderr, "mover child:", err) }))
	if err == nil {
		_, err = drv.Subscribe(ctx, cfg.Topic, cfg.Group)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mover child:", err)
		return 2
	}
	for range 3 {
		go func() {
			for {
				if _, _, err := drv.MoveDue(ctx); err != nil {
					fmt.Fprintln(os.Stderr, "mover child:", err)
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestDelayedSurvivesMoverCrash writes delayed messages due over about
// three seconds, lets a child process move them and kills it (SIGKILL)
// twice while rows are due, then lets a subscription of this process
// move the rest: the group receives every message once, and the log
// holds each once.
func TestDelayedSurvivesMoverCrash(t *testing.T) {
	if os.Getenv(moverChildEnv) != "" {
		os.Exit(runMoverChild())
	}
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		ctx := context.Background()
		topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
		const n = 600
		w := e.driver(t)
		start := time.Now().Add(500 * time.Millisecond)
		var msgs []*herald.Message
		for i := range n {
			m := msg(topic, fmt.Sprint(i%11), fmt.Sprintf("m%04d", i))
			m.SetDeliverAt(start.Add(time.Duration(i) * 5 * time.Millisecond))
			msgs = append(msgs, m)
		}
		if err := w.Write(ctx, msgs); err != nil {
			t.Fatal(err)
		}
		cfg := crashChildConfig{Dialect: tdb.D, Driver: tdb.Driver, DSN: tdb.DSN, Table: e.table, Topic: topic, Group: group}
		for round := range 2 {
			child := startMoverChild(t, cfg)
			drivertest.Eventually(t, 30*time.Second, "the child moving rows", func() bool {
				left, err := w.Waiting(ctx, topic)
				return err == nil && left < int64(n-(round+1)*n/4)
			})
			if err := child.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			_ = child.Wait()
			left, _ := w.Waiting(ctx, topic)
			t.Logf("round %d: killed the mover with %d of %d rows waiting", round+1, left, n)
			if left == 0 {
				t.Fatalf("round %d: nothing left waiting when the mover was killed; the test proves nothing", round+1)
			}
		}
		sub, err := e.driver(t).Subscribe(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		defer drivertest.CloseSub(t, sub)
		got := drivertest.FetchExactly(t, sub, n)
		seen := map[string]bool{}
		for _, dl := range got {
			if seen[dl.Message.ID] {
				t.Errorf("%s delivered twice", dl.Message.ID)
			}
			seen[dl.Message.ID] = true
		}
		drivertest.Ack(t, sub, got...)
		fctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if k, _ := sub.Fetch(fctx, make([]herald.Delivery, 8)); k > 0 {
			t.Errorf("%d deliveries more than the %d messages", k, n)
		}
		checkMoved(t, e, "m", n)
	})
}

func startMoverChild(t *testing.T, cfg crashChildConfig) *exec.Cmd {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return drivertest.StartReadyChild(t, "^TestDelayedSurvivesMoverCrash$", moverChildEnv+"="+string(b))
}

// TestDelayPrecision measures how late delayed messages arrive at the
// default poll interval on each dialect; it logs figures and asserts only
// correctness.
func TestDelayPrecision(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement of a few seconds")
	}
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		t.Run("Batches", func(t *testing.T) { drivertest.DelayLateness(t, e.driver(t), 300, 3*time.Second) })
		t.Run("Trickle", func(t *testing.T) { drivertest.DelayLatenessTrickle(t, e.driver(t), 300, 500*time.Millisecond) })
	})
}
