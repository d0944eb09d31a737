// Quickstart runs the whole herald path on the embedded default, no server
// needed: a business write and its event commit in one SQLite transaction
// (the transactional outbox), a relay forwards committed events to the
// in-memory bus, and a subscriber handles them with retry, deduplication
// and a dead-letter topic. It shows a retry that succeeds, a poison event
// that lands in the dead-letter topic, a duplicate delivery (as after a
// relay crash) that is skipped, and a rolled-back order that sends nothing.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/shopdb"
	"github.com/heraldbus/herald/memory/memdedup"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/outbox"
)

// OrderPlaced is the event this service publishes.
type OrderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// Key keeps the events of one order in order.
func (o OrderPlaced) Key() string { return o.ID }

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// lockedWriter serializes writes: handlers run concurrently.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func run(w io.Writer) error {
	out := &lockedWriter{w: w}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The service's own database, with the outbox table beside its data.
	db, closeDB, err := shopdb.Open(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := outbox.Migrate(ctx, db, outbox.SQLite, "outbox"); err != nil {
		return err
	}

	// Publish writes rows into the outbox in the caller's transaction; the
	// relay moves committed rows to the broker the subscribers read.
	broker, err := memdriver.New()
	if err != nil {
		return err
	}
	defer broker.Close()
	outboxWriter, err := outbox.NewWriter(outbox.SQLite, "outbox")
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus, err := herald.NewBus(broker, herald.WithPublishWriter(outboxWriter),
		herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
	if err != nil {
		return err
	}
	if err := herald.Register[OrderPlaced](bus, "orders.placed"); err != nil {
		return err
	}
	relay, err := outbox.NewRelay(db, outbox.SQLite, "outbox", broker, outbox.WithLogger(quiet))
	if err != nil {
		return err
	}

	processed, err := memdedup.New(ctx)
	if err != nil {
		return err
	}
	defer processed.Close()

	var mu sync.Mutex
	runs := map[string]int{}
	var outcomes sync.WaitGroup
	// o-1, o-2 (on its second attempt) and o-4 charged, o-3 dead-lettered.
	outcomes.Add(4)
	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		mu.Lock()
		runs[e.ID]++
		mu.Unlock()
		switch {
		case e.ID == "o-2" && herald.Attempt(ctx) == 1:
			fmt.Fprintf(out, "billing: %s attempt 1 failed (payment gateway timeout), will retry\n", e.ID)
			return errors.New("payment gateway timeout")
		case e.Amount < 0:
			fmt.Fprintf(out, "billing: %s rejected: negative amount (permanent, no retry)\n", e.ID)
			return herald.Permanent(fmt.Errorf("order %s has a negative amount", e.ID))
		}
		fmt.Fprintf(out, "billing: charged %s for %d (attempt %d)\n", e.ID, e.Amount, herald.Attempt(ctx))
		outcomes.Done()
		return nil
	},
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond}),
		herald.WithDedupConfig(herald.DedupConfig{Storage: processed, OnDuplicate: func(m *herald.Message) {
			fmt.Fprintf(out, "billing: skipped a duplicate delivery of message %s\n", m.ID)
			outcomes.Done()
		}}),
		herald.WithDeadLetter(),
		herald.WithConcurrency(4),
	)
	if err != nil {
		return err
	}
	err = bus.Handle("orders.placed.dlq", "ops", func(ctx context.Context, m *herald.Message) error {
		fmt.Fprintf(out, "ops: dead letter %s after %s attempt(s): %s\n",
			m.ID, m.Headers[herald.HeaderDeadLetterAttempts], m.Headers[herald.HeaderDeadLetterReason])
		outcomes.Done()
		return nil
	})
	if err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(ctx) }()

	// placeOrder writes the order and its event in one transaction: both
	// commit, or neither does.
	placeOrder := func(id string, amount int, commit bool) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := shopdb.InsertOrder(ctx, tx, id, amount); err != nil {
			return err
		}
		if err := bus.Publish(outbox.WithTx(ctx, tx), OrderPlaced{ID: id, Amount: amount}); err != nil {
			return err
		}
		if !commit {
			return tx.Rollback()
		}
		return tx.Commit()
	}
	for _, o := range []struct {
		id     string
		amount int
		commit bool
	}{{"o-1", 42, true}, {"o-2", 7, true}, {"o-3", -1, true}, {"o-4", 9, true}, {"o-5", 13, false}} {
		if err := placeOrder(o.id, o.amount, o.commit); err != nil {
			return err
		}
		if !o.commit {
			fmt.Fprintf(out, "shop: %s rolled back: neither the order nor its event exists\n", o.id)
		}
	}

	// A duplicate delivery, as when a relay dies after the broker took a
	// row and before it deleted it: the same message (same ID) arrives
	// twice. Here the outbox holds it twice.
	dup, err := bus.Publisher().Encode(ctx, OrderPlaced{ID: "o-6", Amount: 5})
	if err != nil {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := shopdb.InsertOrder(ctx, tx, "o-6", 5); err != nil {
		return err
	}
	if err := outboxWriter.WriteTx(ctx, tx, []*herald.Message{dup[0], dup[0].Clone()}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	outcomes.Add(2) // o-6 is charged once, and its copy skipped

	// Bad input gets a typed error, and nothing is written.
	if err := bus.Publish(ctx, struct{ Unregistered bool }{}); errors.Is(err, herald.ErrUnregisteredEvent) {
		fmt.Fprintln(out, "shop: refused an unregistered event type:", err)
	}
	if err := bus.Publish(ctx, OrderPlaced{ID: "o-7"}); errors.Is(err, outbox.ErrNoTransaction) {
		fmt.Fprintln(out, "shop: refused to publish outside a transaction:", err)
	}

	done := make(chan struct{})
	go func() { outcomes.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("not every outcome arrived: %w", ctx.Err())
	}
	if err := relay.Shutdown(ctx); err != nil {
		return err
	}
	if err := <-relayDone; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if err := bus.Shutdown(ctx); err != nil {
		return err
	}
	var left int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&left); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(out, "done: handler runs per order %v; rows left in the outbox: %d; unacknowledged: %d\n",
		runs, left, broker.Backlog("orders.placed", "billing"))
	return nil
}
