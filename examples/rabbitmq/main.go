// RabbitMQ runs a small shop on RabbitMQ, in three steps:
//
//  1. Billing: typed OrderPlaced events go through a herald.Bus on
//     amqpdriver, and the billing group charges them, 4 at a time. A
//     charge that fails for a moment is retried in the process; an order
//     that can never be charged goes to the dead-letter topic, where an
//     operations group reads why; the driver keeps that topic in a
//     stream too, which its dead-letter store lists (as herald dlq list
//     does).
//
//  2. Ledger: two instances of a ledger service share one group whose
//     queue is single-active-consumer: the broker delivers to one of them
//     at a time, so each account's entries are booked in order. The active
//     instance shuts down half-way and the standby takes over, still in
//     order.
//
//  3. Shutdown: the buses stop gracefully (handlers in flight finish and
//     are acknowledged), the queues are shown empty, and the example
//     deletes the exchanges, queues and streams it declared.
//
//     go run ./examples/rabbitmq -url amqp://guest:guest@127.0.0.1:5672/
//
// The URL comes from -url, else HERALD_AMQP_URL, else
// amqp://guest:guest@127.0.0.1:5672/. Every name the example declares
// starts with a prefix of its own run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/tally"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// OrderPlaced is the event the shop publishes.
type OrderPlaced struct {
	Order    int    `json:"order"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
}

// Key keeps one customer's orders in order.
func (o OrderPlaced) Key() string { return o.Customer }

// EntryBooked is the event the ledger books, in order per account.
type EntryBooked struct {
	Account string `json:"account"`
	Seq     int    `json:"seq"`
}

// Key keeps one account's entries in order.
func (e EntryBooked) Key() string { return e.Account }

const (
	ordersTopic = "orders"
	ledgerTopic = "ledger"
	orders      = 12
	customers   = 3
	accounts    = 2
	entries     = 10 // per account and per half of the ledger step
)

const defaultURL = "amqp://guest:guest@127.0.0.1:5672/"

func main() {
	def := os.Getenv("HERALD_AMQP_URL")
	if def == "" {
		def = defaultURL
	}
	url := flag.String("url", def, "RabbitMQ URL (amqp://user:password@host:port/vhost)")
	flag.Parse()
	if err := run(os.Stdout, *url); err != nil {
		fmt.Fprintln(os.Stderr, "rabbitmq example:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	admin, err := amqp.Dial(url)
	if err != nil {
		return fmt.Errorf("connect to RabbitMQ at %s: %w", redact(url), err)
	}
	defer admin.Close()
	// 31 bytes: within amqpdriver's 40.
	prefix := "hx." + herald.NewKSUID() + "."
	t := &topology{conn: admin}
	defer func() { t.remove(w) }()

	if err := billingStep(ctx, w, url, prefix, t); err != nil {
		return err
	}
	if err := ledgerStep(ctx, w, url, prefix, t); err != nil {
		return err
	}
	return t.showEmpty(w)
}

// redact drops the password from url for an error message.
func redact(url string) string {
	if i, j := strings.Index(url, "://"), strings.LastIndex(url, "@"); i >= 0 && j > i {
		user, _, _ := strings.Cut(url[i+3:j], ":")
		return url[:i+3] + user + ":***" + url[j:]
	}
	return url
}

var quiet = slog.New(slog.DiscardHandler)

// newBus returns a bus on d that logs nothing (the example prints what
// matters).
func newBus(d *amqpdriver.Driver) (*herald.Bus, error) {
	return herald.NewBus(d, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
}

// billingStep is step 1: retries and the dead-letter topic.
func billingStep(ctx context.Context, w io.Writer, url, prefix string, t *topology) error {
	d, err := amqpdriver.New(url, amqpdriver.WithNamePrefix(prefix), amqpdriver.WithConnectionName("herald example billing"))
	if err != nil {
		return err
	}
	defer d.Close()
	t.add(d, ordersTopic, "billing")
	t.add(d, herald.DeadLetterTopic(ordersTopic), "operations")
	t.addStream(d, herald.DeadLetterTopic(ordersTopic))

	bus, err := newBus(d)
	if err != nil {
		return err
	}
	if err := herald.Register[OrderPlaced](bus, ordersTopic); err != nil {
		return err
	}
	b := &billing{Tally: tally.New(), w: w, charged: map[int]bool{}}
	if err := b.subscribe(bus); err != nil {
		return err
	}
	// Start declares the queues: a queue receives only what is published
	// after it exists.
	if err := bus.Start(ctx); err != nil {
		return err
	}
	if err := publishOrders(ctx, bus); err != nil {
		return err
	}
	b.say("shop: published %d orders to %q (exchange %s)\n", orders, ordersTopic, d.ExchangeName(ordersTopic))
	if err := b.Wait(ctx, b.done); err != nil {
		return fmt.Errorf("waiting for the orders to be handled: %w", err)
	}
	if err := shutdown(bus); err != nil {
		return err
	}
	fmt.Fprintf(w, "billing: %d orders charged, %d dead-lettered\n", len(b.charged), len(b.deadLetters))
	return listDeadLetters(ctx, w, d)
}

// listDeadLetters lists the dead-letter topic as herald dlq list does:
// the driver kept it in a stream beside the operations queue, which
// consumed it.
func listDeadLetters(ctx context.Context, w io.Writer, d *amqpdriver.Driver) error {
	topic := herald.DeadLetterTopic(ordersTopic)
	entries, _, err := d.DeadLetters().List(ctx, topic, "", 10)
	if err != nil {
		return err
	}
	for _, e := range entries {
		fmt.Fprintf(w, "dead letters: %s at offset %s of stream %s: message %s, %d attempt, %s\n",
			topic, e.Position, d.StreamName(topic), e.Message.ID, e.Attempts, e.Reason)
	}
	return nil
}

// shutdown stops bus gracefully: handlers in flight finish and their
// messages are acknowledged; deliveries not started go back to the queue.
func shutdown(bus *herald.Bus) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// publishOrders publishes the orders one by one (each call waits for the
// broker's confirm); order 7 has a negative amount.
func publishOrders(ctx context.Context, bus *herald.Bus) error {
	for i := range orders {
		e := OrderPlaced{Order: i, Customer: fmt.Sprintf("customer-%d", i%customers), Amount: 10 * (i + 1)}
		if i == 7 {
			e.Amount = -5
		}
		if err := bus.Publish(ctx, e); err != nil {
			return fmt.Errorf("publish order %d: %w", i, err)
		}
	}
	return nil
}

// billing is what the billing and operations handlers did. They run on
// several goroutines: the Tally's lock guards w and the counts.
type billing struct {
	*tally.Tally
	w           io.Writer
	charged     map[int]bool
	deadLetters []string
}

// subscribe has billing charge the orders, 4 at a time, with retry and a
// dead-letter topic, and operations read that topic.
func (b *billing) subscribe(bus *herald.Bus) error {
	err := herald.Subscribe(bus, "billing", b.charge,
		herald.WithConcurrency(4),
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 50 * time.Millisecond}),
		herald.WithDeadLetter(),
	)
	if err != nil {
		return err
	}
	return bus.Handle(herald.DeadLetterTopic(ordersTopic), "operations", b.readDeadLetter)
}

// charge is billing's handler: order 3's payment provider times out once;
// order 7 has a negative amount, which no retry can fix.
func (b *billing) charge(ctx context.Context, e OrderPlaced, m *herald.Message) error {
	if e.Amount < 0 {
		return herald.Permanent(fmt.Errorf("order %d: negative amount %d", e.Order, e.Amount))
	}
	if e.Order == 3 && herald.Attempt(ctx) == 1 {
		b.say("billing: order %d: payment provider timed out, retrying\n", e.Order)
		return errors.New("payment provider timed out")
	}
	b.Note(func() { b.charged[e.Order] = true })
	b.say("billing: charged order %2d of %s: %d\n", e.Order, e.Customer, e.Amount)
	return nil
}

// readDeadLetter is operations' handler on the dead-letter topic.
func (b *billing) readDeadLetter(ctx context.Context, m *herald.Message) error {
	reason := m.Headers.Get(herald.HeaderDeadLetterReason)
	b.Note(func() { b.deadLetters = append(b.deadLetters, reason) })
	b.say("operations: dead letter from %s (group %s): %s\n",
		m.Headers.Get(herald.HeaderDeadLetterTopic), m.Headers.Get(herald.HeaderDeadLetterGroup), reason)
	return nil
}

// done reports whether every order was charged or dead-lettered; call it
// under the lock.
func (b *billing) done() bool {
	return len(b.charged) == orders-1 && len(b.deadLetters) == 1
}

// say writes one line of output.
func (b *billing) say(format string, args ...any) {
	b.Lock()
	fmt.Fprintf(b.w, format, args...)
	b.Unlock()
}
