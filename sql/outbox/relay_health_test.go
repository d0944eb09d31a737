package outbox_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/sql/outbox"
)

func TestRelayCheckHealth(t *testing.T) {
	tdb := newTestDB(t, outbox.SQLite)
	db := tdb.Open(t)
	table := migrateTable(t, tdb, db)
	w := newWriter(t, tdb.D, table)
	var down atomic.Bool
	target := &recorder{fail: func([]*herald.Message) error {
		if down.Load() {
			return herald.Permanent(errors.New("broker refuses"))
		}
		return nil
	}}
	ctx := context.Background()

	idle, err := outbox.NewRelay(db, tdb.D, table, target)
	if err != nil {
		t.Fatal(err)
	}
	if st := idle.CheckHealth(ctx); st.Ready || !strings.Contains(strings.Join(st.Problems, ";"), "not running") {
		t.Fatalf("relay before Run: %+v", st)
	}

	rr := startRelay(t, db, tdb.D, table, target, outbox.WithHealthMaxAge(time.Nanosecond), outbox.WithMaxAttempts(0))
	writeTx(t, db, w, seqMsg("orders", "k", 1))
	eventually(t, "row relayed", func() bool { return len(target.messages()) == 1 })
	eventually(t, "drained relay ready", func() bool { return rr.CheckHealth(ctx).Ready })

	// The target refuses: the row waits, older than the limit.
	down.Store(true)
	writeTx(t, db, w, seqMsg("orders", "k", 2))
	var st herald.HealthStatus
	eventually(t, "stuck relay not ready", func() bool {
		st = rr.CheckHealth(ctx)
		return !st.Ready
	})
	if !strings.Contains(strings.Join(st.Problems, ";"), "oldest row waiting") {
		t.Errorf("problems %q, want the waiting row named", st.Problems)
	}
	if stats, ok := st.Details.(outbox.Stats); !ok || stats.Backlog != 1 {
		t.Errorf("details %+v, want Stats with a backlog of 1", st.Details)
	}
	down.Store(false)
	eventually(t, "recovered relay ready", func() bool { return rr.CheckHealth(ctx).Ready })
	rr.shutdown(t)
	if st := rr.CheckHealth(ctx); st.Ready {
		t.Errorf("stopped relay is ready: %+v", st)
	}
}
