package redisdriver_test

import (
	"context"
	"log"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/redis/redisdedup"
	"github.com/heraldbus/herald/redis/redisdriver"
)

type OrderPlaced struct {
	ID string `json:"id"`
}

// A service on Redis Streams with its deduplication in the same Redis.
// The client stays the caller's: close it after the driver.
func Example() {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	d, err := redisdriver.New(client, redisdriver.WithClaimMinIdle(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	bus, err := herald.NewBus(d)
	if err != nil {
		log.Fatal(err)
	}
	herald.MustRegister[OrderPlaced](bus, "orders")
	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		return nil
	}, herald.WithDedup(redisdedup.New(client)), herald.WithRetry(herald.RetryConfig{}), herald.WithDeadLetter())
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := d.Ping(ctx); err != nil {
		log.Fatal(err) // Redis unreachable, or a wrong password or database
	}
	if err := bus.Start(ctx); err != nil {
		log.Fatal(err)
	}
	_ = bus.Publish(ctx, OrderPlaced{ID: "o-1"})
	_ = bus.Shutdown(ctx)
}
