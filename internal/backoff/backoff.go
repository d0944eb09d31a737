// Package backoff is herald's one exponential backoff (Exponential, and
// Backoff with jitter for loops) and its context-aware sleep, shared by
// the scheduler, the publishers, the drivers and the outbox relay. (The
// retry middleware uses eapache/go-resiliency's retrier, which has its
// own.)
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Exponential is the wait before retry n of a series (1 for the first):
// lo doubled n-1 times, at most hi, without jitter. It is the one doubling
// rule; use it where the count lives elsewhere (a row's attempts in a
// table) and Backoff where a loop keeps it.
func Exponential(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, max(hi, lo))
}

// Backoff is the series of Exponential waits of a retry loop from lo to
// hi, each spread by ±20% jitter so that many clients retrying at once do
// not retry in step. The zero value is not usable; New makes one. It is
// not safe for concurrent use.
type Backoff struct {
	min, max time.Duration
	n        int // waits handed out since the last Reset
}

// New returns a Backoff whose first wait is lo and whose waits stop
// growing at hi (hi below lo counts as lo).
func New(lo, hi time.Duration) Backoff {
	return Backoff{min: lo, max: max(hi, lo)}
}

// Next returns the next wait, with jitter, and doubles the one after.
func (b *Backoff) Next() time.Duration {
	b.n++
	d := Exponential(b.min, b.max, b.n)
	return d + time.Duration((rand.Float64()*0.4-0.2)*float64(d))
}

// Reset makes the next wait the first one again, after a success.
func (b *Backoff) Reset() { b.n = 0 }

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
