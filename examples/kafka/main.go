// Kafka runs a small shop on Kafka: it publishes typed OrderPlaced events
// with a herald.Bus, and a billing subscriber charges them, 8 at a time
// with each customer's orders in order. A charge that fails for a moment is
// retried; an order that can never be charged goes to the dead-letter
// topic, where an operations subscriber reads why.
//
//	go run ./examples/kafka -embedded                 # in-process broker (kfake), no server needed
//	go run ./examples/kafka -brokers localhost:9092   # a real cluster
//
// Brokers come from -brokers, else HERALD_KAFKA_BROKERS (comma-separated).
// A real cluster must allow topic auto-creation, or have the topics
// examples.orders and examples.orders.dlq.
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

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/tally"
	"github.com/heraldbus/herald/kafka/kafkadriver"
)

// OrderPlaced is the event the shop publishes.
type OrderPlaced struct {
	Run      string `json:"run"` // this run's id, to tell its events from earlier runs'
	Order    int    `json:"order"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
}

const (
	topic     = "examples.orders"
	orders    = 12
	customers = 3
)

func main() {
	brokers := flag.String("brokers", os.Getenv("HERALD_KAFKA_BROKERS"), "Kafka brokers, comma-separated host:port")
	embedded := flag.Bool("embedded", false, "start an in-process Kafka broker (kfake) instead")
	flag.Parse()
	if err := run(os.Stdout, *brokers, *embedded); err != nil {
		fmt.Fprintln(os.Stderr, "kafka example:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, brokerList string, embedded bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	brokers, stopBroker, err := startBrokers(w, brokerList, embedded)
	if err != nil {
		return err
	}
	defer stopBroker()

	quiet := slog.New(slog.DiscardHandler)
	driver, err := kafkadriver.New(brokers,
		kafkadriver.WithAutoCreateTopics(),
		kafkadriver.WithCommitInterval(200*time.Millisecond),
		kafkadriver.WithLogger(quiet),
	)
	if err != nil {
		return err
	}
	defer driver.Close()

	bus, err := herald.NewBus(driver, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
	if err != nil {
		return err
	}
	err = herald.Register[OrderPlaced](bus, topic, herald.WithKey(func(e OrderPlaced) string { return e.Customer }))
	if err != nil {
		return err
	}
	b := &billing{Tally: tally.New(), w: w, runID: herald.NewKSUID(), charged: map[int]bool{}}
	if err := b.subscribe(bus); err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}

	if err := publishOrders(ctx, bus, b.runID); err != nil {
		return err
	}
	b.say("shop: published %d orders to %q\n", orders, topic)
	if err := b.Wait(ctx, b.done); err != nil {
		return fmt.Errorf("waiting for the orders to be handled: %w", err)
	}

	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelShutdown()
	if err := bus.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	fmt.Fprintf(w, "done: %d orders charged, %d dead-lettered; offsets committed\n", orders-1, 1)
	return nil
}

// startBrokers returns the brokers of brokerList or, when embedded, of an
// in-process broker it starts; stop closes that one.
func startBrokers(w io.Writer, brokerList string, embedded bool) (brokers []string, stop func(), err error) {
	if !embedded {
		if brokerList == "" {
			return nil, nil, errors.New("no brokers: give -brokers host:port, set HERALD_KAFKA_BROKERS, or use -embedded")
		}
		return strings.Split(brokerList, ","), func() {}, nil
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4))
	if err != nil {
		return nil, nil, fmt.Errorf("start the embedded broker: %w", err)
	}
	brokers = cluster.ListenAddrs()
	fmt.Fprintf(w, "embedded broker at %s\n", brokers[0])
	return brokers, cluster.Close, nil
}

// publishOrders publishes this run's orders; order 7 has a negative amount.
func publishOrders(ctx context.Context, bus *herald.Bus, runID string) error {
	for i := range orders {
		e := OrderPlaced{Run: runID, Order: i, Customer: fmt.Sprintf("customer-%d", i%customers), Amount: 10 * (i + 1)}
		if i == 7 {
			e.Amount = -5
		}
		if err := bus.Publish(ctx, e); err != nil {
			return fmt.Errorf("publish order %d: %w", i, err)
		}
	}
	return nil
}

// billing is what the billing and operations handlers of this run did.
// They run on several goroutines: the Tally's lock guards w and the counts.
type billing struct {
	*tally.Tally
	w           io.Writer
	runID       string // the Run of this run's events
	charged     map[int]bool
	deadLetters []string
}

// subscribe has billing charge the orders, 8 at a time, with retry and a
// dead-letter topic, and operations read that topic.
func (b *billing) subscribe(bus *herald.Bus) error {
	err := herald.Subscribe(bus, "billing", b.charge,
		herald.WithConcurrency(8),
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 50 * time.Millisecond}),
		herald.WithDeadLetter(),
	)
	if err != nil {
		return err
	}
	return bus.Handle(herald.DeadLetterTopic(topic), "operations", b.readDeadLetter)
}

// charge is billing's handler: order 3's payment provider times out once;
// order 7 has a negative amount, which no retry can fix.
func (b *billing) charge(ctx context.Context, e OrderPlaced, m *herald.Message) error {
	if e.Run != b.runID {
		return nil // from an earlier run of the example on the same cluster
	}
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
	if !strings.Contains(string(m.Data), b.runID) {
		return nil
	}
	reason := m.Headers.Get(herald.HeaderDeadLetterReason)
	b.Note(func() { b.deadLetters = append(b.deadLetters, reason) })
	b.say("operations: dead letter from %s (group %s): %s\n",
		m.Headers.Get(herald.HeaderDeadLetterTopic), m.Headers.Get(herald.HeaderDeadLetterGroup), reason)
	return nil
}

// done reports whether every order of this run was charged or
// dead-lettered; call it under the lock.
func (b *billing) done() bool {
	return len(b.charged) == orders-1 && len(b.deadLetters) == 1
}

// say writes one line of output.
func (b *billing) say(format string, args ...any) {
	b.Lock()
	fmt.Fprintf(b.w, format, args...)
	b.Unlock()
}
