// Redis runs two instances of a billing service on Redis Streams: they
// share one consumer group, so each order goes to one of them, and one
// processed set in Redis, so a duplicate delivery is skipped whichever
// instance it reaches.
//
//	go run ./examples/redis -addr 127.0.0.1:6379
//
// The address comes from -addr, else HERALD_REDIS_ADDR, else
// 127.0.0.1:6379. The example keeps its keys under a prefix of its own and
// deletes its streams before it exits; the dedup marks expire after an hour.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/tally"
	"github.com/heraldbus/herald/redis/redisdedup"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// OrderPlaced is the event the shop publishes.
type OrderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// Key keeps the events of one order in order.
func (o OrderPlaced) Key() string { return o.ID }

const (
	topic  = "orders.placed"
	group  = "billing"
	orders = 20
	copies = 5 // orders published a second time, with the same message ID
)

func main() {
	defaultAddr := os.Getenv("HERALD_REDIS_ADDR")
	if defaultAddr == "" {
		defaultAddr = "127.0.0.1:6379"
	}
	addr := flag.String("addr", defaultAddr, "Redis address (host:port)")
	flag.Parse()
	if err := run(os.Stdout, *addr); err != nil {
		fmt.Fprintln(os.Stderr, "redis example:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	client := goredis.NewClient(&goredis.Options{Addr: addr})
	defer client.Close()
	if err := client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("connect to Redis at %s: %w", addr, err)
	}
	prefix := "herald:example:" + herald.NewKSUID() + ":"
	drv, err := redisdriver.New(client, redisdriver.WithKeyPrefix(prefix+"stream:"))
	if err != nil {
		return err
	}
	defer func() {
		_ = client.Del(context.WithoutCancel(ctx), drv.StreamKey(topic), drv.StreamKey(herald.DeadLetterTopic(topic))).Err()
	}()
	processed := redisdedup.New(client, redisdedup.WithKeyPrefix(prefix+"dedup:"))

	b := &billing{Tally: tally.New(), charged: map[string]int{}, by: map[string]int{}, skipped: map[string]int{}}
	var instances []*herald.Bus
	for _, name := range []string{"a", "b"} {
		bus, err := b.startInstance(ctx, drv, processed, name)
		if err != nil {
			return err
		}
		instances = append(instances, bus)
	}

	if err := publishOrders(ctx, instances[0]); err != nil {
		return err
	}
	fmt.Fprintf(w, "published %d orders, then %d of them again\n", orders, copies)

	if err := b.Wait(ctx, b.done); err != nil {
		return fmt.Errorf("not every order was handled: %w", err)
	}
	var errs []error
	for _, bus := range instances {
		errs = append(errs, bus.Shutdown(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	b.report(w)
	stats, err := drv.GroupStats(ctx, topic, group)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "group %q: %d pending, %d unread\n", group, stats.Pending, stats.Lag)
	return nil
}

// publishOrders publishes the orders one by one, then some of them again
// in one batch (one pipelined round trip): a producer retry after a
// timeout looks like this, the same message IDs a second time.
func publishOrders(ctx context.Context, publisher *herald.Bus) error {
	var again []*herald.Message
	for i := range orders {
		msgs, err := publisher.Publisher().Encode(ctx, OrderPlaced{ID: fmt.Sprintf("o-%02d", i), Amount: 10 + i})
		if err != nil {
			return err
		}
		if i < copies {
			again = append(again, msgs[0].Clone())
		}
		if err := publisher.PublishMessages(ctx, msgs...); err != nil {
			return err
		}
	}
	return publisher.PublishMessages(ctx, again...)
}

// billing counts what the instances did. The Tally's lock guards the counts.
type billing struct {
	*tally.Tally
	charged map[string]int // order ID -> times charged
	by      map[string]int // instance -> orders charged
	skipped map[string]int // instance -> duplicates skipped
}

// startInstance starts one instance of the billing service, named name: a
// bus on the shared driver whose subscriber, in the shared group, skips
// the messages the shared processed set has seen.
func (b *billing) startInstance(ctx context.Context, drv *redisdriver.Driver, processed *redisdedup.Storage, name string) (*herald.Bus, error) {
	quiet := slog.New(slog.DiscardHandler)
	bus, err := herald.NewBus(drv, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
	if err != nil {
		return nil, err
	}
	if err := herald.Register[OrderPlaced](bus, topic); err != nil {
		return nil, err
	}
	err = herald.Subscribe(bus, group, func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		b.Note(func() { b.charged[e.ID]++; b.by[name]++ })
		return nil
	},
		herald.WithConcurrency(4),
		herald.WithRetry(herald.RetryConfig{MaxAttempts: 3}),
		herald.WithDeadLetter(),
		herald.WithDedupConfig(herald.DedupConfig{
			Storage:     processed,
			Window:      time.Hour,
			OnDuplicate: func(*herald.Message) { b.Note(func() { b.skipped[name]++ }) },
		}),
	)
	if err != nil {
		return nil, err
	}
	return bus, bus.Start(ctx)
}

// done reports whether every order was charged and every copy skipped;
// call it under the lock.
func (b *billing) done() bool {
	return len(b.charged) == orders && b.skipped["a"]+b.skipped["b"] == copies
}

// report prints how often the orders were charged and the duplicates
// skipped, by instance.
func (b *billing) report(w io.Writer) {
	b.Lock()
	defer b.Unlock()
	once := 0
	for _, n := range b.charged {
		if n == 1 {
			once++
		}
	}
	fmt.Fprintf(w, "charged %d orders, %d of them exactly once (instance a: %d, instance b: %d)\n",
		len(b.charged), once, b.by["a"], b.by["b"])
	fmt.Fprintf(w, "skipped %d duplicate deliveries (instance a: %d, instance b: %d)\n",
		b.skipped["a"]+b.skipped["b"], b.skipped["a"], b.skipped["b"])
}
