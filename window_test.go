package herald

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestWindowNoLostWakeUp runs the intake's side (take) against four
// givers on a window of two slots: every slot given back is taken again,
// none is lost or made up, and take never sleeps through a give (the
// test would time out).
func TestWindowNoLostWakeUp(t *testing.T) {
	const size, rounds = 2, 20000
	w := newWindow(size)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	work := make(chan int, rounds)
	var givers sync.WaitGroup
	for range 4 {
		givers.Add(1)
		go func() {
			defer givers.Done()
			for n := range work {
				w.give(n)
			}
		}()
	}
	fulls := 0
	for taken := 0; taken < rounds; {
		n, ok := w.take(ctx, 3, func(full bool) {
			if full {
				fulls++
			}
		})
		if !ok {
			t.Fatalf("take gave up after %d of %d slots: a wake-up was lost", taken, rounds)
		}
		if n < 1 || n > 3 {
			t.Fatalf("take took %d slots, want 1 to 3", n)
		}
		taken += n
		work <- n
	}
	close(work)
	givers.Wait()
	if f := w.free.Load(); f != size {
		t.Errorf("%d slots free at the end, want %d", f, size)
	}
	if fulls == 0 {
		t.Error("the window was never full: the test did not exercise the wait")
	}
	short, cancelShort := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelShort()
	w.tryTake(size)
	if _, ok := w.take(short, 1, func(bool) {}); ok {
		t.Error("take on a full window returned a slot nobody gave back")
	}
}
