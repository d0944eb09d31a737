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
	out := &printer{w: w}

	// The service's database: its charges table (no key of its own, so a
	// charge made twice would show as two rows), the outbox and the inbox.
	db, closeDB, err := shopdb.Open(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	if _, err := db.ExecContext(ctx, `CREATE TABLE charges (order_id TEXT NOT NULL, amount INTEGER NOT NULL)`); err != nil {
		return err
	}
	if err := outbox.Migrate(ctx, db, outbox.SQLite, "outbox"); err != nil {
		return err
	}
	ow, err := outbox.NewWriter(outbox.SQLite, "outbox")
	if err != nil {
		return err
	}
	duplicates := make(chan string, 10)
	ib, err := inbox.New(db, inbox.SQLite, inbox.WithOnDuplicate(func(group string, m *herald.Message) {
		out.printf("%s: %s delivered again: already handled, skipped", group, m.Key)
		duplicates <- m.Key
	}))
	if err != nil {
		return err
	}
	if err := ib.Migrate(ctx); err != nil {
		return err
	}

	// The broker, and a bus whose Publish goes to the outbox inside a
	// transaction (the inbox's) and to the broker outside one.
	broker, err := memdriver.New()
	if err != nil {
		return err
	}
	defer broker.Close()
	bus, err := herald.NewBus(broker, herald.WithOutbox(ow), herald.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return err
	}
	if err := errors.Join(herald.Register[OrderPlaced](bus, "orders"), herald.Register[PaymentCaptured](bus, "payments")); err != nil {
		return err
	}

	// Billing: exactly once per order. Its first attempt at o-2 fails
	// after it wrote the charge and published the event: both roll back
	// with the mark, and the retry makes them again.
	attempts := map[string]int{}
	err = inbox.Subscribe(bus, ib, "billing", func(ctx context.Context, tx *sql.Tx, o OrderPlaced, m *herald.Message) error {
		attempts[o.ID]++ // billing runs one handler at a time (concurrency 1)
		if _, err := tx.ExecContext(ctx, `INSERT INTO charges VALUES (?, ?)`, o.ID, o.Amount); err != nil {
			return err
		}
		if err := bus.Publish(ctx, PaymentCaptured{OrderID: o.ID, Amount: o.Amount}); err != nil { // ctx carries tx: an outbox row
			return err
		}
		if o.ID == "o-2" && attempts[o.ID] == 1 {
			out.printf("billing: %s attempt 1 failed after charging: charge, event and mark rolled back", o.ID)
			return errors.New("card network timeout")
		}
		out.printf("billing: charged %s %d (attempt %d), PaymentCaptured in the same transaction", o.ID, o.Amount, attempts[o.ID])
		return nil
	}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond}))
	if err != nil {
		return err
	}
	shipped := make(chan string, 10)
	err = herald.Subscribe(bus, "shipping", func(_ context.Context, p PaymentCaptured, _ *herald.Message) error {
		out.printf("shipping: %s paid %d, packing", p.OrderID, p.Amount)
		shipped <- p.OrderID
		return nil
	})
	if err != nil {
		return err
	}

	// The relay forwards committed outbox rows to the broker.
	relay, err := outbox.NewRelay(db, outbox.SQLite, "outbox", broker,
		outbox.WithPollInterval(5*time.Millisecond, 50*time.Millisecond), outbox.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return err
	}
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(ctx) }()
	if err := bus.Start(ctx); err != nil {
		return err
	}

	// The order service's events, straight to the broker. o-1's event is
	// delivered twice, as a broker redelivers a message whose consumer
	// crashed after committing and before acknowledging.
	var events []*herald.Message
	for _, o := range []OrderPlaced{{"o-1", 42}, {"o-2", 7}} {
		msgs, err := bus.Publisher().Encode(ctx, o)
		if err != nil {
			return err
		}
		events = append(events, msgs...)
	}
	if err := bus.PublishMessages(ctx, events[0], events[1]); err != nil {
		return err
	}
	if err := wait(ctx, shipped, "o-1", "o-2"); err != nil {
		return err
	}
	if err := bus.PublishMessages(ctx, events[0].Clone()); err != nil {
		return err
	}
	if err := wait(ctx, duplicates, "o-1"); err != nil {
		return err
	}

	if err := relay.Shutdown(ctx); err != nil {
		return err
	}
	if err := <-relayDone; err != nil {
		return err
	}
	if err := bus.Shutdown(ctx); err != nil {
		return err
	}

	// What the database holds.
	for _, id := range []string{"o-1", "o-2"} {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM charges WHERE order_id = ?`, id).Scan(&n); err != nil {
			return err
		}
		handled, err := ib.Handled(ctx, "billing", events[map[string]int{"o-1": 0, "o-2": 1}[id]])
		if err != nil {
			return err
		}
		out.printf("%s: %d charge, marked handled: %v", id, n, handled)
	}
	var left int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&left); err != nil {
		return err
	}
	out.printf("billing attempts: o-1 %d, o-2 %d; outbox rows left: %d", attempts["o-1"], attempts["o-2"], left)
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
