// Package backoff is herald's one exponential backoff with jitter and its
// context-aware sleep, shared by the scheduler, the drivers and the outbox.
package backoff

import (
	"context"
	"time"
)

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
