package memdriver

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/heraldbus/herald"
)

// DelayPrecision is how late after its due time the broker makes a delayed
// message visible: a timer fires at the due time, so the figure is the
// scheduling latency of the Go runtime, well below a millisecond on an idle
// machine. It is what the broker reports as herald.DelayedWriter.
const DelayPrecision = 5 * time.Millisecond

// DelayPrecision reports DelayPrecision (herald.DelayedWriter).
func (b *Broker) DelayPrecision() time.Duration { return DelayPrecision }

var _ herald.DelayedWriter = (*Broker)(nil)

// delayed holds the messages written with a HeaderDeliverAt in the future
// until they are due, then appends them to their partitions. It starts no
// goroutine of its own: a time.AfterFunc timer runs the release, and Close
// stops it. Messages still waiting when the Broker closes are dropped with
// it, like everything else it holds.
type delayed struct {
	mu        sync.Mutex
	q         dueHeap
	seq       uint64 // tie-break: equal due times release in write order
	timer     *time.Timer
	releasing bool // a release is appending; it looks again before it stops
}

type dueEntry struct {
	due time.Time
	seq uint64
	m   *herald.Message
}

type dueHeap []dueEntry

func (h dueHeap) Len() int { return len(h) }
func (h dueHeap) Less(i, j int) bool {
	if !h[i].due.Equal(h[j].due) {
		return h[i].due.Before(h[j].due)
	}
	return h[i].seq < h[j].seq
}
func (h dueHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)   { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = dueEntry{}
	*h = old[:len(old)-1]
	return e
}

// dueTimes returns, per message, when it is due if it is delayed (zero
// if not), or nil when none is; a bad due time fails the batch.
func dueTimes(msgs []*herald.Message, now time.Time) ([]time.Time, error) {
	dues, i, err := herald.DueTimes("memdriver", msgs, now)
	if err != nil {
		return nil, fail("write", msgs[i].Topic, "", "message "+msgs[i].ID, err)
	}
	return dues, nil
}

// hold queues m until due.
func (b *Broker) hold(m *herald.Message, due time.Time) {
	d := &b.delayed
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seq++
	heap.Push(&d.q, dueEntry{due: due, seq: d.seq, m: m})
	if d.q[0].seq == d.seq && !d.releasing { // the new head: fire at its time
		b.armLocked(time.Until(due))
	}
}

// armLocked sets the timer to fire after wait; d.mu held.
func (b *Broker) armLocked(wait time.Duration) {
	d := &b.delayed
	if d.timer == nil {
		d.timer = time.AfterFunc(wait, b.release)
		return
	}
	d.timer.Reset(wait)
}

// release appends every due message to its partition, in due order, then
// sets the timer for the next one. One release runs at a time; a timer
// that fires meanwhile leaves the work to it.
func (b *Broker) release() {
	d := &b.delayed
	d.mu.Lock()
	if d.releasing {
		d.mu.Unlock()
		return
	}
	d.releasing = true
	for {
		if b.closed.Load() {
			d.q = nil
			d.releasing = false
			d.mu.Unlock()
			return
		}
		now := time.Now()
		var due []*herald.Message
		for len(d.q) > 0 && !d.q[0].due.After(now) {
			due = append(due, heap.Pop(&d.q).(dueEntry).m)
		}
		if len(due) == 0 {
			break
		}
		d.mu.Unlock()
		for _, m := range due {
			// It blocks while the partition is full, like Write; only
			// Close ends the wait, and then the messages go with the broker.
			if b.topic(m.Topic).partitionFor(m.Key).append(context.Background(), b.done, m) != nil {
				break
			}
		}
		d.mu.Lock()
	}
	if len(d.q) > 0 {
		b.armLocked(time.Until(d.q[0].due))
	}
	d.releasing = false
	d.mu.Unlock()
}

// stopDelayed stops the timer at Close.
func (b *Broker) stopDelayed() {
	d := &b.delayed
	d.mu.Lock()
	if d.timer != nil {
		d.timer.Stop()
	}
	d.q = nil
	d.mu.Unlock()
}

// Waiting returns how many delayed messages of topic the broker holds
// back. A due message that waits for room in a full partition is no
// longer counted; while it waits, it holds back the release of every
// other due message, of every topic, as a blocked Write would hold its
// batch.
func (b *Broker) Waiting(topic string) int {
	d := &b.delayed
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, e := range d.q {
		if e.m.Topic == topic {
			n++
		}
	}
	return n
}
