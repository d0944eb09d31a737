package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/heraldbus/herald"
)

// DefaultHealthMaxAge is how old the oldest waiting row may be before
// CheckHealth reports the relay as not keeping up.
const DefaultHealthMaxAge = time.Minute

// WithHealthMaxAge sets how old the oldest row waiting in the table may be
// before CheckHealth reports the relay as not keeping up (default
// DefaultHealthMaxAge).
func WithHealthMaxAge(d time.Duration) RelayOption {
	return func(c *relayConfig) { c.HealthMaxAge = d }
}

// CheckHealth reports whether the relay runs and the table is kept
// drained: Run is running (as the active relay or a standby), the database
// answers, and the oldest waiting row is younger than WithHealthMaxAge. A
// standby is ready as long as some relay drains the table. It makes the two
// queries of Stats; its Details are those Stats.
func (r *Relay) CheckHealth(ctx context.Context) herald.HealthStatus {
	st := herald.HealthStatus{Name: "outbox relay " + r.t.name}
	r.mu.Lock()
	started, closed := r.started, r.closed
	r.mu.Unlock()
	select {
	case <-r.done:
		st.Problems = append(st.Problems, "relay stopped")
	default:
		switch {
		case closed:
			st.Problems = append(st.Problems, "relay shutting down")
		case !started:
			st.Problems = append(st.Problems, "relay not running")
		}
	}
	stats, err := r.Stats(ctx)
	if err != nil {
		st.Problems = append(st.Problems, err.Error())
	} else if stats.OldestAge > r.cfg.HealthMaxAge {
		st.Problems = append(st.Problems, fmt.Sprintf("oldest row waiting %v, more than %v (backlog %d rows)",
			stats.OldestAge.Round(time.Millisecond), r.cfg.HealthMaxAge, stats.Backlog))
	}
	st.Details = stats
	st.Ready = len(st.Problems) == 0
	return st
}
