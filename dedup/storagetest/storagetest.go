// Package storagetest is the conformance suite for dedup.Storage: one place
// that says what a processed-set storage must do. Every implementation runs
// it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) dedup.Storage {
//			s := newStorageForTest(t) // closed in t.Cleanup
//			return s
//		})
//	}
//
// The suite waits for short leases and windows (a few hundred
// milliseconds) to run out, so it takes a few seconds. It never asserts how
// fast a storage is; where time matters it only checks that a lease or a
// window did not end before it should have, measured from a point the
// storage cannot have seen yet.
package storagetest

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald/dedup"
)

// Options tells the suite what a storage does not promise.
type Options struct {
	// IgnoresContext says that the storage never blocks and may therefore
	// complete an operation whose context is already done. The suite then
	// accepts either success or an error wrapping the context's error;
	// without it, such an operation must fail with the context's error.
	IgnoresContext bool
}

// Durations the suite uses. Long ones must outlast the whole suite; short
// ones are waited out.
const (
	longLease   = time.Minute
	longWindow  = time.Hour
	shortLease  = 200 * time.Millisecond
	shortWindow = 300 * time.Millisecond

	// pollEvery and pollFor bound the wait for a short lease or window to
	// run out; pollFor is generous so that a loaded CI machine does not fail.
	pollEvery = 20 * time.Millisecond
	pollFor   = 10 * time.Second

	// slack absorbs the rounding of a storage's clock (Redis keeps
	// milliseconds) when the suite checks that a lease or window did not end
	// early.
	slack = 5 * time.Millisecond
)

// Run runs the conformance suite against the storages newStorage returns,
// requiring every promise (Options{}). See RunWithOptions.
func Run(t *testing.T, newStorage func(t *testing.T) dedup.Storage) {
	t.Helper()
	RunWithOptions(t, newStorage, Options{})
}

// RunWithOptions runs the conformance suite. Each case is a parallel subtest
// that calls newStorage once, so newStorage must be safe to call
// concurrently; it should register its own clean-up with t.Cleanup. Keys
// start with the subtest's name, so storages that share a server (one Redis
// for several test runs) do not collide as long as the name is unique to the
// run or the storage adds a per-run prefix.
func RunWithOptions(t *testing.T, newStorage func(t *testing.T) dedup.Storage, opts Options) {
	t.Helper()
	cases := []struct {
		name string
		run  func(t *testing.T, s dedup.Storage, opts Options)
	}{
		{"ClaimThenCommitIsDone", testClaimCommit},
		{"ReleaseMakesClaimable", testRelease},
		{"ClaimWhileHeldIsBusy", testBusy},
		{"KeysAreIndependent", testIndependentKeys},
		{"ConcurrentClaimsOneWinner", testConcurrentClaims},
		{"MutualExclusionUnderChurn", testChurn},
		{"LeaseExpiryMakesClaimable", testLeaseExpiry},
		{"WrongTokenNotHeld", testWrongToken},
		{"StaleTokenNotHeld", testStaleToken},
		{"CommitAfterLeaseExpiredAndReclaimed", testCommitAfterReclaim},
		{"CommitAfterLeaseExpired", testCommitAfterExpiry},
		{"DoneExpiresAfterWindow", testWindowExpiry},
		{"DoneContext", testDoneContext},
		{"NonPositiveDurationsRefused", testNonPositiveDurations},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t, newStorage(t), opts)
		})
	}
}

func testClaimCommit(t *testing.T, s dedup.Storage, _ Options) {
	ctx := context.Background()
	key := keyFor(t, "k")

	c := claim(t, s, key, longLease, dedup.Claimed)
	if c.Token == "" {
		t.Fatalf("Claim(%q) = Claimed with an empty token", key)
	}
	commit(t, s, key, c.Token, longWindow)
	for range 3 {
		if d := claim(t, s, key, longLease, dedup.Done); d.Token != "" {
			t.Errorf("Claim(%q) = Done with token %q, want none", key, d.Token)
		}
	}
	if err := s.Commit(ctx, key, c.Token, longWindow); !errors.Is(err, dedup.ErrNotHeld) {
		t.Errorf("second Commit(%q) = %v, want ErrNotHeld", key, err)
	}
	if err := s.Release(ctx, key, c.Token); !errors.Is(err, dedup.ErrNotHeld) {
		t.Errorf("Release(%q) after Commit = %v, want ErrNotHeld", key, err)
	}
	claim(t, s, key, longLease, dedup.Done)
}

func testRelease(t *testing.T, s dedup.Storage, _ Options) {
	ctx := context.Background()
	key := keyFor(t, "k")

	first := claim(t, s, key, longLease, dedup.Claimed)
	release(t, s, key, first.Token)
	if err := s.Release(ctx, key, first.Token); !errors.Is(err, dedup.ErrNotHeld) {
		t.Errorf("second Release(%q) = %v, want ErrNotHeld", key, err)
	}
	second := claim(t, s, key, longLease, dedup.Claimed)
	if second.Token == first.Token {
		t.Errorf("Claim(%q) after Release reused token %q", key, first.Token)
	}
	stillHeldThenDone(t, s, key, second.Token)
}

func testNonPositiveDurations(t *testing.T, s dedup.Storage, _ Options) {
	ctx := context.Background()
	key := keyFor(t, "k")
	for _, lease := range []time.Duration{0, -time.Second} {
		if c, err := s.Claim(ctx, key, lease); err == nil {
			t.Errorf("Claim(lease %v) = %v, want an error", lease, c.State)
		}
	}
	c := claim(t, s, key, longLease, dedup.Claimed)
	for _, window := range []time.Duration{0, -time.Second} {
		if err := s.Commit(ctx, key, c.Token, window); err == nil || errors.Is(err, dedup.ErrNotHeld) {
			t.Errorf("Commit(window %v) = %v, want an error other than ErrNotHeld", window, err)
		}
	}
	// The refused Commits left the claim alone.
	commit(t, s, key, c.Token, longWindow)
}

func testBusy(t *testing.T, s dedup.Storage, _ Options) {
	key := keyFor(t, "k")

	c := claim(t, s, key, longLease, dedup.Claimed)
	for range 3 {
		if b := claim(t, s, key, longLease, dedup.Busy); b.Token != "" {
			t.Errorf("Claim(%q) = Busy with token %q, want none", key, b.Token)
		}
	}
	// A Busy answer must not have disturbed the holder.
	commit(t, s, key, c.Token, longWindow)
	claim(t, s, key, longLease, dedup.Done)
}

func testIndependentKeys(t *testing.T, s dedup.Storage, _ Options) {
	ctx := context.Background()
	a, b := keyFor(t, "a"), keyFor(t, "b")

	ca := claim(t, s, a, longLease, dedup.Claimed)
	cb := claim(t, s, b, longLease, dedup.Claimed)
	if err := s.Commit(ctx, a, cb.Token, longWindow); !errors.Is(err, dedup.ErrNotHeld) {
		t.Errorf("Commit(%q) with the token of %q = %v, want ErrNotHeld", a, b, err)
	}
	commit(t, s, a, ca.Token, longWindow)
	claim(t, s, a, longLease, dedup.Done)
	claim(t, s, b, longLease, dedup.Busy)
	release(t, s, b, cb.Token)
	claim(t, s, b, longLease, dedup.Claimed)
	claim(t, s, a, longLease, dedup.Done)
}

// testConcurrentClaims starts 64 Claims of one key at once, for several
// keys: exactly one may win.
func testConcurrentClaims(t *testing.T, s dedup.Storage, _ Options) {
	const goroutines = 64
	for k := range 8 {
		key := keyFor(t, "k"+strconv.Itoa(k))
		start := make(chan struct{})
		var (
			wg      sync.WaitGroup
			claimed atomic.Int32
			busy    atomic.Int32
		)
		for range goroutines {
			wg.Go(func() {
				<-start
				c, err := s.Claim(context.Background(), key, longLease)
				switch {
				case err != nil:
					t.Errorf("Claim(%q): %v", key, err)
				case c.State == dedup.Claimed:
					claimed.Add(1)
				case c.State == dedup.Busy:
					busy.Add(1)
				default:
					t.Errorf("Claim(%q) = %v, want claimed or busy", key, c.State)
				}
			})
		}
		close(start)
		wg.Wait()
		if n := claimed.Load(); n != 1 {
			t.Errorf("key %q: %d of %d concurrent Claims returned Claimed, want exactly 1 (%d busy)",
				key, n, goroutines, busy.Load())
		}
	}
}

// testChurn has several deliveries of one message race to process it, with
// the holder failing (releasing) a number of times before it succeeds. At no
// time may two of them hold the claim, and exactly one may commit.
func testChurn(t *testing.T, s dedup.Storage, _ Options) {
	const (
		goroutines = 16
		failures   = 40
	)
	ctx := context.Background()
	key := keyFor(t, "k")
	var (
		wg       sync.WaitGroup
		holders  atomic.Int32
		attempts atomic.Int32
		commits  atomic.Int32
	)
	deadline := time.Now().Add(pollFor)
	start := make(chan struct{})
	for range goroutines {
		wg.Go(func() {
			<-start
			for time.Now().Before(deadline) {
				c, err := s.Claim(ctx, key, longLease)
				if err != nil {
					t.Errorf("Claim(%q): %v", key, err)
					return
				}
				switch c.State {
				case dedup.Done:
					return
				case dedup.Busy:
					continue
				}
				if n := holders.Add(1); n != 1 {
					t.Errorf("key %q: %d deliveries hold the claim at once", key, n)
				}
				fail := attempts.Add(1) <= failures
				holders.Add(-1)
				if fail {
					if err := s.Release(ctx, key, c.Token); err != nil {
						t.Errorf("Release(%q): %v", key, err)
						return
					}
					continue
				}
				if err := s.Commit(ctx, key, c.Token, longWindow); err != nil {
					t.Errorf("Commit(%q): %v", key, err)
					return
				}
				commits.Add(1)
			}
			t.Errorf("key %q: not done after %v", key, pollFor)
		})
	}
	close(start)
	wg.Wait()
	if n := commits.Load(); n != 1 {
		t.Errorf("key %q: %d commits, want 1", key, n)
	}
	if n := attempts.Load(); n != failures+1 {
		t.Errorf("key %q: %d claims won, want %d", key, n, failures+1)
	}
}

func testLeaseExpiry(t *testing.T, s dedup.Storage, _ Options) {
	key := keyFor(t, "k")

	before := time.Now()
	old := claim(t, s, key, shortLease, dedup.Claimed)
	c := waitClaimable(t, s, key, before, shortLease, dedup.Busy)
	if c.Token == old.Token {
		t.Errorf("Claim(%q) after the lease ran out reused token %q", key, old.Token)
	}
	stillHeldThenDone(t, s, key, c.Token)
}

func testWrongToken(t *testing.T, s dedup.Storage, _ Options) {
	ctx := context.Background()
	key := keyFor(t, "k")
	free := keyFor(t, "never-claimed")

	for _, token := range []string{"", "0", "1", "bogus"} {
		if err := s.Commit(ctx, free, token, longWindow); !errors.Is(err, dedup.ErrNotHeld) {
			t.Errorf("Commit(%q, %q) of an unclaimed key = %v, want ErrNotHeld", free, token, err)
		}
		if err := s.Release(ctx, free, token); !errors.Is(err, dedup.ErrNotHeld) {
			t.Errorf("Release(%q, %q) of an unclaimed key = %v, want ErrNotHeld", free, token, err)
		}
	}
	// A Commit that failed must not have marked the key done.
	claim(t, s, free, longLease, dedup.Claimed)

	c := claim(t, s, key, longLease, dedup.Claimed)
	for _, token := range []string{"", "0", "1", "bogus", c.Token + "x"} {
		if token == c.Token {
			continue
		}
		if err := s.Commit(ctx, key, token, longWindow); !errors.Is(err, dedup.ErrNotHeld) {
			t.Errorf("Commit(%q, %q) = %v, want ErrNotHeld", key, token, err)
		}
		if err := s.Release(ctx, key, token); !errors.Is(err, dedup.ErrNotHeld) {
			t.Errorf("Release(%q, %q) = %v, want ErrNotHeld", key, token, err)
		}
	}
	stillHeldThenDone(t, s, key, c.Token)
}

func testStaleToken(t *testing.T, s dedup.Storage, _ Options) {
	key := keyFor(t, "k")

	old := claim(t, s, key, longLease, dedup.Claimed)
	release(t, s, key, old.Token)
	cur := claim(t, s, key, longLease, dedup.Claimed)

	refused(t, s, key, old.Token, "with a released token")
	stillHeldThenDone(t, s, key, cur.Token)
}

func testCommitAfterReclaim(t *testing.T, s dedup.Storage, _ Options) {
	key := keyFor(t, "k")

	before := time.Now()
	late := claim(t, s, key, shortLease, dedup.Claimed)
	cur := waitClaimable(t, s, key, before, shortLease, dedup.Busy)

	refused(t, s, key, late.Token, "by the holder whose lease ran out")
	stillHeldThenDone(t, s, key, cur.Token)
}

func testCommitAfterExpiry(t *testing.T, s dedup.Storage, _ Options) {
	key := keyFor(t, "k")

	late := claim(t, s, key, shortLease, dedup.Claimed)
	// The lease began before Claim returned: counted from the return, it
	// has run out however long the call took on a loaded machine.
	claimed := time.Now()
	time.Sleep(time.Until(claimed.Add(shortLease + 100*time.Millisecond)))

	refused(t, s, key, late.Token, "after the lease ran out")
	// The late Commit must not have marked the key done.
	claim(t, s, key, longLease, dedup.Claimed)
}

func testWindowExpiry(t *testing.T, s dedup.Storage, _ Options) {
	long, short := keyFor(t, "long"), keyFor(t, "short")

	cl := claim(t, s, long, longLease, dedup.Claimed)
	cs := claim(t, s, short, longLease, dedup.Claimed)
	commit(t, s, long, cl.Token, longWindow)
	before := time.Now()
	commit(t, s, short, cs.Token, shortWindow)

	c := waitClaimable(t, s, short, before, shortWindow, dedup.Done)
	claim(t, s, short, longLease, dedup.Busy)
	release(t, s, short, c.Token)
	claim(t, s, long, longLease, dedup.Done)
}

func testDoneContext(t *testing.T, s dedup.Storage, opts Options) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()

	for _, tc := range []struct {
		name string
		ctx  context.Context
	}{
		{"Canceled", cancelled},
		{"DeadlineExceeded", expired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			want := tc.ctx.Err()
			check := func(op string, err error) {
				t.Helper()
				switch {
				case err == nil && opts.IgnoresContext:
				case err == nil:
					t.Errorf("%s with a done context succeeded, want an error wrapping %v", op, want)
				case !errors.Is(err, want):
					t.Errorf("%s with a done context = %v, want an error wrapping %v", op, err, want)
				case errors.Is(err, dedup.ErrNotHeld):
					t.Errorf("%s with a done context = %v, must not wrap ErrNotHeld", op, err)
				}
			}

			key := keyFor(t, "claim")
			c, err := s.Claim(tc.ctx, key, longLease)
			check("Claim", err)
			if err == nil && c.State == dedup.Claimed {
				release(t, s, key, c.Token)
			}

			key = keyFor(t, "commit")
			c = claim(t, s, key, longLease, dedup.Claimed)
			err = s.Commit(tc.ctx, key, c.Token, longWindow)
			check("Commit", err)
			if err == nil {
				return // the storage ignored the context and committed
			}
			check("Release", s.Release(tc.ctx, key, c.Token))
			// Whatever the done context did, the claim is either still held
			// or gone; it must not be anyone else's.
			if err := s.Release(ctx, key, c.Token); err != nil && !errors.Is(err, dedup.ErrNotHeld) {
				t.Errorf("Release(%q): %v", key, err)
			}
		})
	}
}

// keyFor returns a key unique to the test and name.
func keyFor(t *testing.T, name string) string {
	return t.Name() + "/" + name
}

// claim claims key and fails the test unless the state is want.
func claim(t *testing.T, s dedup.Storage, key string, lease time.Duration, want dedup.State) dedup.Claim {
	t.Helper()
	c, err := s.Claim(context.Background(), key, lease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", key, err)
	}
	if c.State != want {
		t.Fatalf("Claim(%q) = %v, want %v", key, c.State, want)
	}
	if c.State == dedup.Claimed && c.Token == "" {
		t.Fatalf("Claim(%q) = Claimed with an empty token", key)
	}
	return c
}

func commit(t *testing.T, s dedup.Storage, key, token string, window time.Duration) {
	t.Helper()
	if err := s.Commit(context.Background(), key, token, window); err != nil {
		t.Fatalf("Commit(%q): %v", key, err)
	}
}

func release(t *testing.T, s dedup.Storage, key, token string) {
	t.Helper()
	if err := s.Release(context.Background(), key, token); err != nil {
		t.Fatalf("Release(%q): %v", key, err)
	}
}

// waitClaimable claims key (with a long lease) until it is Claimed. That
// must happen once the lease or window d, which began no earlier than
// before, has run out, and not earlier; until then every Claim must return
// meanwhile.
func waitClaimable(t *testing.T, s dedup.Storage, key string, before time.Time, d time.Duration, meanwhile dedup.State) dedup.Claim {
	t.Helper()
	for {
		c, err := s.Claim(context.Background(), key, longLease)
		elapsed := time.Since(before)
		if err != nil {
			t.Fatalf("Claim(%q): %v", key, err)
		}
		switch c.State {
		case dedup.Claimed:
			if elapsed < d-slack {
				t.Fatalf("Claim(%q) = Claimed %v after a %v lease or window began, want %v until it ends",
					key, elapsed, d, meanwhile)
			}
			return c
		case meanwhile:
		default:
			t.Fatalf("Claim(%q) = %v before the %v lease or window ran out, want %v", key, c.State, d, meanwhile)
		}
		if elapsed > d+pollFor {
			t.Fatalf("Claim(%q) still %v %v after a %v lease or window began", key, c.State, elapsed, d)
		}
		time.Sleep(pollEvery)
	}
}

// refused checks that Commit and Release with token, which no longer
// holds key (why says how it lost it), both fail with ErrNotHeld.
func refused(t *testing.T, s dedup.Storage, key, token, why string) {
	t.Helper()
	ctx := context.Background()
	if err := s.Commit(ctx, key, token, longWindow); !errors.Is(err, dedup.ErrNotHeld) {
		t.Errorf("Commit(%q) %s = %v, want ErrNotHeld", key, why, err)
	}
	if err := s.Release(ctx, key, token); !errors.Is(err, dedup.ErrNotHeld) {
		t.Errorf("Release(%q) %s = %v, want ErrNotHeld", key, why, err)
	}
}

// stillHeldThenDone checks that token's claim on key still keeps others
// out (Busy), and that committing it marks the key done.
func stillHeldThenDone(t *testing.T, s dedup.Storage, key, token string) {
	t.Helper()
	claim(t, s, key, longLease, dedup.Busy)
	commit(t, s, key, token, longWindow)
	claim(t, s, key, longLease, dedup.Done)
}
