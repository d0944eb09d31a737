package redisdriver_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

func lagNow(t *testing.T, lr herald.LagReporter) int64 {
	t.Helper()
	n, err := lr.Lag(context.Background())
	if err != nil {
		t.Fatalf("Lag: %v", err)
	}
	return n
}

// waitLag is the toolkit's, within 30 s: acknowledgments reach Redis in
// a background flush.
func waitLag(t *testing.T, lr herald.LagReporter, want, lo, hi int64) {
	t.Helper()
	drivertest.WaitLag(t, 30*time.Second, lr, want, lo, hi, nil)
}

func writeN(t *testing.T, d *redisdriver.Driver, topic string, from, to int) {
	t.Helper()
	var msgs []*herald.Message
	for i := from; i < to; i++ {
		msgs = append(msgs, message(topic, strconv.Itoa(i), "k"+strconv.Itoa(i%5)))
	}
	if err := d.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
}

// The optional interfaces, Lag included, hold for both reply formats of
// XINFO GROUPS and XAUTOCLAIM: the conformance suite's Optional section
// on a RESP2 and a RESP3 client.
func TestOptionalInterfacesOnBothProtocols(t *testing.T) {
	for _, protocol := range []int{2, 3} {
		t.Run("RESP"+strconv.Itoa(protocol), func(t *testing.T) {
			drivertest.RunOptional(t, drivertest.Config{
				NewDriver: func(t *testing.T) herald.Driver {
					env := newEnv(t)
					client := goredis.NewClient(&goredis.Options{Addr: env.addr, Protocol: protocol})
					t.Cleanup(func() { _ = client.Close() })
					d, err := redisdriver.New(client, redisdriver.WithKeyPrefix(env.prefix), redisdriver.WithErrorHandler(testErrors(t)))
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = d.Close() })
					return d
				},
				DeliveryCounts: true,
				Lag:            true,
				ErrorReporting: true,
				Delay:          true,
			})
		})
	}
}

// Lag counts the whole group: every member reports the same number.
func TestLagCountsTheWholeGroup(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	writeN(t, d, topic, 0, 10)
	a, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, a)
	b, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, b)
	drivertest.Ack(t, a, drivertest.FetchExactly(t, a, 4)...)
	waitLag(t, drivertest.LagReporter(t, a), 6, 6, 10)
	if got := lagNow(t, drivertest.LagReporter(t, b)); got != 6 {
		t.Fatalf("the other member's lag = %d, want the group's 6", got)
	}
}

func TestLagStartLatest(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t, redisdriver.WithStartPosition(herald.StartLatest))
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	writeN(t, d, topic, 0, 5)
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	lr := drivertest.LagReporter(t, sub)
	if got := lagNow(t, lr); got != 0 {
		t.Fatalf("lag of a group created at the end = %d, want 0", got)
	}
	// Redis counts the lag of a group created at "$" on a stream that is
	// not empty only because the driver tells it how much the group has
	// read (ENTRIESREAD); without that this read fails with ErrLagUnknown.
	writeN(t, d, topic, 5, 8)
	if got := lagNow(t, lr); got != 3 {
		t.Fatalf("lag after 3 more = %d, want 3", got)
	}
	first := drivertest.FetchExactly(t, sub, 1)
	if got := lagNow(t, lr); got != 3 {
		t.Fatalf("lag with 1 of 3 read = %d, want 3", got)
	}
	drivertest.Ack(t, sub, first...)
	waitLag(t, lr, 2, 2, 3)

	// A second member finds the group there (BUSYGROUP is no error) and
	// reports the same count.
	second, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, second)
	if got := lagNow(t, drivertest.LagReporter(t, second)); got != 2 {
		t.Fatalf("lag seen by a second member = %d, want 2", got)
	}

	// On a stream that does not exist yet, the group starts at 0 too.
	fresh := drivertest.Name(t, "fresh")
	sub, err = d.Subscribe(ctx, fresh, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	if got := lagNow(t, drivertest.LagReporter(t, sub)); got != 0 {
		t.Fatalf("lag on a new stream = %d, want 0", got)
	}
	writeN(t, d, fresh, 0, 2)
	if got := lagNow(t, drivertest.LagReporter(t, sub)); got != 2 {
		t.Fatalf("lag on a new stream after 2 = %d, want 2", got)
	}
}

// An entry deleted ahead of the group leaves Redis unable to count; Lag
// says so, and counts again once the group has read past it.
func TestLagUnknownAfterDeletion(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t)
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	writeN(t, d, topic, 0, 5)
	sub, err := d.Subscribe(ctx, topic, drivertest.Name(t, "g"))
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	lr := drivertest.LagReporter(t, sub)
	drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, 2)...)
	entries, err := env.client.XRange(ctx, d.StreamKey(topic), "-", "+").Result()
	if err != nil || len(entries) != 5 {
		t.Fatalf("XRANGE: %d entries, %v", len(entries), err)
	}
	if err := env.client.XDel(ctx, d.StreamKey(topic), entries[3].ID).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := lr.Lag(ctx); !errors.Is(err, redisdriver.ErrLagUnknown) {
		t.Fatalf("Lag with a deleted entry ahead of the group = %v, want ErrLagUnknown", err)
	}
	// The two left (2 and 4); pending may still hold the first two until
	// their acknowledgments are flushed.
	drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, 2)...)
	waitLag(t, lr, 0, 0, 4)
}

func TestLagErrors(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t)
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	sub, err := d.Subscribe(ctx, topic, drivertest.Name(t, "g"))
	if err != nil {
		t.Fatal(err)
	}
	lr := drivertest.LagReporter(t, sub)
	if err := env.client.Del(ctx, d.StreamKey(topic)).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := lr.Lag(ctx); !errors.Is(err, redisdriver.ErrNoGroup) {
		t.Fatalf("Lag of a deleted stream = %v, want ErrNoGroup", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := lr.Lag(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lag with a cancelled context = %v", err)
	}
	drivertest.CloseSub(t, sub)
	if _, err := lr.Lag(ctx); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("Lag after Close = %v, want ErrClosed", err)
	}
}

func TestMessagingSystem(t *testing.T) {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer client.Close()
	d, err := redisdriver.New(client)
	if err != nil {
		t.Fatal(err)
	}
	ms, ok := any(d).(herald.MessagingSystem)
	if !ok || ms.MessagingSystem() != "redis" {
		t.Fatal("the Driver does not name its messaging system redis")
	}
}
