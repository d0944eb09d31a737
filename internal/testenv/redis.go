package testenv

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// RedisClient connects to the test Redis at addr through
// NewUniversalClient (so the code under test is shown to need no more than
// the interface) and closes it when t ends.
func RedisClient(t testing.TB, addr string) goredis.UniversalClient {
	t.Helper()
	c := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: []string{addr}})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// RedisPrefix returns a key prefix unique to this run, starting with base,
// and deletes every key under it when t ends, so that runs sharing a Redis
// never see each other's keys.
func RedisPrefix(t testing.TB, c goredis.UniversalClient, base string) string {
	t.Helper()
	prefix := base + rand.Text()[:12] + ":"
	t.Cleanup(func() { DeleteRedisKeys(t, c, prefix) })
	return prefix
}

// DeleteRedisKeys deletes every key under prefix.
func DeleteRedisKeys(t testing.TB, c goredis.UniversalClient, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Errorf("scan %s*: %v", prefix, err)
		return
	}
	if len(keys) > 0 {
		if err := c.Del(ctx, keys...).Err(); err != nil {
			t.Errorf("delete %d keys under %s: %v", len(keys), prefix, err)
		}
	}
}
