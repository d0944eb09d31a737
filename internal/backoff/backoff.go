// Package backoff is herald's one exponential backoff with jitter and its
// context-aware sleep, shared by the scheduler, the publishers, the drivers
// and the outbox. (The retry middleware uses eapache/go-resiliency's
// retrier, which has its own.)
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff doubles a wait from Min to Max, each wait spread by ±20% jitter
// so that many clients retrying at once do not retry in step. The zero
// value is not usable; New makes one. It is not safe for concurrent use.
type Backoff struct {
	min, max, cur time.Duration
}

// New returns a Backoff whose first wait is lo and whose waits stop
// growing at hi (hi below lo counts as lo).
func New(lo, hi time.Duration) Backoff {
	return Backoff{min: lo, max: max(hi, lo), cur: lo}
}

// Next returns the next wait, with jitter, and doubles the one after.
func (b *Backoff) Next() time.Duration {
	d := b.cur
	b.cur = min(2*b.cur, b.max)
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}

// Reset makes the next wait the first one again, after a success.
func (b *Backoff) Reset() { b.cur = b.min }

// Sleep waits d, or until ctx ends; it reports whether it waited in full.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
