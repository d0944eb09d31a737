package inbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/inbox"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
	"github.com/heraldbus/herald/sql/internal/sqltest"
	"github.com/heraldbus/herald/sql/outbox"
)

func TestBadInput(t *testing.T) {
	tdb := sqltest.New(t, inbox.SQLite)
	db := tdb.Open(t)
	for _, c := range []struct {
		name string
		opts []inbox.Option
		d    inbox.Dialect
		db   *sql.DB
		want error
	}{
		{"nil db", nil, inbox.SQLite, nil, herald.ErrInvalidOption},
		{"unknown dialect", nil, inbox.Dialect(9), db, sqlcore.ErrUnknownDialect},
		{"upper-case table", []inbox.Option{inbox.WithTable("Inbox")}, inbox.SQLite, db, herald.ErrInvalidName},
		{"schema-qualified table", []inbox.Option{inbox.WithTable("public.inbox")}, inbox.SQLite, db, herald.ErrInvalidName},
		{"empty table", []inbox.Option{inbox.WithTable("")}, inbox.SQLite, db, herald.ErrInvalidName},
		{"long table", []inbox.Option{inbox.WithTable(strings.Repeat("a", 41))}, inbox.SQLite, db, herald.ErrInvalidName},
		{"zero retention", []inbox.Option{inbox.WithRetention(0)}, inbox.SQLite, db, herald.ErrInvalidOption},
		{"nil option", []inbox.Option{nil}, inbox.SQLite, db, herald.ErrInvalidOption},
	} {
		t.Run(c.name, func(t *testing.T) {
			ib, err := inbox.New(c.db, c.d, c.opts...)
			if !errors.Is(err, c.want) || ib != nil {
				t.Fatalf("New: %v, %v; want an error wrapping %v", ib, err, c.want)
			}
		})
	}
	var ne *herald.NameError
	if _, err := inbox.New(db, inbox.SQLite, inbox.WithTable("x-y")); !errors.As(err, &ne) || ne.Kind != "table" {
		t.Errorf("bad table name: %v, want a *herald.NameError of kind table", err)
	}

	ib, err := inbox.New(db, inbox.SQLite)
	if err != nil {
		t.Fatal(err)
	}
	bus := newMemBus(t)
	h := func(context.Context, *sql.Tx, *herald.Message) error { return nil }
	typed := func(context.Context, *sql.Tx, orderPlaced, *herald.Message) error { return nil }
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"nil handler", func() error { _, err := ib.Handler("g", nil); return err }(), herald.ErrNilHandler},
		{"empty group", func() error { _, err := ib.Handler("", h); return err }(), herald.ErrInvalidName},
		{"bad group", func() error { _, err := ib.Handler("a group", h); return err }(), herald.ErrInvalidName},
		{"nil inbox", func() error { _, err := (*inbox.Inbox)(nil).Handler("g", h); return err }(), herald.ErrInvalidOption},
		{"Handle nil bus", ib.Handle(nil, "orders", "g", h), herald.ErrInvalidOption},
		{"Handle nil handler", ib.Handle(bus, "orders", "g", nil), herald.ErrNilHandler},
		{"Handle bad topic", ib.Handle(bus, "a topic", "g", h), herald.ErrInvalidName},
		{"Subscribe nil inbox", inbox.Subscribe(bus, nil, "g", typed), herald.ErrInvalidOption},
		{"Subscribe nil bus", inbox.Subscribe(nil, ib, "g", typed), herald.ErrInvalidOption},
		{"Subscribe nil handler", inbox.Subscribe[orderPlaced](bus, ib, "g", nil), herald.ErrNilHandler},
		{"Subscribe bad group", inbox.Subscribe(bus, ib, "g?", typed), herald.ErrInvalidName},
		{"Handled nil message", func() error { _, err := ib.Handled(context.Background(), "g", nil); return err }(), herald.ErrNilEvent},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want an error wrapping %v", c.name, c.err, c.want)
		}
	}
}

type orderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

type orderCharged struct {
	ID string `json:"id"`
}

// newMemBus returns a Bus on a memory broker with orderPlaced on topic
// "orders" and orderCharged on "charges"; opts are the Bus's.
func newMemBus(t testing.TB, opts ...herald.Option) *herald.Bus {
	t.Helper()
	broker, err := memdriver.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = broker.Close() })
	bus, err := herald.NewBus(broker, append([]herald.Option{herald.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(herald.Register[orderPlaced](bus, "orders"), herald.Register[orderCharged](bus, "charges")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = bus.Shutdown(ctx)
	})
	return bus
}

// TestHandler checks the inbox's handler on its own: an effect once per
// (group, key), a failure or a panic rolls back effect and mark, a
// redrive addressed to the group runs once more, a message without an ID
// runs each time, a key no mark can hold fails permanently.
func TestHandler(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		var dups atomic.Int32
		ib := newInbox(t, tdb, db, inbox.WithOnDuplicate(func(string, *herald.Message) { dups.Add(1) }))
		eff := newEffects(t, tdb, db)
		ctx := context.Background()
		var failing atomic.Bool // return boom after the effect
		boom := errors.New("boom")
		var panicking atomic.Bool
		handler := func(group string) herald.HandlerFunc {
			hf, err := ib.Handler(group, func(ctx context.Context, tx *sql.Tx, m *herald.Message) error {
				if err := eff.insert(ctx, tx, m.ID, group); err != nil {
					return err
				}
				if panicking.Load() {
					panic("handler panics")
				}
				if failing.Load() {
					return boom
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return hf
		}
		g1, g2 := handler("g1"), handler("g2")
		m := &herald.Message{ID: "m-1", Topic: "orders"}

		// A failure rolls the effect and the mark back.
		failing.Store(true)
		if err := g1(ctx, m); !errors.Is(err, boom) {
			t.Fatalf("failing handler: %v, want boom", err)
		}
		if n := eff.count("m-1"); n != 0 {
			t.Fatalf("effects after a failure: %d, want 0", n)
		}
		if ok, err := ib.Handled(ctx, "g1", m); ok || err != nil {
			t.Fatalf("Handled after a failure: %v, %v; want false", ok, err)
		}
		// So does a panic, and the connection is released.
		panicking.Store(true)
		func() {
			defer func() { _ = recover() }()
			_ = g1(ctx, m)
		}()
		panicking.Store(false)
		failing.Store(false)
		if n := eff.count("m-1"); n != 0 {
			t.Fatalf("effects after a panic: %d, want 0", n)
		}

		// Delivered three times to g1 and twice to g2: once each.
		for _, h := range []herald.HandlerFunc{g1, g1, g2, g1, g2} {
			if err := h(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		if n := eff.count("m-1"); n != 2 {
			t.Fatalf("effects of m-1: %d, want 2 (one per group)", n)
		}
		if got := dups.Load(); got != 3 {
			t.Errorf("OnDuplicate called %d times, want 3", got)
		}
		if ok, err := ib.Handled(ctx, "g1", m); !ok || err != nil {
			t.Fatalf("Handled: %v, %v; want true", ok, err)
		}

		// A redrive addressed to g1 runs once more there, once; g2 takes
		// it as a duplicate of the original.
		redrive := &herald.Message{ID: "m-1", Topic: "orders", Headers: herald.Headers{herald.HeaderRedriveGroup: "g1", herald.HeaderRedriveCount: "1"}}
		for _, h := range []herald.HandlerFunc{g1, g1, g2} {
			if err := h(ctx, redrive); err != nil {
				t.Fatal(err)
			}
		}
		if n := eff.count("m-1"); n != 3 {
			t.Fatalf("effects of m-1 after a redrive to g1: %d, want 3", n)
		}

		// No ID: no mark, it runs each time.
		noID := &herald.Message{Topic: "orders"}
		for range 2 {
			if err := g1(ctx, noID); err != nil {
				t.Fatal(err)
			}
		}
		if n := eff.count(""); n != 2 {
			t.Fatalf("effects of a message without an ID: %d, want 2", n)
		}

		// A key no mark can hold.
		for _, id := range []string{strings.Repeat("x", inbox.MaxKeyBytes+1), "bad\xffutf8", "nul\x00"} {
			err := g1(ctx, &herald.Message{ID: id, Topic: "orders"})
			if !herald.IsPermanent(err) || !errors.Is(err, inbox.ErrInvalidMessage) {
				t.Errorf("message ID %q: %v, want a permanent error wrapping ErrInvalidMessage", id, err)
			}
		}
	})
}

// TestConcurrentDeliveries delivers one message to one group from many
// goroutines at once: the handler runs once, the others wait for the
// mark's lock and find it committed.
func TestConcurrentDeliveries(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		tdb.MaxOpen = 16
		db := tdb.Open(t)
		ib := newInbox(t, tdb, db)
		eff := newEffects(t, tdb, db)
		var runs atomic.Int32
		hf, err := ib.Handler("g", func(ctx context.Context, tx *sql.Tx, m *herald.Message) error {
			runs.Add(1)
			time.Sleep(20 * time.Millisecond) // hold the mark while the others arrive
			return eff.insert(ctx, tx, m.ID, "g")
		})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			m := &herald.Message{ID: fmt.Sprintf("c-%d", i), Topic: "orders"}
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() { errs <- hf(context.Background(), m) })
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if n := eff.count(m.ID); n != 1 {
				t.Fatalf("%s: %d effects after 8 concurrent deliveries, want 1", m.ID, n)
			}
		}
		if got := runs.Load(); got != 5 {
			t.Errorf("handler ran %d times for 5 messages", got)
		}
	})
}

// TestSubscribeWithOutbox runs a typed subscription on a memory broker
// whose follow-up events go to an outbox in the handler's transaction:
// with retry, a failing attempt leaves neither the effect nor its event;
// a message the handler gives up on is dead-lettered with no mark, and
// its redrive runs (once for two copies); redeliveries of a handled
// message change nothing.
func TestSubscribeWithOutbox(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		ctx := context.Background()
		ib := newInbox(t, tdb, db)
		eff := newEffects(t, tdb, db)
		obTable := tableName(t, tdb, db, "ho_")
		for _, s := range []string{"_quarantine", "_sent"} {
			t.Cleanup(func() { _, _ = db.Exec("DROP TABLE IF EXISTS " + tdb.Quote(obTable+s)) })
		}
		if err := outbox.Migrate(ctx, db, tdb.D, obTable); err != nil {
			t.Fatal(err)
		}
		w, err := outbox.NewWriter(tdb.D, obTable)
		if err != nil {
			t.Fatal(err)
		}
		var deadLetters atomic.Int32
		bus := newMemBus(t, herald.WithOutbox(w))
		attempts := map[string]int{}
		var mu sync.Mutex
		err = inbox.Subscribe(bus, ib, "billing", func(ctx context.Context, tx *sql.Tx, e orderPlaced, m *herald.Message) error {
			mu.Lock()
			attempts[e.ID]++
			n := attempts[e.ID]
			mu.Unlock()
			if err := eff.insert(ctx, tx, m.ID, "billing"); err != nil {
				return err
			}
			if err := bus.Publish(ctx, orderCharged{ID: e.ID}); err != nil {
				return err
			}
			switch {
			case e.Amount < 0 && m.Headers.Get(herald.HeaderRedriveCount) == "":
				return herald.Permanent(errors.New("negative amount"))
			case e.Amount == 2 && n < 3: // fails twice, then succeeds
				return errors.New("transient")
			}
			return nil
		}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond}),
			herald.WithDeadLetterConfig(herald.DeadLetterConfig{OnDeadLetter: func(*herald.Message, error) { deadLetters.Add(1) }}))
		if err != nil {
			t.Fatal(err)
		}
		var dlq []*herald.Message
		if err := bus.Handle("orders.dlq", "ops", func(_ context.Context, m *herald.Message) error {
			mu.Lock()
			dlq = append(dlq, m)
			mu.Unlock()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := bus.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// Publish each order twice with the same ID: a redelivery.
		var msgs []*herald.Message
		for i, amount := range []int{1, 2, -1} {
			enc, err := bus.Publisher().Encode(ctx, orderPlaced{ID: fmt.Sprintf("o-%d", i), Amount: amount})
			if err != nil {
				t.Fatal(err)
			}
			m := enc[0]
			m.ID = fmt.Sprintf("o-%d", i)
			msgs = append(msgs, m, m.Clone())
		}
		if err := bus.PublishMessages(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		// Both deliveries of o-2 fail for good: two dead letters.
		drivertest.Eventually(t, 30*time.Second, "the dead letters", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(dlq) == 2
		})
		drivertest.Eventually(t, 30*time.Second, "o-0 and o-1 handled", func() bool {
			a, _ := ib.Handled(ctx, "billing", msgs[0])
			b, _ := ib.Handled(ctx, "billing", msgs[2])
			return a && b
		})
		if ok, _ := ib.Handled(ctx, "billing", msgs[4]); ok {
			t.Error("o-2, dead-lettered, is marked handled")
		}
		// Redrive the dead letter to billing: it runs once more, once.
		mu.Lock()
		rd := dlq[0].Clone()
		mu.Unlock()
		rd.Topic = "orders"
		rd.Headers[herald.HeaderRedriveGroup], rd.Headers[herald.HeaderRedriveCount] = "billing", "1"
		if err := bus.PublishMessages(ctx, rd, rd.Clone()); err != nil {
			t.Fatal(err)
		}
		drivertest.Eventually(t, 30*time.Second, "the redrive handled", func() bool {
			ok, _ := ib.Handled(ctx, "billing", rd)
			return ok
		})
		time.Sleep(50 * time.Millisecond) // let the second copy of the redrive arrive and be skipped
		for id, want := range map[string]int{"o-0": 1, "o-1": 1, "o-2": 1} {
			if n := eff.count(id); n != want {
				t.Errorf("%s: %d effects, want %d", id, n, want)
			}
		}
		var events int
		if err := db.QueryRow("SELECT COUNT(*) FROM " + tdb.Quote(obTable)).Scan(&events); err != nil {
			t.Fatal(err)
		}
		if events != 3 {
			t.Errorf("outbox rows: %d, want 3 (one follow-up per order, none from failed attempts)", events)
		}
		mu.Lock()
		defer mu.Unlock()
		if attempts["o-1"] != 3 {
			t.Errorf("o-1 ran %d attempts, want 3", attempts["o-1"])
		}
		if deadLetters.Load() != 2 {
			t.Errorf("%d dead letters, want 2", deadLetters.Load())
		}
		for _, m := range dlq {
			if m.ID != "o-2" {
				t.Errorf("dead letter %s, want only o-2", m.ID)
			}
		}
	})
}

// TestPurge checks that Purge deletes the marks older than the retention
// and only those, and that Run purges until its context ends.
func TestPurge(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		ctx := context.Background()
		ib := newInbox(t, tdb, db, inbox.WithRetention(300*time.Millisecond))
		hf, err := ib.Handler("g", func(context.Context, *sql.Tx, *herald.Message) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		msg := func(i int) *herald.Message { return &herald.Message{ID: fmt.Sprintf("p-%d", i), Topic: "orders"} }
		for i := range 5 {
			if err := hf(ctx, msg(i)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(400 * time.Millisecond)
		if err := hf(ctx, msg(5)); err != nil {
			t.Fatal(err)
		}
		n, err := ib.Purge(ctx)
		if err != nil || n != 5 {
			t.Fatalf("Purge: %d, %v; want 5", n, err)
		}
		for i := range 6 {
			ok, err := ib.Handled(ctx, "g", msg(i))
			if err != nil || ok != (i == 5) {
				t.Errorf("mark of %s: %v, %v; want %v", msg(i).ID, ok, err, i == 5)
			}
		}
		// Run purges at once, then every PurgeInterval (1 s here).
		if got := ib.PurgeInterval(); got != time.Second {
			t.Errorf("PurgeInterval: %v, want 1s", got)
		}
		time.Sleep(400 * time.Millisecond)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- ib.Run(rctx) }()
		drivertest.Eventually(t, 10*time.Second, "Run to purge the last mark", func() bool {
			ok, err := ib.Handled(ctx, "g", msg(5))
			return err == nil && !ok
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

func TestMigrateIdempotentAndSchema(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		db := tdb.Open(t)
		ib := newInbox(t, tdb, db)
		if err := ib.Migrate(context.Background()); err != nil {
			t.Fatalf("second Migrate: %v", err)
		}
		stmts := ib.Schema()
		if len(stmts) == 0 || !strings.Contains(stmts[0], tdb.Quote(ib.Table())) {
			t.Fatalf("Schema: %q", stmts)
		}
		for _, s := range stmts {
			if _, err := db.Exec(s); err != nil {
				t.Errorf("Schema statement on a migrated table: %v\n%s", err, s)
			}
		}
		if ib.Dialect() != tdb.D {
			t.Errorf("Dialect %v, want %v", ib.Dialect(), tdb.D)
		}
	})
}
