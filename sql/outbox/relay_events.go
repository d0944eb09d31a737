package outbox

import (
	"fmt"
	"time"
)

// RelayEvent is a change in a relay's leadership, or a round it could not
// deliver, as an operator wants to watch them: a failover shows as one
// relay's LeaseLost and another's Active, without reading debug logs. See
// WithEventHook.
type RelayEvent struct {
	Kind  RelayEventKind
	Table string
	Time  time.Time
	// Err says why, for LeaseLost and RoundFailed.
	Err error
	// Rows is how many rows of the round were not delivered (RoundFailed).
	Rows int
	// Outage is true for a RoundFailed that the relay took for the target
	// being unavailable (no attempts charged) rather than for bad rows.
	Outage bool
}

// RelayEventKind says what happened.
type RelayEventKind int

const (
	// Active: the relay took the table's lock and delivers.
	Active RelayEventKind = iota + 1
	// Standby: another relay holds the lock; this one waits to take over.
	Standby
	// LeaseLost: the active relay lost its lock or its connection (a
	// database error); it competes for the lock again after a backoff.
	LeaseLost
	// RoundFailed: target writes of a round failed; the rows stay in the
	// table and are retried (a row that keeps failing is quarantined).
	RoundFailed
)

// String returns "active", "standby", "lease_lost" or "round_failed".
func (k RelayEventKind) String() string {
	switch k {
	case Active:
		return "active"
	case Standby:
		return "standby"
	case LeaseLost:
		return "lease_lost"
	case RoundFailed:
		return "round_failed"
	}
	return fmt.Sprintf("RelayEventKind(%d)", int(k))
}

// WithEventHook calls f with every RelayEvent of the relay, from the
// relay's own goroutine: f must not block. The relay logs each of them
// too.
func WithEventHook(f func(RelayEvent)) RelayOption {
	return func(c *relayConfig) { c.EventHook = f }
}

// event reports e to the hook, if any.
func (r *Relay) event(e RelayEvent) {
	if r.cfg.EventHook == nil {
		return
	}
	e.Table, e.Time = r.t.name, time.Now()
	r.cfg.EventHook(e)
}
