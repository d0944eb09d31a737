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

// run is the tour: each step is a method of shop below, in this order.
func run(w io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &shop{out: &lockedWriter{w: w}, runs: map[string]int{}}
	defer s.close()
	for _, step := range []func(context.Context) error{
		s.setUp,          // the shop's database with its outbox table, a broker, the bus and the relay
		s.subscribe,      // billing retries, skips duplicates and dead-letters; ops reads the dead letters
		s.start,          // the bus consumes, the relay forwards committed events to the broker
		s.placeOrders,    // each order and its event in one transaction
		s.rollBackOrder,  // an order rolled back: its event never exists
		s.deliverTwice,   // one event twice, as after a relay crash: handled once
		s.refuseBadInput, // typed errors, and nothing written
		s.awaitOutcomes,  // every handler outcome the steps above expect
		s.stop,           // the relay, then the bus
		s.summarize,      // what ran, and what is left
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// shop is the quickstart's service: its database with the outbox table
// beside its data, the bus that publishes into the outbox, the relay that
// moves committed rows to the broker the subscribers read, and what the
// handlers did.
type shop struct {
	out          io.Writer
	db           *sql.DB
	broker       *memdriver.Broker
	outboxWriter *outbox.Writer
	bus          *herald.Bus
	relay        *outbox.Relay
	relayDone    chan error
	processed    *memdedup.Storage
	closers      []func() // in the order set-up made them

	mu       sync.Mutex
	runs     map[string]int // order ID -> billing handler runs
	outcomes sync.WaitGroup // one per outcome a step expects
}

// close releases what setUp made, last first.
func (s *shop) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// setUp makes the service's parts. Publish writes rows into the outbox in
// the caller's transaction; the relay moves committed rows to the broker.
func (s *shop) setUp(ctx context.Context) error {
	db, closeDB, err := shopdb.Open(ctx)
	if err != nil {
		return err
	}
	s.db = db
	s.closers = append(s.closers, closeDB)
	if err := outbox.Migrate(ctx, db, outbox.SQLite, "outbox"); err != nil {
		return err
	}
	if s.broker, err = memdriver.New(); err != nil {
		return err
	}
	s.closers = append(s.closers, func() { s.broker.Close() })
	if s.outboxWriter, err = outbox.NewWriter(outbox.SQLite, "outbox"); err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	s.bus, err = herald.NewBus(s.broker, herald.WithPublishWriter(s.outboxWriter),
		herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
	if err != nil {
		return err
	}
	if err := herald.Register[OrderPlaced](s.bus, "orders.placed"); err != nil {
		return err
	}
	if s.relay, err = outbox.NewRelay(db, outbox.SQLite, "outbox", s.broker, outbox.WithLogger(quiet)); err != nil {
		return err
	}
	if s.processed, err = memdedup.New(ctx); err != nil {
		return err
	}
	s.closers = append(s.closers, func() { s.processed.Close() })
	return nil
}

// subscribe has billing charge the orders, with retry, deduplication and a
// dead-letter topic, and ops read that topic.
func (s *shop) subscribe(context.Context) error {
	err := herald.Subscribe(s.bus, "billing", s.charge,
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond}),
		herald.WithDedupConfig(herald.DedupConfig{Storage: s.processed, OnDuplicate: s.skipped}),
		herald.WithDeadLetter(),
		herald.WithConcurrency(4),
	)
	if err != nil {
		return err
	}
	return s.bus.Handle("orders.placed.dlq", "ops", s.readDeadLetter)
}

// charge is billing's handler. o-2's first attempt fails for a moment and
// is retried; a negative amount is a poison message: no retry can fix it,
// so it goes to the dead-letter topic at once.
func (s *shop) charge(ctx context.Context, e OrderPlaced, m *herald.Message) error {
	s.mu.Lock()
	s.runs[e.ID]++
	s.mu.Unlock()
	switch {
	case e.ID == "o-2" && herald.Attempt(ctx) == 1:
		fmt.Fprintf(s.out, "billing: %s attempt 1 failed (payment gateway timeout), will retry\n", e.ID)
		return errors.New("payment gateway timeout")
	case e.Amount < 0:
		fmt.Fprintf(s.out, "billing: %s rejected: negative amount (permanent, no retry)\n", e.ID)
		return herald.Permanent(fmt.Errorf("order %s has a negative amount", e.ID))
	}
	fmt.Fprintf(s.out, "billing: charged %s for %d (attempt %d)\n", e.ID, e.Amount, herald.Attempt(ctx))
	s.outcomes.Done()
	return nil
}

// skipped is billing's deduplication at work: a message it already
// handled arrived again, and the handler does not run.
func (s *shop) skipped(m *herald.Message) {
	fmt.Fprintf(s.out, "billing: skipped a duplicate delivery of message %s\n", m.ID)
	s.outcomes.Done()
}

// readDeadLetter is ops' handler on the dead-letter topic.
func (s *shop) readDeadLetter(ctx context.Context, m *herald.Message) error {
	fmt.Fprintf(s.out, "ops: dead letter %s after %s attempt(s): %s\n",
		m.ID, m.Headers[herald.HeaderDeadLetterAttempts], m.Headers[herald.HeaderDeadLetterReason])
	s.outcomes.Done()
	return nil
}

// start runs the subscribers and the relay.
func (s *shop) start(ctx context.Context) error {
	if err := s.bus.Start(ctx); err != nil {
		return err
	}
	s.relayDone = make(chan error, 1)
	go func() { s.relayDone <- s.relay.Run(ctx) }()
	return nil
}

// placeOrders commits four orders with their events: o-1 and o-4 are
// charged at once, o-2 on its second attempt, and o-3 is dead-lettered.
func (s *shop) placeOrders(ctx context.Context) error {
	s.outcomes.Add(4)
	for _, e := range []OrderPlaced{
		{ID: "o-1", Amount: 42}, {ID: "o-2", Amount: 7}, {ID: "o-3", Amount: -1}, {ID: "o-4", Amount: 9},
	} {
		if err := s.placeOrder(ctx, e, true); err != nil {
			return err
		}
	}
	return nil
}

// rollBackOrder writes an order and its event and rolls the transaction
// back: nothing reaches billing.
func (s *shop) rollBackOrder(ctx context.Context) error {
	e := OrderPlaced{ID: "o-5", Amount: 13}
	if err := s.placeOrder(ctx, e, false); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "shop: %s rolled back: neither the order nor its event exists\n", e.ID)
	return nil
}

// placeOrder writes the order and its event in one transaction: both
// commit, or neither does.
func (s *shop) placeOrder(ctx context.Context, e OrderPlaced, commit bool) error {
	return s.writeOrder(ctx, e, commit, func(tx *sql.Tx) error {
		return s.bus.Publish(outbox.WithTx(ctx, tx), e)
	})
}

// deliverTwice commits an order whose event stands in the outbox twice:
// the same message (same ID) reaches billing twice, as when a relay dies
// after the broker took a row and before it deleted it.
func (s *shop) deliverTwice(ctx context.Context) error {
	s.outcomes.Add(2) // o-6 is charged once, and its copy skipped
	e := OrderPlaced{ID: "o-6", Amount: 5}
	dup, err := s.bus.Publisher().Encode(ctx, e)
	if err != nil {
		return err
	}
	return s.writeOrder(ctx, e, true, func(tx *sql.Tx) error {
		return s.outboxWriter.WriteTx(ctx, tx, []*herald.Message{dup[0], dup[0].Clone()})
	})
}

// writeOrder writes order e, and its event with writeEvent, in one
// transaction, and commits it or rolls it back.
func (s *shop) writeOrder(ctx context.Context, e OrderPlaced, commit bool, writeEvent func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := shopdb.InsertOrder(ctx, tx, e.ID, e.Amount); err != nil {
		return err
	}
	if err := writeEvent(tx); err != nil {
		return err
	}
	if !commit {
		return tx.Rollback()
	}
	return tx.Commit()
}

// refuseBadInput publishes what the bus must refuse: it returns a typed
// error, and nothing is written.
func (s *shop) refuseBadInput(ctx context.Context) error {
	if err := s.bus.Publish(ctx, struct{ Unregistered bool }{}); errors.Is(err, herald.ErrUnregisteredEvent) {
		fmt.Fprintln(s.out, "shop: refused an unregistered event type:", err)
	}
	if err := s.bus.Publish(ctx, OrderPlaced{ID: "o-7"}); errors.Is(err, outbox.ErrNoTransaction) {
		fmt.Fprintln(s.out, "shop: refused to publish outside a transaction:", err)
	}
	return nil
}

// awaitOutcomes waits until the handlers reported every outcome the steps
// expect.
func (s *shop) awaitOutcomes(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.outcomes.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("not every outcome arrived: %w", ctx.Err())
	}
}

// stop shuts the relay down, then the bus.
func (s *shop) stop(ctx context.Context) error {
	if err := s.relay.Shutdown(ctx); err != nil {
		return err
	}
	if err := <-s.relayDone; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return s.bus.Shutdown(ctx)
}

// summarize prints how often billing's handler ran per order, and that
// nothing is left in the outbox or unacknowledged on the broker.
func (s *shop) summarize(ctx context.Context) error {
	var left int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&left); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.out, "done: handler runs per order %v; rows left in the outbox: %d; unacknowledged: %d\n",
		s.runs, left, s.broker.Backlog("orders.placed", "billing"))
	return nil
}
