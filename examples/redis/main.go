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
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
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

// billing counts what the instances did.
type billing struct {
	mu      sync.Mutex
	charged map[string]int // order ID -> times charged
	by      map[string]int // instance -> orders charged
	skipped map[string]int // instance -> duplicates skipped
	changed chan struct{}  // capacity 1: something was counted
}

func (b *billing) note(f func()) {
	b.mu.Lock()
	f()
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
}

func (b *billing) done() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.charged) == orders && b.skipped["a"]+b.skipped["b"] == copies
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

	b := &billing{charged: map[string]int{}, by: map[string]int{}, skipped: map[string]int{}, changed: make(chan struct{}, 1)}
	quiet := slog.New(slog.DiscardHandler)
	newInstance := func(name string) (*herald.Bus, error) {
		bus, err := herald.NewBus(drv, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
		if err != nil {
			return nil, err
		}
		if err := herald.Register[OrderPlaced](bus, topic); err != nil {
			return nil, err
		}
		err = herald.Subscribe(bus, group, func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
			b.note(func() { b.charged[e.ID]++; b.by[name]++ })
			return nil
		},
			herald.WithConcurrency(4),
			herald.WithRetry(herald.RetryConfig{MaxAttempts: 3}),
			herald.WithDeadLetter(),
			herald.WithDedupConfig(herald.DedupConfig{
				Storage:     processed,
				Window:      time.Hour,
				OnDuplicate: func(*herald.Message) { b.note(func() { b.skipped[name]++ }) },
			}),
		)
		if err != nil {
			return nil, err
		}
		return bus, bus.Start(ctx)
	}
	var instances []*herald.Bus
	for _, name := range []string{"a", "b"} {
		bus, err := newInstance(name)
		if err != nil {
			return err
		}
		instances = append(instances, bus)
	}

	// The shop publishes the orders one by one, then some of them again in
	// one batch (one pipelined round trip): a producer retry after a
	// timeout looks like this, the same message IDs a second time.
	publisher := instances[0]
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
	if err := publisher.PublishMessages(ctx, again...); err != nil {
		return err
	}
	fmt.Fprintf(w, "published %d orders, then %d of them again\n", orders, copies)

	for !b.done() {
		select {
		case <-b.changed:
		case <-ctx.Done():
			return fmt.Errorf("not every order was handled: %w", ctx.Err())
		}
	}
	var errs []error
	for _, bus := range instances {
		errs = append(errs, bus.Shutdown(ctx))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	b.mu.Lock()
	defer b.mu.Unlock()
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
	stats, err := drv.GroupStats(ctx, topic, group)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "group %q: %d pending, %d unread\n", group, stats.Pending, stats.Lag)
	return nil
}
