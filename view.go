package herald

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/heraldbus/herald/internal/backoff"
)

// viewPoll is how often WaitCaughtUp looks at the view's progress.
const viewPoll = 2 * time.Millisecond

// View is a read-only copy of a whole group table (Table), kept up to date
// from its changelog, for any process: a service's API answering "what is
// the state of order 17" while another service's group writes it, or a
// handler reading another group's table (a lookup). It follows every
// partition of the changelog with one goroutine each, from Start until
// Close. It is safe for concurrent use.
//
// A View is eventually consistent: a value shows once its record is read,
// after the writing handler returned; Lag tells how far behind it is and
// WaitCaughtUp waits for it.
type View[V any] struct {
	tableCopy[V]
	logs TableLog

	mu      sync.Mutex // guards log, next, cancel, closed
	log     Changelog
	next    []uint64 // per partition, the offset the copy reaches
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errMu   sync.Mutex
	lastErr error
	closed  bool
}

// NewView returns a view of the table named name in d's changelogs. It
// takes the same options as NewTable (a codec, a store for the copy).
func NewView[V any](d TableLog, name string, opts ...TableOption) (*View[V], error) {
	if isNil(d) {
		return nil, fmt.Errorf("herald: NewView: %w", ErrNilDriver)
	}
	o, err := newTableOptions(name, opts)
	if err != nil {
		return nil, err
	}
	return &View[V]{tableCopy: tableCopy[V]{name: name, codec: o.codec, store: o.store}, logs: d}, nil
}

// Start follows the changelog in the background until Close (or until
// ctx ends), and returns at once. A changelog that does not exist yet (no
// member of the table's group has started) is opened once it does:
// until then the view is empty, Err says why, and WaitCaughtUp waits.
func (v *View[V]) Start(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.closed:
		return ErrClosed
	case v.cancel != nil:
		return errors.New("herald: view already started")
	}
	ctx, v.cancel = context.WithCancel(ctx)
	v.wg.Go(func() { v.run(ctx) })
	return nil
}

// run opens the changelog, retrying with a backoff, then follows each of
// its partitions on a goroutine of its own.
func (v *View[V]) run(ctx context.Context) {
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		err := v.open(ctx)
		if err == nil {
			break
		}
		v.setErr(err)
		if !backoff.Sleep(ctx, retry.Next()) {
			return
		}
	}
	v.setErr(nil)
	for i := range v.partitions() {
		v.wg.Go(func() { v.follow(ctx, i) })
	}
}

// open opens the changelog and reads where the store's copy reaches.
func (v *View[V]) open(ctx context.Context) error {
	log, err := v.logs.Changelog(ctx, v.name, "")
	if err != nil {
		return &TableError{Table: v.name, Op: "open", Partition: -1, Err: err}
	}
	next := make([]uint64, log.Partitions())
	for i := range next {
		if next[i], err = v.store.Next(i); err != nil {
			return &TableError{Table: v.name, Op: "open", Partition: i, Err: err}
		}
	}
	v.mu.Lock()
	v.log, v.next = log, next
	v.mu.Unlock()
	return nil
}

// partitions is the changelog's partition count, 0 until it is open.
func (v *View[V]) partitions() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.next)
}

// follow reads partition part into the copy until ctx ends, backing off
// and retrying after an error (Err reports the last one).
func (v *View[V]) follow(ctx context.Context, part int) {
	buf := make([]ChangelogRecord, catchUpBatch)
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		next := v.reached(part)
		n, err := v.log.Read(ctx, part, next, buf)
		for _, r := range buf[:n] {
			if err = v.apply(part, r); err != nil {
				break
			}
			next = r.Offset + 1
		}
		if err == nil && n == 0 {
			// Nothing kept from next on: read the end, then look again,
			// and only if there is still nothing skip to the end (what
			// compaction removed below it) and wait beyond it. Records
			// appended before the end was read are then at next or later
			// and found by the second look.
			var end uint64
			if end, err = v.log.End(ctx, part); err == nil {
				if n, err = v.log.Read(ctx, part, next, buf[:1]); err == nil && n == 0 {
					next = max(next, end)
				}
			}
		}
		v.reach(part, next)
		switch {
		case err != nil && ctx.Err() == nil:
			v.setErr(&TableError{Table: v.name, Op: "read", Partition: part, Err: err})
			if !backoff.Sleep(ctx, retry.Next()) {
				return
			}
		case err == nil:
			retry.Reset()
			v.setErr(nil)
			if n == 0 {
				_ = v.log.Wait(ctx, part, next)
			} // n > 0 after the second look: the next round reads them
		}
	}
}

func (v *View[V]) reached(part int) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.next[part]
}

func (v *View[V]) reach(part int, next uint64) {
	v.mu.Lock()
	v.next[part] = max(v.next[part], next)
	v.mu.Unlock()
}

func (v *View[V]) setErr(err error) {
	v.errMu.Lock()
	v.lastErr = err
	v.errMu.Unlock()
}

// Err returns the last error following the changelog met, or nil once a
// read after it worked.
func (v *View[V]) Err() error {
	v.errMu.Lock()
	defer v.errMu.Unlock()
	return v.lastErr
}

// Get returns the state of key as the view holds it; ok is false when the
// key has none (or the view has not read it yet).
func (v *View[V]) Get(key string) (val V, ok bool, err error) {
	n := v.partitions()
	if n == 0 || key == "" {
		return val, false, nil
	}
	return v.value(key, n)
}

// Range calls fn for each key the view holds a state for, partition by
// partition, until fn returns false.
func (v *View[V]) Range(fn func(key string, val V) bool) error {
	n := v.partitions()
	var err error
	for part := range n {
		stop := false
		rerr := v.store.Range(part, func(r ChangelogRecord) bool {
			if r.Deleted {
				return true
			}
			val, derr := v.decode(r)
			if derr != nil {
				err = derr
				return false
			}
			stop = !fn(r.Key, val)
			return !stop
		})
		if err = errors.Join(err, rerr); err != nil || stop {
			return err
		}
	}
	return nil
}

// Lag returns how many changelog records the view has not read yet, over
// every partition (records compacted away meanwhile count too). It asks
// the changelog for each partition's end.
func (v *View[V]) Lag(ctx context.Context) (int64, error) {
	v.mu.Lock()
	log, next := v.log, append([]uint64(nil), v.next...)
	v.mu.Unlock()
	if log == nil {
		return 0, fmt.Errorf("herald: view %q: the changelog is not open (yet): %w", v.name, cmp.Or(v.Err(), errors.New("not started")))
	}
	var lag int64
	for part, reached := range next {
		end, err := log.End(ctx, part)
		if err != nil {
			return 0, &TableError{Table: v.name, Op: "lag", Partition: part, Err: err}
		}
		if end > reached {
			lag += int64(end - reached)
		}
	}
	return lag, nil
}

// WaitCaughtUp waits until the changelog is open and the view has read
// every record it held then, or ctx ends.
func (v *View[V]) WaitCaughtUp(ctx context.Context) error {
	v.mu.Lock()
	started := v.cancel != nil
	v.mu.Unlock()
	if !started {
		return fmt.Errorf("herald: view %q: not started", v.name)
	}
	for v.partitions() == 0 { // not open yet
		if !backoff.Sleep(ctx, viewPoll) {
			return ctx.Err()
		}
	}
	v.mu.Lock()
	log, n := v.log, len(v.next)
	v.mu.Unlock()
	ends := make([]uint64, n)
	for part := range ends {
		end, err := log.End(ctx, part)
		if err != nil {
			return &TableError{Table: v.name, Op: "lag", Partition: part, Err: err}
		}
		ends[part] = end
	}
	for part, end := range ends {
		for v.reached(part) < end {
			if !backoff.Sleep(ctx, viewPoll) {
				return ctx.Err()
			}
		}
	}
	return nil
}

// Close stops following the changelog and waits for the goroutines to
// end. The copy stays readable. Close is idempotent.
func (v *View[V]) Close() error {
	v.mu.Lock()
	v.closed = true
	cancel := v.cancel
	v.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	v.wg.Wait()
	return nil
}
