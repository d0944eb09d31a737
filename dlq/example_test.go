package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/memory/memdriver"
)

type PaymentDue struct {
	Order string `json:"order"`
}

// A redrive after an outage: billing dead-letters a payment while the card
// service is down; once it is back, Redrive sends the entry back to its
// topic, addressed to billing, which runs it again. The memory driver's
// store stands in for Kafka's or Redis's (their DeadLetters methods).
func ExampleRedrive() {
	ctx := context.Background()
	broker, err := memdriver.New()
	if err != nil {
		panic(err)
	}
	defer broker.Close()
	bus, err := herald.NewBus(broker, herald.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	defer bus.Shutdown(ctx)
	herald.MustRegister[PaymentDue](bus, "payments")

	var cardsDown atomic.Bool
	cardsDown.Store(true)
	charged := make(chan string, 1)
	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e PaymentDue, m *herald.Message) error {
		if cardsDown.Load() {
			return herald.Permanent(errors.New("card service down"))
		}
		charged <- "charged " + e.Order
		return nil
	}, herald.WithDeadLetter())
	if err != nil {
		panic(err)
	}
	_ = bus.Start(ctx)
	_ = bus.Publish(ctx, PaymentDue{Order: "o-1"})

	store := broker.DeadLetters()
	for {
		entries, _, err := store.List(ctx, "payments.dlq", "", 10)
		if err != nil {
			panic(err)
		}
		if len(entries) == 1 {
			fmt.Println(entries[0].Group, "gave up:", entries[0].Reason)
			break
		}
		time.Sleep(time.Millisecond)
	}

	cardsDown.Store(false)
	res, err := dlq.Redrive(ctx, store, broker, "payments.dlq", dlq.RedriveOptions{})
	fmt.Println("redriven:", res.Redriven, err)
	fmt.Println(<-charged)
	// Output:
	// billing gave up: card service down
	// redriven: 1 <nil>
	// charged o-1
}
