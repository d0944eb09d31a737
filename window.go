package herald

import (
	"context"
	"sync/atomic"
)

// window counts a scheduler's in-flight slots: one per delivery fetched
// and not yet settled, MaxInFlight in all. The intake takes slots before a
// fetch and waits while none is free; workers give them back one by one.
// Taking and giving back are atomic operations (a channel of tokens cost
// a channel operation on each side of every delivery); the intake sleeps
// on a channel only when the window is full.
type window struct {
	free    atomic.Int64
	waiting atomic.Bool   // the intake sleeps on freed
	freed   chan struct{} // cap 1: a slot was given back while it slept
}

func newWindow(size int) *window {
	w := &window{freed: make(chan struct{}, 1)}
	w.free.Store(int64(size))
	return w
}

// tryTake takes up to most free slots without waiting and returns how
// many it took (0 when the window is full).
func (w *window) tryTake(most int) int {
	for {
		f := w.free.Load()
		if f <= 0 {
			return 0
		}
		n := min(f, int64(most))
		if w.free.CompareAndSwap(f, f-n) {
			return int(n)
		}
	}
}

// take takes at least one slot and up to most, waiting while the window
// is full; full is called once before it waits, and again with false
// when it has a slot. ok is false when ctx ended while it waited. Only
// one goroutine (the intake) calls take.
func (w *window) take(ctx context.Context, most int, full func(bool)) (n int, ok bool) {
	if n = w.tryTake(most); n > 0 {
		return n, true
	}
	full(true)
	defer full(false)
	for {
		// Announce the wait, then look again: a worker gives back its
		// slot before it looks at waiting, so one of the two sees the
		// other (atomics are sequentially consistent).
		w.waiting.Store(true)
		if n = w.tryTake(most); n > 0 {
			w.waiting.Store(false)
			return n, true
		}
		select {
		case <-w.freed:
		case <-ctx.Done():
			w.waiting.Store(false)
			return 0, false
		}
		w.waiting.Store(false)
		if n = w.tryTake(most); n > 0 {
			return n, true
		}
	}
}

// give gives n slots back and wakes the intake if it sleeps.
func (w *window) give(n int) {
	w.free.Add(int64(n))
	if w.waiting.Load() {
		select {
		case w.freed <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}
