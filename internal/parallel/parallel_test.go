package parallel

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestEachRunsAllAtOnceAndJoinsErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	errOdd := errors.New("odd")
	var running, most atomic.Int32
	release := make(chan struct{})
	done := make(chan error)
	go func() {
		done <- Each([]int{1, 2, 3, 4}, func(i int) error {
			n := running.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			<-release
			running.Add(-1)
			if i%2 == 1 {
				return errOdd
			}
			return nil
		})
	}()
	for most.Load() < 4 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	err := <-done
	if !errors.Is(err, errOdd) {
		t.Fatalf("Each = %v, want it to wrap the odd items' errors", err)
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 2 {
		t.Errorf("Each joined %d errors, want 2", n)
	}
	if err := Each([]int{}, func(int) error { return errOdd }); err != nil {
		t.Errorf("Each over no items = %v, want nil", err)
	}
}
