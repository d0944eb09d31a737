package sqldriver_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// The ordering argument of the package doc, tested: writers hold their
// transactions open for random times (so ids are allocated in one order
// and committed in another) and roll some back, while two members of a
// group read. Every committed message must arrive, none rolled back may,
// and each key's messages (one writer per key, so commit order is the
// key's order) must first arrive in order.
func TestConcurrentWritersNeitherSkipNorReorder(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		e := &env{tdb: tdb, db: tdb.Open(t)}
		e.table = newLog(t, tdb, e.db)
		const writers, perWriter = 8, 40
		topic := "orders"

		var mu sync.Mutex
		seen := map[string]int{}     // key -> highest sequence number first seen
		arrived := map[string]bool{} // message IDs
		var reorders []string
		handle := func(_ context.Context, m *herald.Message) error {
			n, _ := strconv.Atoi(strings.TrimPrefix(m.ID, m.Key+"-"))
			mu.Lock()
			defer mu.Unlock()
			if arrived[m.ID] {
				return nil // a redelivery
			}
			arrived[m.ID] = true
			if n < seen[m.Key] {
				reorders = append(reorders, fmt.Sprintf("%s after %s-%d", m.ID, m.Key, seen[m.Key]))
			}
			seen[m.Key] = max(seen[m.Key], n)
			return nil
		}
		for range 2 {
			bus, err := herald.NewBus(e.driver(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := bus.Handle(topic, "readers", handle, herald.WithConcurrency(4)); err != nil {
				t.Fatal(err)
			}
			ctx := drivertest.Context(t, time.Minute)
			if err := bus.Start(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = bus.Shutdown(context.Background()) })
		}

		writer := e.driver(t)
		committed := make(chan string, writers*perWriter*2)
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprintf("k%d", w)
				for i := 1; i <= perWriter; i++ {
					batch := []*herald.Message{msg(topic, key, fmt.Sprintf("%s-%d", key, 2*i-1)), msg(topic, key, fmt.Sprintf("%s-%d", key, 2*i))}
					rollback := rand.IntN(10) == 0
					if err := writeHeld(e, writer, batch, time.Duration(rand.IntN(20))*time.Millisecond, rollback); err != nil {
						errs <- err
						return
					}
					if !rollback {
						for _, m := range batch {
							committed <- m.ID
						}
					}
				}
			}()
		}
		wg.Wait()
		close(committed)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for id := range committed {
			want[id] = true
		}
		drivertest.Eventually(t, time.Minute, "every committed message arrives", func() bool {
			mu.Lock()
			defer mu.Unlock()
			for id := range want {
				if !arrived[id] {
					return false
				}
			}
			return true
		})
		time.Sleep(200 * time.Millisecond) // let late arrivals of rolled-back rows show, if any
		mu.Lock()
		defer mu.Unlock()
		for id := range arrived {
			if !want[id] {
				t.Errorf("%s arrived but its transaction rolled back", id)
			}
		}
		if len(reorders) > 0 {
			t.Errorf("%d messages arrived before an earlier one of their key: %v", len(reorders), reorders[:min(len(reorders), 5)])
		}
		t.Logf("%d committed messages from %d writers, all arrived in key order", len(want), writers)
	})
}

// writeHeld writes msgs in a transaction it holds open for hold, then
// commits or rolls back.
func writeHeld(e *env, drv *sqldriver.Driver, msgs []*herald.Message, hold time.Duration, rollback bool) error {
	ctx := context.Background()
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := drv.Write(sqldriver.WithTx(ctx, tx), msgs); err != nil {
		_ = tx.Rollback()
		return err
	}
	time.Sleep(hold)
	if rollback {
		return tx.Rollback()
	}
	return tx.Commit()
}
