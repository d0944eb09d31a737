package herald

import (
	"encoding/binary"
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

func BenchmarkKSUIDSource(b *testing.B) {
	var src ksuidSource
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = src.next(now)
		}
	})
}

// The source's string of seed+n is ksuid's own String of the same bytes,
// for sequence numbers where base62 carries (61, 62, 3843, 3844, ...) and
// at both ends, on seeds whose low digits are near a carry too.
func TestKSUIDSourceEncodesAsKSUID(t *testing.T) {
	counts := []uint32{0, 1, 61, 62, 63, 3843, 3844, 65535}
	for i := range 200 {
		counts = append(counts, uint32(i*331)%65536)
	}
	seeds := []ksuid.KSUID{ksuid.Max, ksuid.Nil}
	for range 50 {
		seeds = append(seeds, ksuid.New())
	}
	for _, seed := range seeds {
		var q ksuidSeq
		seed[len(seed)-2], seed[len(seed)-1] = 0, 0
		q.setSeed(seed)
		for _, n := range counts {
			want := seed
			binary.BigEndian.PutUint16(want[len(want)-2:], uint16(n))
			if got := q.id(n); got != want.String() {
				t.Fatalf("seed %s, n %d: %s, want %s", seed, n, got, want)
			}
		}
	}
}

// A sequence's blocks hand out every ID of the sequence once, in order,
// each the string id gives for its number, up to the last (65535).
func TestKSUIDSeqBlocksCoverTheSequence(t *testing.T) {
	var q ksuidSeq
	q.reseed(time.Now())
	want := uint32(0)
	for q.count <= 0xffff {
		q.encodeBlock()
		for q.block != "" {
			if got := q.block[:ksuidLen]; got != q.id(want) {
				t.Fatalf("ID %d = %s, want %s", want, got, q.id(want))
			}
			q.block = q.block[ksuidLen:]
			want++
		}
	}
	if want != 0x10000 {
		t.Fatalf("the blocks held %d IDs, want 65536", want)
	}
}
