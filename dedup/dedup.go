// Package dedup defines the processed-set storage behind herald's
// deduplication middleware, and the claim protocol that makes it race-free.
//
// A delivery first claims its key (the subscriber group and the message ID)
// with a lease. Only the holder of the claim runs the handler. On success
// the holder commits, which turns the claim into a "done" mark that lives for
// the dedup window; on failure it releases the claim so that a redelivery
// can run. A claim whose holder crashed expires with its lease.
//
// Implementations: memdedup (one process, allegro/bigcache) and
// redisdedup (shared by every instance of a service, go-redis v9).
package dedup

import (
	"context"
	"errors"
	"time"
)

// State is the outcome of a claim.
type State int

const (
	// Claimed: the caller holds the claim and must Commit or Release it.
	Claimed State = iota + 1
	// Done: the message was processed within the dedup window; skip it.
	Done
	// Busy: another delivery holds an unexpired claim; try again later.
	Busy
)

func (s State) String() string {
	switch s {
	case Claimed:
		return "claimed"
	case Done:
		return "done"
	case Busy:
		return "busy"
	}
	return "unknown"
}

// Claim is the result of Storage.Claim.
type Claim struct {
	State State
	// Token identifies this claim to Commit and Release, so that a holder
	// whose lease expired cannot commit or release a newer claim.
	Token string
}

// ErrNotHeld is returned by Commit and Release when the claim is no longer
// held with that token (its lease expired and another delivery claimed it,
// or it was already committed or released).
var ErrNotHeld = errors.New("dedup: claim not held")

// Storage keeps the processed set. Implementations are safe for concurrent
// use, and Claim is atomic: of any number of concurrent Claims of one key,
// at most one returns Claimed. A lease or window that is not positive is
// refused with an error other than ErrNotHeld, and changes nothing.
type Storage interface {
	// Claim tries to take key for lease.
	Claim(ctx context.Context, key string, lease time.Duration) (Claim, error)
	// Commit marks key done for window, if token still holds the claim.
	Commit(ctx context.Context, key, token string, window time.Duration) error
	// Release drops the claim so a redelivery can take it, if token still
	// holds it.
	Release(ctx context.Context, key, token string) error
}
