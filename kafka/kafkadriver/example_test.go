package kafkadriver_test

import (
	"context"
	"crypto/tls"
	"log"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/kafka/kafkadriver"
)

type OrderPlaced struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
}

// A service on Kafka: one driver for publishing and consuming, closed
// after the Bus has shut down.
func Example() {
	d, err := kafkadriver.New([]string{"kafka-1:9092", "kafka-2:9092"},
		kafkadriver.WithClientID("billing"),
		kafkadriver.WithTLS(&tls.Config{MinVersion: tls.VersionTLS12}),
		kafkadriver.WithSASLSCRAM(kafkadriver.SCRAMSHA512, "billing", "secret"),
		kafkadriver.WithCompression(kafkadriver.CompressionSnappy))
	if err != nil {
		log.Fatal(err) // a bad option: nothing was contacted yet
	}
	defer d.Close()
	bus, err := herald.NewBus(d)
	if err != nil {
		log.Fatal(err)
	}
	// The key picks the partition: one customer's events stay in order.
	herald.MustRegister[OrderPlaced](bus, "orders", herald.WithKey(func(e OrderPlaced) string { return e.Customer }))
	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		return nil // charge the customer
	}, herald.WithConcurrency(16), herald.WithRetry(herald.RetryConfig{}), herald.WithDeadLetter())
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := bus.Start(ctx); err != nil {
		log.Fatal(err)
	}
	_ = bus.Publish(ctx, OrderPlaced{ID: "o-1", Customer: "c-7"})

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = bus.Shutdown(sctx) // commits what was handled
}

// Dead letters of a Kafka topic are redriven with the driver's store: each
// entry goes back to its topic, addressed to the group that gave up on it.
func ExampleDriver_DeadLetters() {
	d, err := kafkadriver.New([]string{"kafka-1:9092"})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	res, err := dlq.Redrive(context.Background(), d.DeadLetters(), d, "orders.dlq", dlq.RedriveOptions{
		Progress: func(p dlq.Progress) { log.Printf("redriven %d", p.Done) },
	})
	if err != nil {
		log.Fatal(err) // what was written and marked is in res; a re-run goes on
	}
	log.Printf("redriven %d, deferred %d, skipped %d", res.Redriven, res.Deferred, len(res.Skipped))
}
