package herald

import (
	"context"
	"time"
)

// The breaker's state machine and the throttle's bucket with a clock of
// the test's own.

type Circuit = circuit

// NewCircuit returns a breaker on clock now (nil: time.Now) and its
// per-attempt middleware; changes of state go to cfg.OnStateChange.
func NewCircuit(cfg BreakerConfig, now func() time.Time) (*Circuit, Middleware) {
	cfg.now = now
	c := newCircuit("", cfg, nil)
	return c, c.attempts()
}

// Gate is the breaker's wait before deduplication.
func (c *circuit) Gate() Middleware { return c.gate() }

// Health is the breaker's health report at now.
func (c *circuit) Health(now time.Time) BreakerHealth { return c.health(now) }

type TokenBucket = tokenBucket

// NewTokenBucket returns a throttle's bucket on clock now (nil: time.Now).
func NewTokenBucket(perSecond float64, burst int, now func() time.Time) *TokenBucket {
	return newTokenBucket(throttleConfig{rate: perSecond, burst: burst, now: now})
}

// Reserve takes a token and returns the wait until it exists.
func (b *tokenBucket) Reserve() time.Duration { return b.reserve() }

// Wait is the throttle middleware's wait for a token.
func (b *tokenBucket) Wait(ctx context.Context) error { return b.wait(ctx) }

// Throttle is the throttle middleware.
func (b *tokenBucket) Throttle() Middleware { return b.middleware() }
