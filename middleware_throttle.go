package herald

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// WithThrottle runs the subscription's handler at most perSecond times a
// second on average, and at most burst times at once after a quiet spell:
// a token bucket that the subscription's workers share, for handlers that
// call a rate-limited API. Each run of the handler takes a token, retry
// attempts included; skipped duplicates and messages held by an open
// breaker take none. A run waits for its token, bounded by its delivery's
// context; shutdown ends the wait and leaves the message unacknowledged.
// perSecond must be above 0 and finite, burst at least 1.
//
// The throttle is one per Subscribe call, like the breaker. It bounds one
// process: instances of a service each have their own.
func WithThrottle(perSecond float64, burst int) SubscribeOption {
	return func(o *subscribeOptions) { o.throttle = &throttleConfig{rate: perSecond, burst: burst} }
}

type throttleConfig struct {
	rate  float64
	burst int
	now   func() time.Time // tests; default time.Now
}

func (c throttleConfig) validate() error {
	return errors.Join(
		badIf(!(c.rate > 0) || math.IsInf(c.rate, 1), "WithThrottle rate", c.rate, "want a finite number of handler runs per second above 0"),
		badIf(c.burst < 1, "WithThrottle burst", c.burst, "want 1 or more"))
}

// tokenBucket is the throttle's bucket: it holds up to burst tokens and
// gains rate of them a second. A taker may run into debt: it reserves the
// next token and waits until that token exists, so waiters are served in
// the order they came.
type tokenBucket struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time
	stop  <-chan struct{} // the scheduler's; set before it starts

	mu     sync.Mutex
	tokens float64 // below 0: reserved ahead
	last   time.Time
}

func newTokenBucket(cfg throttleConfig) *tokenBucket {
	if cfg.now == nil {
		cfg.now = time.Now
	}
	return &tokenBucket{rate: cfg.rate, burst: float64(cfg.burst), now: cfg.now, tokens: float64(cfg.burst), last: cfg.now()}
}

// bind makes the bucket's waits end when stop is closed.
func (b *tokenBucket) bind(stop <-chan struct{}) { b.stop = stop }

// reserve takes a token and returns how long to wait until it exists.
func (b *tokenBucket) reserve() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now := b.now(); now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	secs := -b.tokens / b.rate
	if secs >= float64(math.MaxInt64/int64(time.Second)) {
		return math.MaxInt64
	}
	return time.Duration(secs * float64(time.Second))
}

// unreserve gives back a token a waiter did not use.
func (b *tokenBucket) unreserve() {
	b.mu.Lock()
	b.tokens = min(b.burst, b.tokens+1)
	b.mu.Unlock()
}

// middleware waits for a token before each run of next.
func (b *tokenBucket) middleware() Middleware {
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			if err := b.wait(ctx); err != nil {
				return err
			}
			return next(ctx, m)
		}
	}
}

// wait takes a token, waiting until it exists, ctx ends or the scheduler
// stops.
func (b *tokenBucket) wait(ctx context.Context) error {
	d := b.reserve()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		b.unreserve()
		return ctx.Err()
	case <-b.stop:
		b.unreserve()
		return fmt.Errorf("herald: throttle: %w", ErrStopping)
	}
}
