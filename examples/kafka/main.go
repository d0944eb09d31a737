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
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/heraldbus/herald"
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

	brokers := strings.Split(brokerList, ",")
	if embedded {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4))
		if err != nil {
			return fmt.Errorf("start the embedded broker: %w", err)
		}
		defer cluster.Close()
		brokers = cluster.ListenAddrs()
		fmt.Fprintf(w, "embedded broker at %s\n", brokers[0])
	} else if brokerList == "" {
		return errors.New("no brokers: give -brokers host:port, set HERALD_KAFKA_BROKERS, or use -embedded")
	}

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

	// Handlers run on several goroutines: one lock for w and the tallies.
	runID := herald.NewKSUID()
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(w, format, args...)
		mu.Unlock()
	}
	charged := map[int]bool{}
	var deadLetters []string
	changed := make(chan struct{}, 1)
	note := func(f func()) {
		mu.Lock()
		f()
		mu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
	}

	// Billing: order 3's payment provider times out once; order 7 has a
	// negative amount, which no retry can fix.
	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		if e.Run != runID {
			return nil // from an earlier run of the example on the same cluster
		}
		if e.Amount < 0 {
			return herald.Permanent(fmt.Errorf("order %d: negative amount %d", e.Order, e.Amount))
		}
		if e.Order == 3 && herald.Attempt(ctx) == 1 {
			say("billing: order %d: payment provider timed out, retrying\n", e.Order)
			return errors.New("payment provider timed out")
		}
		note(func() { charged[e.Order] = true })
		say("billing: charged order %2d of %s: %d\n", e.Order, e.Customer, e.Amount)
		return nil
	},
		herald.WithConcurrency(8),
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 50 * time.Millisecond}),
		herald.WithDeadLetter(),
	)
	if err != nil {
		return err
	}
	err = bus.Handle(herald.DeadLetterTopic(topic), "operations", func(ctx context.Context, m *herald.Message) error {
		if !strings.Contains(string(m.Data), runID) {
			return nil
		}
		reason := m.Headers.Get(herald.HeaderDeadLetterReason)
		note(func() { deadLetters = append(deadLetters, reason) })
		say("operations: dead letter from %s (group %s): %s\n",
			m.Headers.Get(herald.HeaderDeadLetterTopic), m.Headers.Get(herald.HeaderDeadLetterGroup), reason)
		return nil
	})
	if err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}

	for i := range orders {
		e := OrderPlaced{Run: runID, Order: i, Customer: fmt.Sprintf("customer-%d", i%customers), Amount: 10 * (i + 1)}
		if i == 7 {
			e.Amount = -5
		}
		if err := bus.Publish(ctx, e); err != nil {
			return fmt.Errorf("publish order %d: %w", i, err)
		}
	}
	say("shop: published %d orders to %q\n", orders, topic)

	for done := false; !done; {
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the orders to be handled: %w", ctx.Err())
		}
		mu.Lock()
		done = len(charged) == orders-1 && len(deadLetters) == 1
		mu.Unlock()
	}

	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelShutdown()
	if err := bus.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	fmt.Fprintf(w, "done: %d orders charged, %d dead-lettered; offsets committed\n", orders-1, 1)
	return nil
}
