package redisdriver_test

import (
	"context"
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

func TestWithWaitOptions(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", ReadTimeout: time.Second}) // never dialled
	t.Cleanup(func() { _ = c.Close() })
	ring := goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	t.Cleanup(func() { _ = ring.Close() })
	for _, tc := range []struct {
		name   string
		client goredis.UniversalClient
		opt    redisdriver.Option
		want   string // "" for accepted
	}{
		{"off", c, redisdriver.WithWait(0, 0), ""},
		{"within the read timeout", c, redisdriver.WithWait(1, 500*time.Millisecond), ""},
		{"negative replicas", c, redisdriver.WithWait(-1, time.Millisecond), "wait for -1 replicas"},
		{"no timeout", c, redisdriver.WithWait(1, 0), "wait timeout 0s"},
		{"beyond the read timeout", c, redisdriver.WithWait(1, time.Second), "below the client's ReadTimeout 1s"},
		{"ring", ring, redisdriver.WithWait(1, time.Millisecond), "*goredis.Ring"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := redisdriver.New(tc.client, tc.opt)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("New: %v", err)
			case tc.want != "" && !containsErr(err, tc.want):
				t.Errorf("New = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestWithWaitWithoutReplicas: the test server has no replica, so every
// message fails with ErrNotReplicated, although it was stored.
func TestWithWaitWithoutReplicas(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t, redisdriver.WithWait(1, 10*time.Millisecond))
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	checkNotReplicated(t, d, topic)
	if n, err := env.client.XLen(ctx, d.StreamKey(topic)).Result(); err != nil || n != 2 {
		t.Errorf("XLEN = %d, %v; want the 2 messages of the topic stored all the same", n, err)
	}
}

// checkNotReplicated writes a batch of two topics and a single message,
// and checks that each fails with ErrNotReplicated, as a *WriteError
// listing every message and a *DriverError.
func checkNotReplicated(t *testing.T, d *redisdriver.Driver, topic string) {
	t.Helper()
	ctx := context.Background()
	other := topic + ".other"
	err := d.Write(ctx, []*herald.Message{message(topic, "a", "k"), message(other, "b", "k"), message(topic, "c", "k")})
	var werr *herald.WriteError
	if !errors.As(err, &werr) || len(werr.Failed) != 3 {
		t.Fatalf("batch Write = %v, want a WriteError listing 3 messages", err)
	}
	for i, f := range werr.Failed {
		if f.Index != i || !errors.Is(f.Err, redisdriver.ErrNotReplicated) {
			t.Errorf("failed message %d: index %d, %v; want ErrNotReplicated", i, f.Index, f.Err)
		}
	}
	err = d.Write(ctx, []*herald.Message{message(other, "d", "k")})
	var derr *herald.DriverError
	if !errors.As(err, &derr) || !errors.Is(err, redisdriver.ErrNotReplicated) {
		t.Errorf("single Write = %v, want a DriverError wrapping ErrNotReplicated", err)
	}
}
