// Package redistest is what herald's tests against a real Redis share: a
// client on the test server and a key prefix of the test's own, deleted
// when the test ends, and a private Redis Cluster (StartCluster). The
// server's address comes from testenv.RedisAddr.
package redistest

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Client connects to the test Redis at addr through
// NewUniversalClient (so the code under test is shown to need no more than
// the interface) and closes it when t ends.
func Client(t testing.TB, addr string) goredis.UniversalClient {
	t.Helper()
	c := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: []string{addr}})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a key prefix unique to this run, starting with base,
// and deletes every key under it when t ends, so that runs sharing a Redis
// never see each other's keys.
func Prefix(t testing.TB, c goredis.UniversalClient, base string) string {
	t.Helper()
	prefix := base + rand.Text()[:12] + ":"
	t.Cleanup(func() { DeleteKeys(t, c, prefix) })
	return prefix
}

// DeleteKeys deletes every key under prefix, on every master of a
// *goredis.ClusterClient.
func DeleteKeys(t testing.TB, c goredis.UniversalClient, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if cc, ok := c.(*goredis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *goredis.Client) error {
			return deleteKeys(ctx, node, prefix)
		})
	} else {
		err = deleteKeys(ctx, c, prefix)
	}
	if err != nil {
		t.Errorf("delete the keys under %s: %v", prefix, err)
	}
}

// deleteKeys deletes the keys under prefix that SCAN finds on c, one DEL
// per key: a cluster refuses a DEL of keys in several hash slots.
func deleteKeys(ctx context.Context, c goredis.Cmdable, prefix string) error {
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("scan %s*: %w", prefix, err)
	}
	if len(keys) == 0 {
		return nil
	}
	pipe := c.Pipeline()
	for _, k := range keys {
		pipe.Del(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("delete %d keys: %w", len(keys), err)
	}
	return nil
}
