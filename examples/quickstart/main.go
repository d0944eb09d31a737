// Quickstart runs herald on the embedded in-memory driver, no server needed:
// typed publish and subscribe, a retry that succeeds, a poison message that
// lands in the dead-letter topic, and a duplicate delivery that is skipped.
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
	dedupmemory "github.com/heraldbus/herald/dedup/memory"
	"github.com/heraldbus/herald/driver/memory"
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

	broker := memory.New()
	defer broker.Close()
	processed, err := dedupmemory.New(ctx)
	if err != nil {
		return err
	}
	defer processed.Close()

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus := herald.NewBus(broker, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
	if err := herald.Register[OrderPlaced](bus, "orders.placed"); err != nil {
		return err
	}

	var mu sync.Mutex
	attempts := map[string]int{}
	var wg sync.WaitGroup
	wg.Add(5) // o-1 charged, o-2 charged on its second attempt, o-3 dead-lettered, o-4 charged once and its duplicate skipped

	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		mu.Lock()
		attempts[e.ID]++
		mu.Unlock()
		switch {
		case e.ID == "o-2" && herald.Attempt(ctx) == 1:
			fmt.Fprintf(out, "billing: %s attempt %d failed (payment gateway timeout), will retry\n", e.ID, herald.Attempt(ctx))
			return errors.New("payment gateway timeout")
		case e.Amount < 0:
			fmt.Fprintf(out, "billing: %s attempt %d rejected: negative amount\n", e.ID, herald.Attempt(ctx))
			return herald.Permanent(fmt.Errorf("order %s has a negative amount", e.ID))
		}
		fmt.Fprintf(out, "billing: charged %s for %d (attempt %d)\n", e.ID, e.Amount, herald.Attempt(ctx))
		wg.Done()
		return nil
	},
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond}),
		herald.WithDedupConfig(herald.DedupConfig{Storage: processed, OnDuplicate: func(m *herald.Message) {
			fmt.Fprintf(out, "billing: skipped duplicate delivery of message %s\n", m.ID)
			wg.Done()
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
		wg.Done()
		return nil
	})
	if err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}

	// One Publish call, one driver write, three events.
	if err := bus.Publish(ctx, OrderPlaced{ID: "o-1", Amount: 42}, OrderPlaced{ID: "o-2", Amount: 7}, OrderPlaced{ID: "o-3", Amount: -1}); err != nil {
		return err
	}
	// A duplicate delivery: the same message (same ID) arrives again, as
	// it would after a producer retry or a relay crash.
	dup, err := bus.Publisher().Encode(ctx, OrderPlaced{ID: "o-4", Amount: 9})
	if err != nil {
		return err
	}
	if err := bus.PublishMessages(ctx, dup[0], dup[0].Clone()); err != nil {
		return err
	}
	// Bad input gets a typed error and nothing is sent.
	if err := bus.Publish(ctx, struct{ Unregistered bool }{}); errors.Is(err, herald.ErrUnregisteredEvent) {
		fmt.Fprintln(out, "publish: refused an unregistered event type:", err)
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("not every outcome arrived: %w", ctx.Err())
	}
	if err := bus.Shutdown(ctx); err != nil {
		return err
	}
	fmt.Fprintf(out, "done: handler runs per order %v; nothing left unacknowledged: %v\n",
		attempts, broker.Backlog("orders.placed", "billing") == 0)
	return nil
}
