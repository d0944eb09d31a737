package drivertest

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB that keeps what Errorf reports.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestKeyOrderCatchesDisorderAndOverlap(t *testing.T) {
	rec := &recorder{TB: t}
	o := NewKeyOrder(rec)
	o.Run(Event{Key: "a", Seq: 0}, func() {})
	o.Run(Event{Key: "a", Seq: 2}, func() {}) // 1 skipped
	o.Run(Event{Key: "b", Seq: 0}, func() {
		o.Run(Event{Key: "b", Seq: 1}, func() {}) // b runs twice at once
	})
	if len(rec.errs) != 2 {
		t.Fatalf("reported %q, want the skipped event and the overlap", rec.errs)
	}
	if o.Handled() != 4 || o.MaxParallel() != 2 {
		t.Errorf("Handled %d, MaxParallel %d; want 4 and 2", o.Handled(), o.MaxParallel())
	}

	clean := &recorder{TB: t}
	o = NewKeyOrder(clean)
	var wg sync.WaitGroup
	for k := range 4 {
		wg.Go(func() {
			for i := range 20 {
				o.Run(Event{Key: fmt.Sprint(k), Seq: i}, func() { time.Sleep(50 * time.Microsecond) })
			}
		})
	}
	wg.Wait()
	if len(clean.errs) != 0 || o.Handled() != 80 {
		t.Errorf("in-order events reported %q, handled %d of 80", clean.errs, o.Handled())
	}
}

func TestEventuallyAndContext(t *testing.T) {
	n := 0
	Eventually(t, time.Minute, "three polls", func() bool { n++; return n == 3 })
	ctx := Context(t, time.Hour)
	if _, ok := ctx.Deadline(); !ok || ctx.Err() != nil {
		t.Errorf("Context: deadline set %v, err %v", ok, ctx.Err())
	}
}
