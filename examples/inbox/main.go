// Inbox shows exactly-once processing end to end on SQLite, no server
// needed: billing consumes OrderPlaced events and, in one transaction of
// the inbox (sql/inbox), records the charge, publishes PaymentCaptured
// through the outbox and marks the order event as handled. The charge,
// the follow-up event and the mark commit together or not at all. A
// failed attempt rolls all three back and runs again; a second delivery
// of a handled event, as after a consumer crash between its commit and
// its acknowledgment, is skipped. The outbox relay forwards the
// committed PaymentCaptured events to the broker, where shipping reads
// them.
//
//	go run ./examples/inbox
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/shopdb"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/inbox"
	"github.com/heraldbus/herald/sql/outbox"
)

// OrderPlaced is what billing consumes.
type OrderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// Key keeps the events of one order in order.
func (o OrderPlaced) Key() string { return o.ID }

// PaymentCaptured is what billing publishes, in its transaction.
type PaymentCaptured struct {
	OrderID string `json:"order_id"`
	Amount  int    `json:"amount"`
}

// Key keeps the events of one order in order.
func (p PaymentCaptured) Key() string { return p.OrderID }

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "inbox:", err)
		os.Exit(1)
	}
}

// printer serializes the lines of concurrent handlers.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

func run(w io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, closeShop, err := openShop(ctx, &printer{w: w})
	if err != nil {
		return err
	}
	defer closeShop()
	if err := s.subscribe(); err != nil {
		return err
	}
	relayDone, err := s.startRelay(ctx)
	if err != nil {
		return err
	}
	if err := s.bus.Start(ctx); err != nil {
		return err
	}
	if err := s.publish(ctx); err != nil {
		return err
	}
	if err := s.relay.Shutdown(ctx); err != nil {
		return err
	}
	if err := <-relayDone; err != nil {
		return err
	}
	if err := s.bus.Shutdown(ctx); err != nil {
		return err
	}
	return s.report(ctx)
}

// shop is the billing service: its database (its charges table, no key
// of its own, so a charge made twice would show as two rows; the outbox;
// the inbox), the broker and its bus, and what its handlers saw.
type shop struct {
	out        *printer
	db         *sql.DB
	ib         *inbox.Inbox
	broker     *memdriver.Broker
	bus        *herald.Bus
	relay      *outbox.Relay
	attempts   map[string]int // billing's, by order (one handler at a time)
	duplicates chan string
	shipped    chan string
	events     []*herald.Message // the OrderPlaced events, o-1 and o-2
}

// openShop creates the database's tables, the inbox, the broker and a
// bus whose Publish goes to the outbox inside a transaction (the
// inbox's) and to the broker outside one.
func openShop(ctx context.Context, out *printer) (*shop, func(), error) {
	s := &shop{out: out, attempts: map[string]int{}, duplicates: make(chan string, 10), shipped: make(chan string, 10)}
	db, closeDB, err := shopdb.Open(ctx)
	if err != nil {
		return nil, nil, err
	}
	s.db = db
	fail := func(err error) (*shop, func(), error) { closeDB(); return nil, nil, err }
	if _, err := db.ExecContext(ctx, `CREATE TABLE charges (order_id TEXT NOT NULL, amount INTEGER NOT NULL)`); err != nil {
		return fail(err)
	}
	if err := outbox.Migrate(ctx, db, outbox.SQLite, "outbox"); err != nil {
		return fail(err)
	}
	ow, err := outbox.NewWriter(outbox.SQLite, "outbox")
	if err != nil {
		return fail(err)
	}
	s.ib, err = inbox.New(db, inbox.SQLite, inbox.WithOnDuplicate(func(group string, m *herald.Message) {
		out.printf("%s: %s delivered again: already handled, skipped", group, m.Key)
		s.duplicates <- m.Key
	}))
	if err != nil {
		return fail(err)
	}
	if err := s.ib.Migrate(ctx); err != nil {
		return fail(err)
	}
	if s.broker, err = memdriver.New(); err != nil {
		return fail(err)
	}
	closeAll := func() { _ = s.broker.Close(); closeDB() }
	s.bus, err = herald.NewBus(s.broker, herald.WithOutbox(ow), herald.WithLogger(slog.New(slog.DiscardHandler)))
	if err == nil {
		err = errors.Join(herald.Register[OrderPlaced](s.bus, "orders"), herald.Register[PaymentCaptured](s.bus, "payments"))
	}
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return s, closeAll, nil
}

// subscribe starts billing, exactly once per order (its first attempt at
// o-2 fails after it wrote the charge and published the event: both roll
// back with the mark, and the retry makes them again), and shipping.
func (s *shop) subscribe() error {
	err := inbox.Subscribe(s.bus, s.ib, "billing", func(ctx context.Context, tx *sql.Tx, o OrderPlaced, m *herald.Message) error {
		s.attempts[o.ID]++ // billing runs one handler at a time (concurrency 1)
		if _, err := tx.ExecContext(ctx, `INSERT INTO charges VALUES (?, ?)`, o.ID, o.Amount); err != nil {
			return err
		}
		if err := s.bus.Publish(ctx, PaymentCaptured{OrderID: o.ID, Amount: o.Amount}); err != nil { // ctx carries tx: an outbox row
			return err
		}
		if o.ID == "o-2" && s.attempts[o.ID] == 1 {
			s.out.printf("billing: %s attempt 1 failed after charging: charge, event and mark rolled back", o.ID)
			return errors.New("card network timeout")
		}
		s.out.printf("billing: charged %s %d (attempt %d), PaymentCaptured in the same transaction", o.ID, o.Amount, s.attempts[o.ID])
		return nil
	}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond}))
	if err != nil {
		return err
	}
	return herald.Subscribe(s.bus, "shipping", func(_ context.Context, p PaymentCaptured, _ *herald.Message) error {
		s.out.printf("shipping: %s paid %d, packing", p.OrderID, p.Amount)
		s.shipped <- p.OrderID
		return nil
	})
}

// startRelay runs the relay that forwards committed outbox rows to the
// broker; its result arrives on the channel returned.
func (s *shop) startRelay(ctx context.Context) (<-chan error, error) {
	relay, err := outbox.NewRelay(s.db, outbox.SQLite, "outbox", s.broker,
		outbox.WithPollInterval(5*time.Millisecond, 50*time.Millisecond), outbox.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return nil, err
	}
	s.relay = relay
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	return done, nil
}

// publish sends the order service's events straight to the broker and
// waits for shipping to see both payments. o-1's event is then delivered
// again, as a broker redelivers a message whose consumer crashed after
// committing and before acknowledging.
func (s *shop) publish(ctx context.Context) error {
	for _, o := range []OrderPlaced{{"o-1", 42}, {"o-2", 7}} {
		msgs, err := s.bus.Publisher().Encode(ctx, o)
		if err != nil {
			return err
		}
		s.events = append(s.events, msgs...)
	}
	if err := s.bus.PublishMessages(ctx, s.events[0], s.events[1]); err != nil {
		return err
	}
	if err := wait(ctx, s.shipped, "o-1", "o-2"); err != nil {
		return err
	}
	if err := s.bus.PublishMessages(ctx, s.events[0].Clone()); err != nil {
		return err
	}
	return wait(ctx, s.duplicates, "o-1")
}

// report prints what the database holds.
func (s *shop) report(ctx context.Context) error {
	for i, id := range []string{"o-1", "o-2"} {
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM charges WHERE order_id = ?`, id).Scan(&n); err != nil {
			return err
		}
		handled, err := s.ib.Handled(ctx, "billing", s.events[i])
		if err != nil {
			return err
		}
		s.out.printf("%s: %d charge, marked handled: %v", id, n, handled)
	}
	var left int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&left); err != nil {
		return err
	}
	s.out.printf("billing attempts: o-1 %d, o-2 %d; outbox rows left: %d", s.attempts["o-1"], s.attempts["o-2"], left)
	return nil
}

// wait receives from ch until it has seen every one of want.
func wait(ctx context.Context, ch <-chan string, want ...string) error {
	missing := map[string]bool{}
	for _, w := range want {
		missing[w] = true
	}
	for len(missing) > 0 {
		select {
		case got := <-ch:
			delete(missing, got)
		case <-ctx.Done():
			return fmt.Errorf("still waiting for %v: %w", missing, ctx.Err())
		}
	}
	return nil
}
