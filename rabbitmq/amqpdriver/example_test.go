package amqpdriver_test

import (
	"context"
	"fmt"
	"log"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// A group whose members keep per-key order: one consumes at a time.
func ExampleNew() {
	d, err := amqpdriver.New("amqp://guest:guest@localhost:5672/",
		amqpdriver.WithNamePrefix("shop."),
		amqpdriver.WithSingleActiveConsumer(),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	bus, err := herald.NewBus(d)
	if err != nil {
		log.Fatal(err)
	}
	_ = bus.Handle("orders", "billing", func(ctx context.Context, m *herald.Message) error {
		fmt.Println(m.ID)
		return nil
	})
	fmt.Println(d.ExchangeName("orders"), d.QueueName("orders", "billing"))
	// Output: shop.orders shop.orders@billing
}
