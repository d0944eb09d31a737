// Package memdedup is a dedup.Storage that keeps the processed set in the
// memory of one process, in an allegro/bigcache cache.
//
// Use it when a single instance of a service consumes a subscription, or
// when a duplicate that slips past another instance is acceptable. Every
// instance has its own set: two instances of a service do not see each
// other's claims. For a set shared by all instances use redisdedup.
//
// # Semantics
//
// Claim takes a key for a lease. While the lease runs, every other Claim of
// the key returns dedup.Busy. Commit turns the claim into a done mark that
// lasts for the window passed to Commit, cut to the storage's window (see
// WithWindow); while it lasts, Claim returns dedup.Done. Release drops the
// claim so that the next Claim returns dedup.Claimed. A claim whose lease ran
// out is gone: the next Claim takes the key, and the late holder's Commit or
// Release returns dedup.ErrNotHeld.
//
// Leases and windows are measured on the process's monotonic clock and are
// exact to the nanosecond; bigcache's one-second expiry resolution only
// decides when memory is given back, never what Claim answers.
//
// A crash of the process loses the whole set: after a restart every message
// is new again. That is the price of keeping it in memory.
//
// # How it is built
//
// bigcache has no atomic set-if-absent, so Claim, Commit and Release of a key
// run under one of 256 mutexes chosen by a hash of the key. Live claims are
// few (one per message in flight) and must never be lost, so they sit in a
// small map guarded by that mutex. Done marks are many and may be forgotten
// early at the cost of a duplicate, so they go to bigcache, which keeps them
// out of the garbage collector's way. bigcache's LifeWindow is the storage's
// window plus bigcache's resolution, so it never drops a done mark early on
// its own.
//
// # Limits
//
// These only weaken deduplication of messages already processed; they never
// let two deliveries hold a claim at once, and never lose a message, because
// delivery stays at-least-once:
//
//   - bigcache indexes entries by a 64-bit hash of the key. Two keys with the
//     same hash overwrite each other's done mark; by the birthday bound the
//     first such pair is expected only once about six billion done marks are
//     kept at once.
//   - With WithMaxMemory set, a full bigcache shard overwrites its oldest
//     done marks, even if their window has not ended.
package memdedup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allegro/bigcache/v3"

	"github.com/heraldbus/herald/dedup"
)

// Defaults of the options.
const (
	// DefaultWindow is the longest a done mark lasts unless WithWindow says
	// otherwise.
	DefaultWindow = time.Hour
	// DefaultShards is the number of bigcache shards unless WithShards says
	// otherwise.
	DefaultShards = 256
)

const (
	// stripes is the number of mutexes that serialise Claim, Commit and
	// Release; two keys contend only when they share one.
	stripes = 256
	// minSweep is the number of claims a stripe may hold before Claim first
	// looks for claims whose lease ran out.
	minSweep = 64

	// A done mark in bigcache is doneMark followed by the window's end.
	doneMark = 'd'
	doneLen  = 1 + 8
)

// Option configures a Storage built by New.
type Option func(*config)

type config struct {
	window      time.Duration
	shards      int
	maxMemoryMB int
	expected    int
}

// WithWindow sets the longest time a done mark lasts (default DefaultWindow).
// A Commit with a shorter window is honoured exactly; a longer one is cut to
// d. The memory of a done mark is given back a few seconds after d has
// passed since its Commit, whatever window the Commit asked for. d must be
// positive.
func WithWindow(d time.Duration) Option {
	return func(c *config) { c.window = d }
}

// WithShards sets the number of bigcache shards (default DefaultShards). n
// must be a power of two.
func WithShards(n int) Option {
	return func(c *config) { c.shards = n }
}

// WithMaxMemory caps the memory of the done marks at mb megabytes (bigcache's
// HardMaxCacheSize; the default 0 means no cap). The cap is split evenly
// between the shards; when a shard is full its oldest done marks are
// overwritten, window or not. bigcache's index and the live claims take
// memory beyond mb.
func WithMaxMemory(mb int) Option {
	return func(c *config) { c.maxMemoryMB = mb }
}

// WithExpectedEntries sizes the cache up front for n done marks (message
// rate times window), so that it does not grow by copying while it fills:
// bigcache doubles its buffers as entries arrive, which dominates the cost
// of the first hour at a high rate. The default sizes for 64 entries per
// shard. n must not be negative.
func WithExpectedEntries(n int) Option {
	return func(c *config) { c.expected = n }
}

// Storage is the in-memory dedup.Storage. It is safe for concurrent use, and
// its Claim is atomic: of any number of concurrent Claims of one key, at most
// one returns dedup.Claimed. Create it with New and Close it when done.
type Storage struct {
	done      *bigcache.BigCache
	window    time.Duration
	start     time.Time
	seed      maphash.Seed
	tokens    atomic.Uint64
	stripes   [stripes]stripe
	closeOnce sync.Once
	stopAfter func() bool
}

// stripe guards the keys that hash to it, and holds their live claims.
type stripe struct {
	mu     sync.Mutex
	claims map[string]claim
	// sweepAt is the number of claims at which Claim next drops those
	// whose lease ran out; it doubles with the live ones, so sweeping costs
	// O(1) per Claim.
	sweepAt int
}

type claim struct {
	end   int64 // the lease's end, see Storage.now
	token uint64
}

var _ dedup.Storage = (*Storage)(nil)

// New creates a Storage. Its background cleanup, which gives back the memory
// of expired done marks, runs until Close is called or ctx is done,
// whichever comes first; ctx bounds only that goroutine, not the Storage's
// answers. New reports every invalid option at once.
func New(ctx context.Context, opts ...Option) (*Storage, error) {
	cfg := config{window: DefaultWindow, shards: DefaultShards}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}

	bc := bigcache.Config{
		Shards: cfg.shards,
		// bigcache counts whole seconds and evicts an entry once more than
		// LifeWindow of them separate its write from now, which can be one
		// second short of LifeWindow in real time; two seconds above the
		// window, rounded down, keep every done mark for its full window.
		LifeWindow:         cfg.window.Truncate(time.Second) + 2*time.Second,
		CleanWindow:        time.Second,
		MaxEntriesInWindow: max(cfg.shards*64, cfg.expected),
		MaxEntrySize:       128,
		HardMaxCacheSize:   cfg.maxMemoryMB,
		Verbose:            false,
	}
	// bigcache prints to stdout when its context is done, so it gets one that
	// never is, and ctx closes the Storage instead.
	done, err := bigcache.New(context.Background(), bc)
	if err != nil {
		return nil, fmt.Errorf("memdedup: new: %w", err)
	}
	s := &Storage{
		done:   done,
		window: cfg.window,
		start:  time.Now(),
		seed:   maphash.MakeSeed(),
	}
	for i := range s.stripes {
		s.stripes[i].claims = make(map[string]claim)
		s.stripes[i].sweepAt = minSweep
	}
	s.stopAfter = context.AfterFunc(ctx, func() { _ = s.Close() })
	return s, nil
}

func (c config) validate() error {
	var errs []error
	if c.window <= 0 {
		errs = append(errs, fmt.Errorf("window must be positive, got %v", c.window))
	}
	if c.shards <= 0 || c.shards&(c.shards-1) != 0 {
		errs = append(errs, fmt.Errorf("shards must be a positive power of two, got %d", c.shards))
	}
	if c.expected < 0 {
		errs = append(errs, fmt.Errorf("expected entries must not be negative, got %d", c.expected))
	}
	if c.maxMemoryMB < 0 {
		errs = append(errs, fmt.Errorf("max memory must not be negative, got %d MB", c.maxMemoryMB))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("memdedup: invalid options: %w", err)
	}
	return nil
}

// Close stops the background cleanup. It is safe to call more than once and
// always returns nil. The Storage keeps answering after Close, so that
// handlers still running during a shutdown can commit, but the memory of
// expired done marks is no longer given back.
func (s *Storage) Close() error {
	s.closeOnce.Do(func() {
		s.stopAfter()
		_ = s.done.Close()
	})
	return nil
}

// Claim tries to take key for lease, which must be positive. It returns
// dedup.Claimed with a token when the key was free, had a lease that ran out
// or a done mark whose window ended; dedup.Done while a done mark lasts; and
// dedup.Busy while another claim's lease runs. Claim never blocks on I/O; it
// returns ctx's error if ctx is already done.
func (s *Storage) Claim(ctx context.Context, key string, lease time.Duration) (dedup.Claim, error) {
	if err := ctx.Err(); err != nil {
		return dedup.Claim{}, fmt.Errorf("memdedup: claim %q: %w", key, err)
	}
	if lease <= 0 {
		return dedup.Claim{}, fmt.Errorf("memdedup: claim %q: lease must be positive, got %v", key, lease)
	}

	st := s.stripe(key)
	st.mu.Lock()
	defer st.mu.Unlock()

	now := s.now()
	if c, ok := st.claims[key]; ok && now < c.end {
		return dedup.Claim{State: dedup.Busy}, nil
	}
	// A done mark and a live claim never coexist: Commit replaces the one
	// with the other, and Claim adds a claim only when no mark lasts.
	v, err := s.done.Get(key)
	switch {
	case err == nil:
		if len(v) == doneLen && v[0] == doneMark && now < int64(binary.LittleEndian.Uint64(v[1:])) {
			return dedup.Claim{State: dedup.Done}, nil
		}
	case !errors.Is(err, bigcache.ErrEntryNotFound):
		return dedup.Claim{}, fmt.Errorf("memdedup: claim %q: %w", key, err)
	}

	if len(st.claims) >= st.sweepAt {
		st.sweep(now)
	}
	token := s.tokens.Add(1)
	st.claims[key] = claim{end: now + int64(lease), token: token}
	return dedup.Claim{State: dedup.Claimed, Token: strconv.FormatUint(token, 10)}, nil
}

// Commit marks key done for window, which must be positive and is cut to the
// storage's window (see WithWindow). It returns an error wrapping
// dedup.ErrNotHeld when token does not hold an unexpired claim of key, and
// then changes nothing. It returns ctx's error if ctx is already done, and
// an error if bigcache fails to store the mark (then the claim stays held).
func (s *Storage) Commit(ctx context.Context, key, token string, window time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memdedup: commit %q: %w", key, err)
	}
	if window <= 0 {
		return fmt.Errorf("memdedup: commit %q: window must be positive, got %v", key, window)
	}
	window = min(window, s.window)

	st := s.stripe(key)
	st.mu.Lock()
	defer st.mu.Unlock()

	now := s.now()
	if !st.holds(key, token, now) {
		return fmt.Errorf("memdedup: commit %q: %w", key, dedup.ErrNotHeld)
	}
	var v [doneLen]byte
	v[0] = doneMark
	binary.LittleEndian.PutUint64(v[1:], uint64(now+int64(window)))
	if err := s.done.Set(key, v[:]); err != nil {
		return fmt.Errorf("memdedup: commit %q: %w", key, err)
	}
	delete(st.claims, key)
	return nil
}

// Release drops the claim of key so that the next Claim takes it. It returns
// an error wrapping dedup.ErrNotHeld when token does not hold an unexpired
// claim of key (in particular after Commit), and then changes nothing. It
// returns ctx's error if ctx is already done.
func (s *Storage) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memdedup: release %q: %w", key, err)
	}

	st := s.stripe(key)
	st.mu.Lock()
	defer st.mu.Unlock()

	if !st.holds(key, token, s.now()) {
		return fmt.Errorf("memdedup: release %q: %w", key, dedup.ErrNotHeld)
	}
	delete(st.claims, key)
	return nil
}

// holds reports whether token holds an unexpired claim of key. The caller
// holds st.mu.
func (st *stripe) holds(key, token string, now int64) bool {
	want, err := strconv.ParseUint(token, 10, 64)
	if err != nil {
		return false
	}
	c, ok := st.claims[key]
	return ok && c.token == want && now < c.end
}

// sweep drops the claims whose lease ran out: their holders gave up or
// crashed, and no Claim of their key came along to replace them. The caller
// holds st.mu.
func (st *stripe) sweep(now int64) {
	for key, c := range st.claims {
		if now >= c.end {
			delete(st.claims, key)
		}
	}
	st.sweepAt = max(2*len(st.claims), minSweep)
}

func (s *Storage) stripe(key string) *stripe {
	return &s.stripes[maphash.String(s.seed, key)%stripes]
}

// now is the time since the storage was created, on the monotonic clock, so
// that a step of the wall clock neither ends nor stretches a lease.
func (s *Storage) now() int64 {
	return int64(time.Since(s.start))
}
