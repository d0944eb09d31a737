package sqldriver

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

func owned(s *subscription) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.owned)
}

func waitShares(t *testing.T, what string, want func(counts []int) bool, subs ...*subscription) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		counts := make([]int, len(subs))
		for i, s := range subs {
			counts[i] = owned(s)
		}
		if want(counts) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: partitions owned %v", what, counts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sum(c []int) int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// Members move to an even share of the partitions as they join and
// leave, and a member that stops renewing (it died) loses its partitions
// to the others after its lease.
func TestMembersShareThePartitions(t *testing.T) {
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "m.db")+"?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	newSub := func() *subscription {
		d, err := New(db, SQLite, WithLease(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		if err := d.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		s, err := d.Subscribe(ctx, "t", "g")
		if err != nil {
			t.Fatal(err)
		}
		return s.(*subscription)
	}
	a := newSub()
	if n := owned(a); n != DefaultPartitions {
		t.Fatalf("the first member owns %d partitions, want all %d", n, DefaultPartitions)
	}
	b := newSub()
	waitShares(t, "two members", func(c []int) bool { return c[0] == 8 && c[1] == 8 }, a, b)
	c := newSub()
	waitShares(t, "three members", func(c []int) bool { return sum(c) == 16 && max(c[0], c[1], c[2]) <= 6 }, a, b, c)
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitShares(t, "after one left", func(c []int) bool { return c[0] == 8 && c[1] == 8 }, a, b)
	// b dies: its heartbeats stop, its partitions stay marked as its own.
	b.cancel()
	<-b.done
	waitShares(t, "after one died", func(c []int) bool { return c[0] == 16 }, a)
	b.closed.Store(true) // already gone; only its driver's bookkeeping is left
	b.d.leave(b)
}
