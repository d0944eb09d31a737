package redisdriver_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/redis/redisdriver"
	"github.com/heraldbus/herald/redis/redistest"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	if os.Getenv(moverChildEnv) != "" {
		os.Exit(runMoverChild())
	}
	goleak.VerifyTestMain(m)
}

func clientFor(t testing.TB, addr string) goredis.UniversalClient {
	t.Helper()
	return redistest.Client(t, addr)
}

// newPrefix returns a key prefix unique to this test and run, and deletes
// every key under it when t ends, so that runs sharing a Redis never see
// each other's streams.
func newPrefix(t testing.TB, c goredis.UniversalClient) string {
	t.Helper()
	return redistest.Prefix(t, c, "herald:test:stream:")
}

// testEnv is one test's view of the test Redis: a client and a key prefix
// of its own.
type testEnv struct {
	addr   string
	client goredis.UniversalClient
	prefix string
}

func newEnv(t testing.TB) testEnv {
	t.Helper()
	addr := testenv.RedisAddr(t)
	c := clientFor(t, addr)
	return testEnv{addr: addr, client: c, prefix: newPrefix(t, c)}
}

// driver returns a driver on the environment's prefix; background errors
// go to the test log unless opts install a handler.
func (e testEnv) driver(t testing.TB, opts ...redisdriver.Option) *redisdriver.Driver {
	t.Helper()
	d, err := redisdriver.New(e.client, append([]redisdriver.Option{redisdriver.WithKeyPrefix(e.prefix), redisdriver.WithErrorHandler(testErrors(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// testErrors logs background errors of the driver, which a test does not
// expect unless it installs a handler of its own.
func testErrors(t testing.TB) func(error) {
	var mu sync.Mutex
	done := false
	t.Cleanup(func() { mu.Lock(); done = true; mu.Unlock() })
	return func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t.Logf("driver error: %v", err)
		}
	}
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			return newEnv(t).driver(t)
		},
		MaxMessageBytes: redisdriver.DefaultMaxMessageBytes,
		DeliveryCounts:  true,
		Lag:             true,
		ErrorReporting:  true,
		Delay:           true,
		// Message.Time travels as Unix nanoseconds.
		TimePrecision: time.Nanosecond,
	})
}

func TestNewReportsEveryInvalidOption(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { _ = c.Close() })
	_, err := redisdriver.New(c,
		redisdriver.WithTrimMaxLen(10),
		redisdriver.WithTrimMaxAge(time.Minute),
		redisdriver.WithBlock(0),
		redisdriver.WithClaimMinIdle(time.Millisecond),
		redisdriver.WithReclaimInterval(-1),
		redisdriver.WithConsumerIdle(-time.Second),
		redisdriver.WithStartPosition(herald.StartPosition(7)),
	)
	if err == nil {
		t.Fatal("New accepted invalid options")
	}
	for _, want := range []string{"exclude each other", "block 0s", "claim min idle 1ms", "reclaim interval -1ns", "consumer idle -1s", "start position 7"} {
		if !containsErr(err, want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := redisdriver.New(nil); err == nil {
		t.Error("New accepted a nil client")
	}
	if _, err := redisdriver.New(c, redisdriver.WithTrimMaxLen(-1), redisdriver.WithTrimMaxAge(-time.Second)); err == nil || !containsErr(err, "max length -1") || !containsErr(err, "max age -1s") {
		t.Errorf("negative trim bounds: %v", err)
	}
	if _, err := redisdriver.New(c, redisdriver.WithBlock(time.Second), redisdriver.WithConsumerIdle(time.Second)); !containsErr(err, "must exceed the block time") {
		t.Errorf("consumer idle within the block time: %v", err)
	}
	d, err := redisdriver.New(c)
	if err != nil {
		t.Fatalf("defaults rejected: %v", err)
	}
	if got := d.StreamKey("orders"); got != redisdriver.DefaultKeyPrefix+"orders" {
		t.Errorf("StreamKey = %q", got)
	}
}

func containsErr(err error, sub string) bool {
	return err != nil && strings.Contains(err.Error(), sub)
}

// fetchUntil fetches from sub until cond holds for what arrived so far,
// failing the test after timeout. It acknowledges nothing.
func fetchUntil(t *testing.T, sub herald.Subscription, timeout time.Duration, cond func([]herald.Delivery) bool) []herald.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var got []herald.Delivery
	buf := make([]herald.Delivery, 64)
	for !cond(got) {
		n, err := sub.Fetch(ctx, buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("Fetch after %d deliveries: %v", len(got), err)
		}
	}
	return got
}

// fetchFor fetches from sub for about d and returns what arrived.
func fetchFor(t *testing.T, sub herald.Subscription, d time.Duration) []herald.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var got []herald.Delivery
	buf := make([]herald.Delivery, 64)
	for {
		n, err := sub.Fetch(ctx, buf)
		got = append(got, buf[:n]...)
		if errors.Is(err, context.DeadlineExceeded) {
			return got
		}
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
	}
}

func message(topic, id, key string) *herald.Message {
	return &herald.Message{
		ID: id, Topic: topic, Key: key,
		ContentType: "text/plain", Data: []byte("payload " + id), Time: time.Now().UTC(),
		Headers: herald.Headers{"h": id},
	}
}

// waitNothingPending waits until group has no pending entry on topic: every
// acknowledgment reached Redis.
func waitNothingPending(t *testing.T, d *redisdriver.Driver, topic, group string) {
	t.Helper()
	drivertest.Eventually(t, 30*time.Second, "the acknowledgments", func() bool {
		st, err := d.GroupStats(context.Background(), topic, group)
		return err == nil && st.Pending == 0
	})
}
