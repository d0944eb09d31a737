package redisdedup_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/dedup/storagetest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/redis/redisdedup"
	"github.com/heraldbus/herald/redis/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newClient connects to the test Redis and closes the client when t ends.
func newClient(t testing.TB) goredis.UniversalClient {
	t.Helper()
	return redistest.Client(t, testenv.RedisAddr(t))
}

// newPrefix returns a key prefix unique to this test and run, and deletes
// every key under it when t ends, so that runs sharing a Redis never see
// each other's keys.
func newPrefix(t testing.TB, c goredis.UniversalClient) string {
	t.Helper()
	return redistest.Prefix(t, c, "herald:test:dedup:")
}

func newStorage(t testing.TB) (*redisdedup.Storage, goredis.UniversalClient, string) {
	t.Helper()
	c := newClient(t)
	prefix := newPrefix(t, c)
	return redisdedup.New(c, redisdedup.WithKeyPrefix(prefix)), c, prefix
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) dedup.Storage {
		s, _, _ := newStorage(t)
		return s
	})
}

// TestTwoInstances checks that two service instances, each with its own
// client, share one processed set.
func TestTwoInstances(t *testing.T) {
	ctx := context.Background()
	first, second := newClient(t), newClient(t)
	prefix := newPrefix(t, first)
	a := redisdedup.New(first, redisdedup.WithKeyPrefix(prefix))
	b := redisdedup.New(second, redisdedup.WithKeyPrefix(prefix))
	key := t.Name()

	c, err := a.Claim(ctx, key, time.Minute)
	if err != nil || c.State != dedup.Claimed {
		t.Fatalf("instance a: Claim = %v, %v; want claimed", c.State, err)
	}
	if got, err := b.Claim(ctx, key, time.Minute); err != nil || got.State != dedup.Busy {
		t.Fatalf("instance b: Claim while a holds it = %v, %v; want busy", got.State, err)
	}
	if err := b.Commit(ctx, key, "not-a's-token", time.Hour); !errors.Is(err, dedup.ErrNotHeld) {
		t.Errorf("instance b: Commit with its own token = %v, want ErrNotHeld", err)
	}
	if err := a.Release(ctx, key, c.Token); err != nil {
		t.Fatalf("instance a: Release: %v", err)
	}
	c, err = b.Claim(ctx, key, time.Minute)
	if err != nil || c.State != dedup.Claimed {
		t.Fatalf("instance b: Claim after a released = %v, %v; want claimed", c.State, err)
	}
	if err := b.Commit(ctx, key, c.Token, time.Hour); err != nil {
		t.Fatalf("instance b: Commit: %v", err)
	}
	if got, err := a.Claim(ctx, key, time.Minute); err != nil || got.State != dedup.Done {
		t.Fatalf("instance a: Claim after b committed = %v, %v; want done", got.State, err)
	}

	// A different prefix is a different processed set.
	other := redisdedup.New(second, redisdedup.WithKeyPrefix(newPrefix(t, second)))
	if got, err := other.Claim(ctx, key, time.Minute); err != nil || got.State != dedup.Claimed {
		t.Fatalf("other prefix: Claim = %v, %v; want claimed", got.State, err)
	}
}

// TestLayout checks what the storage writes to Redis: the key under the
// prefix, "c:<token>" with the lease as TTL, then "d" with the window.
func TestLayout(t *testing.T) {
	ctx := context.Background()
	s, c, prefix := newStorage(t)
	key := t.Name()

	cl, err := s.Claim(ctx, key, time.Minute)
	if err != nil || cl.State != dedup.Claimed {
		t.Fatalf("Claim = %v, %v; want claimed", cl.State, err)
	}
	check := func(value string, ttl time.Duration) {
		t.Helper()
		if got, err := c.Get(ctx, prefix+key).Result(); err != nil || got != value {
			t.Errorf("GET %s = %q, %v; want %q", prefix+key, got, err, value)
		}
		if got, err := c.PTTL(ctx, prefix+key).Result(); err != nil || got <= 0 || got > ttl {
			t.Errorf("PTTL %s = %v, %v; want in (0, %v]", prefix+key, got, err, ttl)
		}
	}
	check("c:"+cl.Token, time.Minute)
	if err := s.Commit(ctx, key, cl.Token, 2*time.Hour); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	check("d", 2*time.Hour)
}

func TestDefaultKeyPrefix(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	s := redisdedup.New(c)
	key := "herald-test-" + rand.Text()
	t.Cleanup(func() { _ = c.Del(context.Background(), redisdedup.DefaultKeyPrefix+key).Err() })

	if _, err := s.Claim(ctx, key, time.Minute); err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if n, err := c.Exists(ctx, redisdedup.DefaultKeyPrefix+key).Result(); err != nil || n != 1 {
		t.Errorf("EXISTS %s = %d, %v; want 1", redisdedup.DefaultKeyPrefix+key, n, err)
	}
}

// TestSubMillisecond checks that durations are rounded up to whole
// milliseconds, never down to the invalid PX 0.
func TestSubMillisecond(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newStorage(t)
	key := t.Name()

	c, err := s.Claim(ctx, key, time.Microsecond)
	if err != nil || c.State != dedup.Claimed {
		t.Fatalf("Claim(lease 1µs) = %v, %v; want claimed", c.State, err)
	}
	time.Sleep(10 * time.Millisecond)
	c, err = s.Claim(ctx, key, time.Minute)
	if err != nil || c.State != dedup.Claimed {
		t.Fatalf("Claim after a 1µs lease = %v, %v; want claimed", c.State, err)
	}
	if err := s.Commit(ctx, key, c.Token, 1500*time.Microsecond); err != nil {
		t.Fatalf("Commit(window 1.5ms): %v", err)
	}
}

// TestErrors checks that errors name the operation and the key, and wrap
// their cause: ErrNotHeld, or the client's error.
func TestErrors(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newStorage(t)
	key := "orders:42"

	for op, err := range map[string]error{
		"commit":  s.Commit(ctx, key, "0123456789abcdef", time.Minute),
		"release": s.Release(ctx, key, "0123456789abcdef"),
	} {
		if !errors.Is(err, dedup.ErrNotHeld) {
			t.Errorf("%s = %v, want ErrNotHeld", op, err)
		} else if msg := err.Error(); !strings.Contains(msg, op) || !strings.Contains(msg, key) {
			t.Errorf("%s error %q does not name the operation and the key", op, msg)
		}
	}

	closed := goredis.NewClient(&goredis.Options{Addr: testenv.RedisAddr(t)})
	_ = closed.Close()
	s = redisdedup.New(closed)
	_, claimErr := s.Claim(ctx, key, time.Minute)
	for op, err := range map[string]error{
		"claim":   claimErr,
		"commit":  s.Commit(ctx, key, "0123456789abcdef", time.Minute),
		"release": s.Release(ctx, key, "0123456789abcdef"),
	} {
		if !errors.Is(err, goredis.ErrClosed) {
			t.Errorf("%s on a closed client = %v, want an error wrapping goredis.ErrClosed", op, err)
		} else if msg := err.Error(); !strings.Contains(msg, op) || !strings.Contains(msg, key) {
			t.Errorf("%s error %q does not name the operation and the key", op, msg)
		}
	}
}

// BenchmarkClaimCommit measures the success path against the test Redis:
// two round trips.
func BenchmarkClaimCommit(b *testing.B) {
	s, _, _ := newStorage(b)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		key := strconv.Itoa(i)
		i++
		c, err := s.Claim(ctx, key, time.Minute)
		if err != nil || c.State != dedup.Claimed {
			b.Fatalf("Claim = %v, %v", c.State, err)
		}
		if err := s.Commit(ctx, key, c.Token, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}
