package herald

import (
	"sync"
	"testing"
	"time"

	"github.com/segmentio/ksuid"
)

func TestKSUIDSourceUniqueAndCurrent(t *testing.T) {
	var src ksuidSource
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	// Enough IDs per goroutine to exhaust a sequence (65536) and reseed.
	for range 4 {
		wg.Go(func() {
			local := make([]string, 0, 70000)
			for range 70000 {
				local = append(local, src.next(time.Now()))
			}
			mu.Lock()
			for _, id := range local {
				if seen[id] {
					t.Errorf("duplicate ID %s", id)
				}
				seen[id] = true
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	now := time.Now()
	id, err := ksuid.Parse(src.next(now))
	if err != nil {
		t.Fatal(err)
	}
	if d := id.Time().Sub(now.Truncate(time.Second)); d != 0 {
		t.Fatalf("KSUID time is %v off the current second", d)
	}
	later := now.Add(3 * time.Second)
	id, _ = ksuid.Parse(src.next(later))
	if !id.Time().Equal(later.Truncate(time.Second)) {
		t.Fatalf("a new second did not reseed: %v vs %v", id.Time(), later)
	}
}
