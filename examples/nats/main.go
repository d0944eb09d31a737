// NATS runs a small shop on NATS JetStream, in four steps:
//
//  1. Billing: typed OrderPlaced events go through a herald.Bus on
//     natsdriver, which keeps each topic in a stream of its own and each
//     group in a durable pull consumer on it. The billing group charges
//     the orders, 4 at a time. A charge that fails for a moment is retried
//     in the process; an order that can never be charged goes to the
//     dead-letter topic, where an operations group reads why. Three orders
//     are published a second time with the same message IDs, as a
//     producer retrying after a timeout would: the server drops them in
//     its duplicate window.
//
//  2. Packing: a parcel takes three times the consumer's AckWait to pack.
//     The driver tells the server the delivery is in progress, so the
//     server does not deliver it again while it is packed, even with a
//     second worker free to run a copy. The bus shuts down while the
//     parcel is still being packed: the shutdown waits for it, and it is
//     acknowledged.
//
//  3. Warehouse: a new group reads the orders stream from the start. Its
//     handler hangs on one order, and the instance is stopped without
//     waiting for it, cutting the handler off as a crash would. The order
//     is handed back unacknowledged (at once, by the subscription's Close;
//     a crashed process's deliveries wait for the AckWait) and the next
//     instance receives it with its delivery count one higher. After two
//     deliveries the dead-letter middleware (MaxDeliveries) sends it to
//     the dead-letter topic without running the handler again. Orders
//     handed back before their handler started do not count: they arrive
//     at delivery 1 however often the server sent them. The warehouse runs
//     one instance at a time: a group with one member receives its
//     messages in stream order, so each customer's orders are packed in
//     order (with several members NATS does not keep per-key order).
//
//  4. Shutdown: the consumers are shown with nothing pending, and the
//     example deletes the consumers, the streams and the driver's
//     release bucket it created.
//
//     go run ./examples/nats -url nats://127.0.0.1:4222
//
// The URL comes from -url, else HERALD_NATS_URL, else
// nats://127.0.0.1:4222; the server must have JetStream on. Every stream
// and subject the example creates starts with a prefix of its own run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/tally"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// OrderPlaced is the event the shop publishes.
type OrderPlaced struct {
	Order    int    `json:"order"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
}

// Key keeps one customer's orders in order.
func (o OrderPlaced) Key() string { return o.Customer }

const (
	ordersTopic = "orders"
	orders      = 12
	customers   = 3
	copies      = 3 // orders published a second time, with the same message ID
)

const defaultURL = "nats://127.0.0.1:4222"

func main() {
	def := os.Getenv("HERALD_NATS_URL")
	if def == "" {
		def = defaultURL
	}
	serverURL := flag.String("url", def, "NATS server URL (nats://host:port), JetStream on")
	flag.Parse()
	if err := run(os.Stdout, *serverURL); err != nil {
		fmt.Fprintln(os.Stderr, "nats example:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, serverURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	nc, err := nats.Connect(serverURL, nats.Name("herald example"))
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", redact(serverURL), err)
	}
	// Last: every driver is closed and every bus shut down before.
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	s, err := newShop(js, herald.NewKSUID())
	if err != nil {
		return err
	}
	defer s.remove(w)

	if err := billingStep(ctx, w, s); err != nil {
		return err
	}
	if err := packingStep(ctx, w, s); err != nil {
		return err
	}
	if err := warehouseStep(ctx, w, s); err != nil {
		return err
	}
	return s.showEmpty(ctx, w)
}

// redact drops the password from a URL for an error message.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the given URL"
	}
	return u.Redacted()
}

var quiet = slog.New(slog.DiscardHandler)

// newBus returns a bus on d that logs nothing (the example prints what
// matters).
func newBus(d *natsdriver.Driver) (*herald.Bus, error) {
	return herald.NewBus(d, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
}

// shutdown stops bus gracefully: handlers in flight finish and their
// messages are acknowledged; deliveries not started go back to the
// consumer, not counted as deliveries.
func shutdown(bus *herald.Bus) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// billingStep is step 1: retries, the dead-letter topic and the
// duplicate window.
func billingStep(ctx context.Context, w io.Writer, s *shop) error {
	d, err := s.driver()
	if err != nil {
		return err
	}
	defer d.Close()
	s.add(ordersTopic, "billing")
	s.add(herald.DeadLetterTopic(ordersTopic), "operations")

	bus, err := newBus(d)
	if err != nil {
		return err
	}
	if err := herald.Register[OrderPlaced](bus, ordersTopic); err != nil {
		return err
	}
	b := &billing{Tally: tally.New(), w: w, charged: map[int]int{}}
	if err := b.subscribe(bus); err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}
	if err := publishOrders(ctx, bus); err != nil {
		return err
	}
	if err := s.showStored(ctx, w, ordersTopic); err != nil {
		return err
	}
	if err := b.Wait(ctx, b.done); err != nil {
		return fmt.Errorf("waiting for the orders to be handled: %w", err)
	}
	if err := shutdown(bus); err != nil {
		return err
	}
	b.report()
	return nil
}

// publishOrders publishes the orders one by one (each Write waits for the
// server's acknowledgment), order 7 with a negative amount, then the
// first copies of them again in one batch: a producer retry after a
// timeout looks like this, the same message IDs a second time.
func publishOrders(ctx context.Context, bus *herald.Bus) error {
	var again []*herald.Message
	for i := range orders {
		e := OrderPlaced{Order: i, Customer: customer(i), Amount: 10 * (i + 1)}
		if i == 7 {
			e.Amount = -5
		}
		msgs, err := bus.Publisher().Encode(ctx, e)
		if err != nil {
			return err
		}
		if i < copies {
			again = append(again, msgs[0].Clone())
		}
		if err := bus.PublishMessages(ctx, msgs...); err != nil {
			return fmt.Errorf("publish order %d: %w", i, err)
		}
	}
	if err := bus.PublishMessages(ctx, again...); err != nil {
		return fmt.Errorf("publish the copies: %w", err)
	}
	return nil
}

func customer(order int) string { return fmt.Sprintf("customer-%d", order%customers) }

// billing is what the billing and operations handlers did. They run on
// several goroutines: the Tally's lock guards w and the counts.
type billing struct {
	*tally.Tally
	w           io.Writer
	charged     map[int]int // order -> times charged
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
	b.Note(func() { b.charged[e.Order]++ })
	b.say("billing: charged order %2d of %s: %d (attempt %d)\n", e.Order, e.Customer, e.Amount, herald.Attempt(ctx))
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

// report prints how often the orders were charged: once each, the
// copies the server dropped never reached a handler.
func (b *billing) report() {
	b.Lock()
	defer b.Unlock()
	once := 0
	for _, n := range b.charged {
		if n == 1 {
			once++
		}
	}
	fmt.Fprintf(b.w, "billing: %d orders charged, %d of them exactly once; %d dead-lettered\n",
		len(b.charged), once, len(b.deadLetters))
}

// say writes one line of output.
func (b *billing) say(format string, args ...any) {
	b.Lock()
	fmt.Fprintf(b.w, format, args...)
	b.Unlock()
}
