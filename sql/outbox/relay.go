package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqlcore"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
)

// Relay forwards the committed rows of an outbox table to a target
// herald.Writer (a Kafka, Redis or memory driver) and removes them once the
// target has acknowledged them. The package doc states its guarantees:
// at-least-once, per-key order, one active relay per table, quarantine of
// rows that keep failing.
//
// Run it in every instance of a service, or as a standalone process (the
// herald command's "relay"): only one relay per table delivers at a time,
// the others wait as standbys and one of them takes over within about
// WithLockRetryInterval after the active one dies.
//
// A Relay is used by one Run call. Its methods are safe for concurrent use.
// It does not close the *sql.DB or the target.
type Relay struct {
	db     *sql.DB
	t      table
	target herald.Writer
	cfg    relayConfig
	log    *slog.Logger
	q      queries
	tel    *relayTelemetry // nil: telemetry off

	active      atomic.Bool
	sent        atomic.Uint64
	failures    atomic.Uint64
	quarantined atomic.Uint64
	reads       atomic.Uint64

	mu      sync.Mutex
	started bool
	closed  bool
	cancel  context.CancelFunc // cancels Run's context; set while Run runs
	stop    chan struct{}      // closed by Shutdown: finish the round, then return
	done    chan struct{}      // closed when Run returns
}

// NewRelay returns a relay that moves the rows of the outbox table of
// dialect d, read through db, to target. It checks the table name and the
// options (reporting every bad option at once) but does not touch the
// database: Run does.
//
// db may be shared with the application. An active relay holds one
// connection of it for as long as it is active (two on PostgreSQL while it
// listens for notifications); a standby borrows one briefly every
// WithLockRetryInterval. Those connections are closed, never returned to
// the pool, when the relay stops or loses them, so a session lock can never
// linger in the pool.
func NewRelay(db *sql.DB, d Dialect, table string, target herald.Writer, opts ...RelayOption) (*Relay, error) {
	t, err := newTable(d, table)
	if err != nil {
		return nil, err
	}
	cfg := defaultRelayConfig()
	for _, o := range opts {
		o(&cfg)
	}
	errs := []error{cfg.validate()}
	if db == nil {
		errs = append(errs, errors.New("outbox: relay: nil *sql.DB"))
	}
	if target == nil {
		errs = append(errs, errors.New("outbox: relay: nil target writer"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	r := &Relay{
		db:     db,
		t:      t,
		target: target,
		cfg:    cfg,
		log:    logger.With(slog.String("table", table), slog.String("dialect", d.String())),
		q:      newQueries(t),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	r.tel = newRelayTelemetry(cfg.Telemetry, r)
	return r, nil
}

// Run relays until ctx is done or Shutdown is called, and then returns nil.
// It never gives up on its own: database and target errors are logged and
// retried with backoff, so a relay started before the database or the
// broker is up starts working when they come up.
//
// Cancelling ctx stops at once: a target write in flight is cancelled, and
// rows written but not yet deleted are delivered again by the next relay
// (at-least-once). Shutdown is the graceful stop. Run may be called once;
// a second call returns ErrRelayStarted, a call after Shutdown
// herald.ErrClosed.
func (r *Relay) Run(ctx context.Context) error {
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return fmt.Errorf("outbox: relay %s: %w", r.t.name, herald.ErrClosed)
	case r.started:
		r.mu.Unlock()
		return fmt.Errorf("outbox: relay %s: %w", r.t.name, ErrRelayStarted)
	}
	r.started = true
	ctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.mu.Unlock()
	defer close(r.done)
	defer cancel()

	r.tel.follow()
	defer r.tel.stop()
	var statsDone chan struct{}
	if r.cfg.StatsHook != nil {
		statsDone = make(chan struct{})
		go r.reportStats(ctx, statsDone)
	}
	r.loop(ctx)
	cancel()
	if statsDone != nil {
		<-statsDone
	}
	return nil
}

// Shutdown stops Run gracefully: the round in flight finishes (its target
// write and its delete), then Run returns. If ctx ends first, Run's
// context is cancelled as if Run's own ctx had been, Shutdown waits for Run
// to return and returns ctx.Err(). Shutdown before Run makes Run return
// herald.ErrClosed. Shutdown is idempotent.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.stop)
	}
	started, cancel := r.started, r.cancel
	r.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		cancel()
		<-r.done
		return ctx.Err()
	}
}

// Active reports whether this relay holds the table's lock and delivers.
func (r *Relay) Active() bool { return r.active.Load() }

// loop alternates between waiting for the lock and delivering, until
// stopped. Every error is retried: a failed lease ends, its connection is
// closed, and the relay competes for the lock again after a backoff.
func (r *Relay) loop(ctx context.Context) {
	retry := backoff.New(r.cfg.MinBackoff, r.cfg.MaxBackoff)
	for !r.stopping(ctx) {
		r.tel.follow()
		conn, err := r.acquire(ctx)
		if err == nil {
			started := time.Now()
			err = r.lead(ctx, conn)
			sqlcore.Discard(conn)
			if time.Since(started) > r.cfg.MaxBackoff {
				retry.Reset() // it worked for a while: not a crash loop
			}
		}
		if err == nil || r.stopping(ctx) {
			continue
		}
		wait := retry.Next()
		r.event(RelayEvent{Kind: LeaseLost, Err: err})
		r.log.Warn("outbox relay: database error; retrying", slog.Any("error", err), slog.Duration("backoff", wait))
		if !r.sleep(ctx, wait) {
			return
		}
	}
}

// stopping reports whether Run should return.
func (r *Relay) stopping(ctx context.Context) bool {
	select {
	case <-r.stop:
		return true
	default:
		return ctx.Err() != nil
	}
}

// sleep waits for d; it returns false if the relay is stopping instead.
func (r *Relay) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.stop:
	case <-ctx.Done():
	}
	return false
}

// acquire returns a dedicated connection that holds the table's lock,
// trying every LockRetryInterval, or errStopped when the relay stops
// first.
func (r *Relay) acquire(ctx context.Context) (*sql.Conn, error) {
	logged := false
	for {
		conn, err := r.db.Conn(ctx)
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		ok, err := r.tryLock(ctx, conn)
		if err != nil {
			sqlcore.Discard(conn)
			return nil, fmt.Errorf("lock: %w", err)
		}
		if ok {
			return conn, nil
		}
		// Nothing is held on a session that did not get the lock, so it
		// can go back to the pool.
		_ = conn.Close()
		if !logged {
			r.log.Info("outbox relay: standby, another relay is active")
			r.event(RelayEvent{Kind: Standby})
			logged = true
		}
		r.tel.follow()
		if !r.sleep(ctx, r.cfg.LockRetryInterval) {
			return nil, errStopped
		}
	}
}

var errStopped = errors.New("outbox: relay stopped")

// tryLock takes the table's session lock on conn without waiting.
func (r *Relay) tryLock(ctx context.Context, conn *sql.Conn) (bool, error) {
	switch r.t.dialect {
	case Postgres:
		var schema string
		if err := conn.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			return false, err
		}
		var ok bool
		err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock($1)", sqlcore.LockKey(schema, r.t.name)).Scan(&ok)
		return ok, err
	case MySQL:
		var database sql.NullString
		if err := conn.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&database); err != nil {
			return false, err
		}
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", sqlcore.LockName(database.String, r.t.name)).Scan(&got); err != nil {
			return false, err
		}
		return got.Valid && got.Int64 == 1, nil
	default:
		// SQLite has no session locks; one relay per database file is the
		// documented rule.
		return true, nil
	}
}

// lead delivers rounds on conn, which holds the lock, until the relay stops
// (nil) or a database error ends the lease.
func (r *Relay) lead(ctx context.Context, conn *sql.Conn) error {
	r.active.Store(true)
	defer r.active.Store(false)
	r.log.Info("outbox relay: active")
	r.event(RelayEvent{Kind: Active})
	l := r.newLease(conn)
	defer func() { l.listener.Close() }() // keepListening replaces it
	for !r.stopping(ctx) {
		r.tel.follow()
		r.keepListening(ctx, l)
		if err := r.purgeWhenDue(ctx, l); err != nil {
			return err
		}
		if err := r.promoteWhenDue(ctx, l); err != nil {
			return err
		}
		rows, err := r.deliverable(ctx, l)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			if !r.idle(ctx, l) {
				return nil
			}
			continue
		}
		l.poll.Reset()
		if err := r.round(ctx, l, rows); err != nil || r.stopping(ctx) {
			return err
		}
	}
	return nil
}

// lease is what one spell as the active relay keeps: the locked
// connection, the keys held back, the LISTEN connection, and the paces of
// polling and of backing off from an unavailable target.
type lease struct {
	conn        *sql.Conn
	keys        *keyState
	listener    *sqlcore.Listener // nil while not listening
	listen      bool              // LISTEN is worth trying (PostgreSQL, Listen on)
	listenTried time.Time
	poll        backoff.Backoff // idle polls, from MinPollInterval to MaxPollInterval
	outage      backoff.Backoff // outage rounds, from MinBackoff to MaxBackoff
	lastPurge   time.Time
	nextDue     time.Time // when the next delayed row is due, as last seen; zero for none
}

func (r *Relay) newLease(conn *sql.Conn) *lease {
	return &lease{
		conn:   conn,
		keys:   newKeyState(),
		listen: r.t.dialect == Postgres && r.cfg.Listen,
		poll:   backoff.New(r.cfg.MinPollInterval, r.cfg.MaxPollInterval),
		outage: backoff.New(r.cfg.MinBackoff, r.cfg.MaxBackoff),
	}
}

// keepListening (re)starts LISTEN when it is worth trying and the last
// try is a poll interval old, before the read, so that a commit after the
// read wakes the wait that follows it. A *sql.DB that cannot LISTEN makes
// the lease poll for good.
func (r *Relay) keepListening(ctx context.Context, l *lease) {
	if !l.listen || l.listener.Alive() || time.Since(l.listenTried) < r.cfg.MaxPollInterval {
		return
	}
	l.listenTried = time.Now()
	l.listener.Close()
	var err error
	if l.listener, err = sqlcore.Listen(ctx, r.db, r.t.channel); err == nil {
		return
	}
	switch {
	case errors.Is(err, sqlcore.ErrNotPgx):
		l.listen = false
		r.log.Info("outbox relay: the *sql.DB does not use the pgx driver; polling without LISTEN")
	case errors.Is(err, sqlcore.ErrNoListenConn):
		l.listen = false
		r.log.Warn("outbox relay: polling without LISTEN; allow the *sql.DB two connections for an active relay", slog.Any("error", err))
	default:
		r.log.Warn("outbox relay: cannot LISTEN; polling until it works", slog.Any("error", err))
	}
}

// purgeWhenDue deletes sent rows past their retention, at most every
// purgeInterval.
func (r *Relay) purgeWhenDue(ctx context.Context, l *lease) error {
	if r.cfg.Retention <= 0 || time.Since(l.lastPurge) < r.purgeInterval() {
		return nil
	}
	l.lastPurge = time.Now()
	if err := r.purge(ctx, l.conn); err != nil {
		return fmt.Errorf("purge sent rows: %w", err)
	}
	return nil
}

// promoteWhenDue makes the due delayed rows forwardable (promoteDue),
// before every read, and notes when the next one is due, for idle.
func (r *Relay) promoteWhenDue(ctx context.Context, l *lease) error {
	n, next, err := r.promoteDue(ctx, l.conn)
	if err != nil {
		return err
	}
	l.nextDue = next
	if n > 0 {
		l.poll.Reset()
	}
	return nil
}

// deliverable reads the next rows and leaves out those of keys held
// back.
func (r *Relay) deliverable(ctx context.Context, l *lease) ([]*row, error) {
	now := time.Now()
	l.keys.expire(now)
	rows, err := r.read(ctx, l.conn, l.keys)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return l.keys.deliverable(rows, now), nil
}

// idle waits after a read that found nothing to deliver: the next poll
// interval (doubling while nothing comes), a notification, or the expiry
// of a key held back, whichever is first. Polling goes on soon after
// activity even while listening: writers notify in only some transactions
// (WithNotifyPause). It returns false when the relay is stopping.
func (r *Relay) idle(ctx context.Context, l *lease) bool {
	wait := l.poll.Next()
	if next, ok := l.keys.nextExpiry(); ok {
		wait = max(min(wait, time.Until(next)), time.Millisecond)
	}
	if !l.nextDue.IsZero() {
		wait = max(min(wait, time.Until(l.nextDue)+time.Millisecond), time.Millisecond)
	}
	woke, ok := r.wait(ctx, wait, l.listener.Wake(r.t.channel))
	if woke {
		l.poll.Reset()
	}
	return ok
}

// round delivers rows, settles the outcome in the table, and backs off
// when the round points at an unavailable target rather than at rows.
func (r *Relay) round(ctx context.Context, l *lease, rows []*row) error {
	rd := r.deliver(ctx, rows, l.keys)
	if err := r.settle(ctx, l.conn, rd, l.keys); err != nil {
		return err
	}
	if !rd.outage() {
		l.outage.Reset()
		return nil
	}
	wait := l.outage.Next()
	r.log.Warn("outbox relay: target unavailable; backing off",
		slog.Any("error", rd.firstError()), slog.Duration("backoff", wait))
	r.sleep(ctx, wait)
	return nil
}

// wait blocks for d, a notification, or the relay stopping. woke reports a
// notification; ok is false when the relay is stopping.
func (r *Relay) wait(ctx context.Context, d time.Duration, wake <-chan struct{}) (woke, ok bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false, true
	case <-wake:
		return true, true
	case <-r.stop:
	case <-ctx.Done():
	}
	return false, false
}

func (r *Relay) purgeInterval() time.Duration {
	return min(max(r.cfg.Retention/2, time.Second), time.Minute)
}
