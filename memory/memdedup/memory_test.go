package memdedup_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/dedup/storagetest"
	"github.com/heraldbus/herald/memory/memdedup"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newStorage(t testing.TB, opts ...memdedup.Option) *memdedup.Storage {
	t.Helper()
	s, err := memdedup.New(context.Background(), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) dedup.Storage { return newStorage(t) })
}

func TestConformanceSmallCache(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) dedup.Storage {
		return newStorage(t, memdedup.WithShards(1), memdedup.WithMaxMemory(1), memdedup.WithWindow(time.Minute))
	})
}

// TestWindowCap checks that a Commit window longer than the storage's window
// is cut to it, and that a lease is not.
func TestWindowCap(t *testing.T) {
	const window = 300 * time.Millisecond
	s := newStorage(t, memdedup.WithWindow(window))
	ctx := context.Background()
	done, held := t.Name()+"/done", t.Name()+"/held"

	h, err := s.Claim(ctx, held, time.Hour)
	if err != nil || h.State != dedup.Claimed {
		t.Fatalf("Claim(%q) = %v, %v; want claimed", held, h.State, err)
	}
	c, err := s.Claim(ctx, done, time.Minute)
	if err != nil || c.State != dedup.Claimed {
		t.Fatalf("Claim(%q) = %v, %v; want claimed", done, c.State, err)
	}
	before := time.Now()
	if err := s.Commit(ctx, done, c.Token, time.Hour); err != nil {
		t.Fatalf("Commit(%q): %v", done, err)
	}
	for {
		c, err := s.Claim(ctx, done, time.Minute)
		elapsed := time.Since(before)
		if err != nil {
			t.Fatalf("Claim(%q): %v", done, err)
		}
		if c.State == dedup.Claimed {
			if elapsed < window {
				t.Fatalf("Claim(%q) = claimed after %v, want done until %v", done, elapsed, window)
			}
			break
		}
		if c.State != dedup.Done {
			t.Fatalf("Claim(%q) = %v, want done", done, c.State)
		}
		if elapsed > 10*time.Second {
			t.Fatalf("Claim(%q) still done after %v, want claimed after %v", done, elapsed, window)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if c, err := s.Claim(ctx, held, time.Minute); err != nil || c.State != dedup.Busy {
		t.Errorf("Claim(%q) past the window = %v, %v; want busy for the hour-long lease", held, c.State, err)
	}
	if err := s.Commit(ctx, held, h.Token, time.Hour); err != nil {
		t.Errorf("Commit(%q) past the window: %v", held, err)
	}
}

// TestSweep checks that claims whose lease ran out and whose key is never
// claimed again do not pile up, and that their holders get ErrNotHeld.
func TestSweep(t *testing.T) {
	const old, fresh = 20000, 80000 // per stripe: about 78 and 312
	s := newStorage(t)
	ctx := context.Background()
	abandoned := make([]dedup.Claim, old)
	for i := range abandoned {
		c, err := s.Claim(ctx, t.Name()+"/old/"+strconv.Itoa(i), time.Millisecond)
		if err != nil || c.State != dedup.Claimed {
			t.Fatalf("Claim = %v, %v; want claimed", c.State, err)
		}
		abandoned[i] = c
	}
	time.Sleep(10 * time.Millisecond)
	for i := range fresh {
		c, err := s.Claim(ctx, t.Name()+"/new/"+strconv.Itoa(i), time.Minute)
		if err != nil || c.State != dedup.Claimed {
			t.Fatalf("Claim = %v, %v; want claimed", c.State, err)
		}
	}
	// Every stripe grew past twice what it held at its last sweep, so it
	// swept again after the old leases ran out.
	if n := s.LiveClaims(); n != fresh {
		t.Errorf("%d claims kept, want the %d live ones", n, fresh)
	}
	for i, c := range abandoned {
		key := t.Name() + "/old/" + strconv.Itoa(i)
		if err := s.Commit(ctx, key, c.Token, time.Minute); !errors.Is(err, dedup.ErrNotHeld) {
			t.Fatalf("Commit(%q) long after the lease = %v, want ErrNotHeld", key, err)
		}
	}
}

func TestErrorsNameOperationAndKey(t *testing.T) {
	s := newStorage(t)
	ctx := context.Background()
	key := "orders:42"

	for op, err := range map[string]error{
		"commit":  s.Commit(ctx, key, "7", time.Minute),
		"release": s.Release(ctx, key, "7"),
	} {
		if !errors.Is(err, dedup.ErrNotHeld) {
			t.Errorf("%s = %v, want ErrNotHeld", op, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, op) || !strings.Contains(msg, key) {
			t.Errorf("%s error %q does not name the operation and the key", op, msg)
		}
	}
}

func TestInvalidOptions(t *testing.T) {
	_, err := memdedup.New(context.Background(),
		memdedup.WithWindow(0), memdedup.WithShards(3), memdedup.WithMaxMemory(-1))
	if err == nil {
		t.Fatal("New with invalid options succeeded")
	}
	for _, want := range []string{"window", "shards", "max memory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New error %q does not mention %s", err, want)
		}
	}
}

// TestCloseAndContext checks that Close and the end of New's context both
// stop the cleanup goroutine (goleak in TestMain would catch one left
// running), that Close may be called again, and that the storage still
// answers afterwards.
func TestCloseAndContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	byCtx, err := memdedup.New(ctx)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	byClose, err := memdedup.New(context.Background())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	cancel()
	for range 2 {
		if err := byClose.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := byCtx.Close(); err != nil {
			t.Errorf("Close after the context ended: %v", err)
		}
	}
	for _, s := range []*memdedup.Storage{byCtx, byClose} {
		c, err := s.Claim(context.Background(), t.Name(), time.Minute)
		if err != nil || c.State != dedup.Claimed {
			t.Fatalf("Claim after Close = %v, %v; want claimed", c.State, err)
		}
		if err := s.Commit(context.Background(), t.Name(), c.Token, time.Minute); err != nil {
			t.Fatalf("Commit after Close: %v", err)
		}
	}
	goleak.VerifyNone(t)
}

// BenchmarkClaimCommit measures the success path: a new key is claimed and
// committed.
func BenchmarkClaimCommit(b *testing.B) {
	s := newStorage(b)
	ctx := context.Background()
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = "subscriber-group/msg-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for _, key := range keys {
		c, err := s.Claim(ctx, key, time.Minute)
		if err != nil || c.State != dedup.Claimed {
			b.Fatalf("Claim = %v, %v", c.State, err)
		}
		if err := s.Commit(ctx, key, c.Token, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaimDone measures the duplicate path: a done key is claimed.
func BenchmarkClaimDone(b *testing.B) {
	s := newStorage(b)
	ctx := context.Background()
	const key = "subscriber-group/msg-1"
	c, err := s.Claim(ctx, key, time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Commit(ctx, key, c.Token, time.Hour); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if c, err := s.Claim(ctx, key, time.Minute); err != nil || c.State != dedup.Done {
			b.Fatalf("Claim = %v, %v", c.State, err)
		}
	}
}

// BenchmarkClaimCommitParallel runs the success path from GOMAXPROCS
// goroutines on distinct keys. Building each key costs one allocation of
// its own.
func BenchmarkClaimCommitParallel(b *testing.B) {
	s := newStorage(b)
	ctx := context.Background()
	b.ReportAllocs()
	var next atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		prefix := "subscriber-group/" + strconv.FormatUint(next.Add(1), 10) + "/"
		buf := []byte(prefix)
		for i := 0; pb.Next(); i++ {
			buf = strconv.AppendInt(buf[:len(prefix)], int64(i), 10)
			key := string(buf)
			c, err := s.Claim(ctx, key, time.Minute)
			if err != nil || c.State != dedup.Claimed {
				b.Errorf("Claim = %v, %v", c.State, err)
				return
			}
			if err := s.Commit(ctx, key, c.Token, time.Hour); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func Example() {
	ctx := context.Background()
	s, err := memdedup.New(ctx, memdedup.WithWindow(10*time.Minute))
	if err != nil {
		panic(err)
	}
	defer s.Close()

	const key = "billing/2f1c9a"
	for delivery := 1; delivery <= 2; delivery++ {
		c, err := s.Claim(ctx, key, 30*time.Second)
		if err != nil {
			panic(err)
		}
		fmt.Printf("delivery %d: %v\n", delivery, c.State)
		if c.State == dedup.Claimed {
			// Run the handler here; on failure call s.Release instead.
			if err := s.Commit(ctx, key, c.Token, 10*time.Minute); err != nil {
				panic(err)
			}
		}
	}
	// Output:
	// delivery 1: claimed
	// delivery 2: done
}
