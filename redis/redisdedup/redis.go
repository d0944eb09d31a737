// Package redisdedup is a dedup.Storage kept in Redis through go-redis v9, shared
// by every instance of a service that points at the same Redis.
//
// # Semantics
//
// Each key of the processed set is one Redis key: the prefix (see
// WithKeyPrefix) followed by the caller's key. Its value is "c:" and the
// claim's token while a delivery holds it, with the lease as the key's TTL,
// and "d" once the delivery committed, with the window as the TTL. Claim,
// Commit and Release are each one Lua script, so each is atomic and costs one
// round trip:
//
//   - Claim sets the key only if it is absent (SET NX PX). An existing "d"
//     means dedup.Done, anything else dedup.Busy.
//   - Commit replaces the value with "d" only if it still holds the token.
//   - Release deletes the key only if it still holds the token.
//
// Leases and windows are timed by the Redis server, in whole milliseconds
// (rounded up), so the clocks of the service instances do not matter.
//
// # Failures
//
// A delivery whose process crashes leaves its claim behind until the lease
// runs out; then a redelivery claims the key and runs the handler. Choose a
// lease longer than a handler normally takes, or a slow handler's message
// runs twice.
//
// An error from Redis (network, timeout, a cancelled context) leaves the
// outcome unknown: the command may or may not have run. A Claim that failed
// this way may have taken the key, which then stays Busy until its lease
// runs out; a Commit may or may not have marked it done.
//
// Redis replicates asynchronously: a failover can lose recent claims and done
// marks, and a maxmemory-policy that evicts keys with a TTL (volatile-* or
// allkeys-*) can drop them early. Both let a message be processed twice,
// which the at-least-once contract allows; use noeviction if that matters.
//
// Each Redis key is used by one script at a time, so the storage works with
// Redis Cluster and Sentinel through goredis.UniversalClient.
package redisdedup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald/dedup"
)

// DefaultKeyPrefix is the prefix of every Redis key unless WithKeyPrefix says
// otherwise.
const DefaultKeyPrefix = "herald:dedup:"

// Values of a Redis key, and the results of the scripts. The scripts below
// are immutable once built (NewScript computes their SHA-1 in Go), so
// sharing them between Storages shares no mutable state.
const (
	doneValue   = "d"
	claimPrefix = "c:"

	resultClaimed = 1
	resultDone    = 2
	resultBusy    = 3
)

// claimScript takes KEYS[1] with value ARGV[1] for ARGV[2] milliseconds if it
// is absent, and otherwise tells a done mark from a claim.
var claimScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
	return 1
end
if redis.call('GET', KEYS[1]) == 'd' then
	return 2
end
return 3
`)

// commitScript marks KEYS[1] done for ARGV[2] milliseconds if it still holds
// the claim ARGV[1].
var commitScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
	return 1
end
return 0
`)

// releaseScript deletes KEYS[1] if it still holds the claim ARGV[1].
var releaseScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	redis.call('DEL', KEYS[1])
	return 1
end
return 0
`)

// Option configures a Storage built by New.
type Option func(*Storage)

// WithKeyPrefix sets the prefix of every Redis key the storage uses (default
// DefaultKeyPrefix). Services that share a Redis but must not share a
// processed set need different prefixes. On Redis Cluster, a prefix with a
// hash tag ("{dedup}:") would put every key in one slot; the default spreads
// them.
func WithKeyPrefix(prefix string) Option {
	return func(s *Storage) { s.prefix = prefix }
}

// Storage is the Redis dedup.Storage. It is safe for concurrent use, from one
// process or many: of any number of concurrent Claims of one key, from any
// instances sharing the Redis and the prefix, at most one returns
// dedup.Claimed. Create it with New.
type Storage struct {
	client goredis.UniversalClient
	prefix string
}

var _ dedup.Storage = (*Storage)(nil)

// New creates a Storage that uses client, which may be a *goredis.Client, a
// *goredis.ClusterClient or a Sentinel failover client. The Storage does not
// own client: the caller closes it, after the last call to the Storage.
func New(client goredis.UniversalClient, opts ...Option) *Storage {
	s := &Storage{client: client, prefix: DefaultKeyPrefix}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Claim tries to take key for lease, which must be positive. It returns
// dedup.Claimed with a token when the key was free, or its lease or window
// ran out; dedup.Done while a done mark lasts; and dedup.Busy while another
// claim's lease runs. An error names the key and wraps the cause (a Redis
// error or ctx's); then the outcome is unknown (see the package
// documentation).
func (s *Storage) Claim(ctx context.Context, key string, lease time.Duration) (dedup.Claim, error) {
	if lease <= 0 {
		return dedup.Claim{}, fmt.Errorf("redisdedup: claim %q: lease must be positive, got %v", key, lease)
	}
	token := newToken()
	res, err := claimScript.Run(ctx, s.client, []string{s.prefix + key}, claimPrefix+token, millis(lease)).Int()
	if err != nil {
		return dedup.Claim{}, fmt.Errorf("redisdedup: claim %q: %w", key, err)
	}
	switch res {
	case resultClaimed:
		return dedup.Claim{State: dedup.Claimed, Token: token}, nil
	case resultDone:
		return dedup.Claim{State: dedup.Done}, nil
	case resultBusy:
		return dedup.Claim{State: dedup.Busy}, nil
	}
	return dedup.Claim{}, fmt.Errorf("redisdedup: claim %q: unexpected script result %d", key, res)
}

// Commit marks key done for window, which must be positive. It returns an
// error wrapping dedup.ErrNotHeld when token does not hold the claim of key
// (its lease ran out, or it was committed or released), and then changes
// nothing. Any other error names the key and wraps the cause; then the
// outcome is unknown.
func (s *Storage) Commit(ctx context.Context, key, token string, window time.Duration) error {
	if window <= 0 {
		return fmt.Errorf("redisdedup: commit %q: window must be positive, got %v", key, window)
	}
	res, err := commitScript.Run(ctx, s.client, []string{s.prefix + key}, claimPrefix+token, millis(window)).Int()
	if err != nil {
		return fmt.Errorf("redisdedup: commit %q: %w", key, err)
	}
	if res != 1 {
		return fmt.Errorf("redisdedup: commit %q: %w", key, dedup.ErrNotHeld)
	}
	return nil
}

// Release deletes the claim of key so that the next Claim takes it. It
// returns an error wrapping dedup.ErrNotHeld when token does not hold the
// claim of key (in particular after Commit), and then changes nothing. Any
// other error names the key and wraps the cause; then the outcome is
// unknown.
func (s *Storage) Release(ctx context.Context, key, token string) error {
	res, err := releaseScript.Run(ctx, s.client, []string{s.prefix + key}, claimPrefix+token).Int()
	if err != nil {
		return fmt.Errorf("redisdedup: release %q: %w", key, err)
	}
	if res != 1 {
		return fmt.Errorf("redisdedup: release %q: %w", key, dedup.ErrNotHeld)
	}
	return nil
}

// newToken returns 64 random bits in hex. Tokens only tell the claims of one
// key apart, so a collision would need two claims of the same key to draw
// the same 64 bits.
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails; see crypto/rand.Read
	return hex.EncodeToString(b[:])
}

// millis converts d to whole milliseconds, rounding up so that a positive d
// never becomes the invalid PX 0.
func millis(d time.Duration) int64 {
	ms := d / time.Millisecond
	if d%time.Millisecond != 0 {
		ms++
	}
	return int64(ms)
}
