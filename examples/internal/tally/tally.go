// Package tally keeps count of what an example's handlers did, as they run
// on several goroutines, and lets the example wait until the count is
// complete.
package tally

import (
	"context"
	"sync"
)

// A Tally is one lock over an example's counts and a signal that wakes
// the waiter whenever a handler changes them. Lock and Unlock guard reads
// of the counts (and anything else that must not interleave with them,
// such as output). Make one with New.
type Tally struct {
	sync.Mutex
	changed chan struct{} // capacity 1: something changed since Wait last looked
}

// New returns an empty Tally.
func New() *Tally {
	return &Tally{changed: make(chan struct{}, 1)}
}

// Note runs f, which changes the counts, under the lock, and wakes Wait.
func (t *Tally) Note(f func()) {
	t.Lock()
	f()
	t.Unlock()
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// Wait returns nil once done, which it calls under the lock, reports true,
// and ctx's error if ctx ends first. It checks done at once and after
// every Note.
func (t *Tally) Wait(ctx context.Context, done func() bool) error {
	for {
		t.Lock()
		complete := done()
		t.Unlock()
		if complete {
			return nil
		}
		select {
		case <-t.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
