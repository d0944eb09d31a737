package sqldriver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Dialect is the SQL dialect of the database: the type of outbox.Dialect,
// with the same values (MySQL means MySQL 8 or MariaDB 10.6 or later,
// for SKIP LOCKED).
type Dialect = sqlcore.Dialect

// The supported dialects.
const (
	Postgres = sqlcore.Postgres
	MySQL    = sqlcore.MySQL
	SQLite   = sqlcore.SQLite
)

// Errors of the package; the Driver's errors are *herald.DriverError
// values that wrap them (or herald's sentinels) for errors.Is.
var (
	// ErrNoLog is returned when the log's tables are missing: run Migrate.
	ErrNoLog = errors.New("sqldriver: log tables missing (run Migrate)")
	// ErrPartitions is returned when WithPartitions disagrees with the
	// partition count the log was created with.
	ErrPartitions = errors.New("sqldriver: partition count differs from the log's")
	// ErrNotOwner is returned by Ack for a delivery of a partition this
	// member no longer owns (it moved to another member, which delivers
	// it again).
	ErrNotOwner = errors.New("sqldriver: partition no longer owned")
)

// WithTx returns a context that carries tx: Write inserts in it, so the
// messages are published if and only if tx commits. It is the same as
// outbox.WithTx: one context serves a Bus with either writer.
func WithTx(ctx context.Context, tx *sql.Tx) context.Context { return sqlcore.WithTx(ctx, tx) }

// WithPgxTx is WithTx for a native pgx transaction (PostgreSQL only).
func WithPgxTx(ctx context.Context, tx pgx.Tx) context.Context { return sqlcore.WithPgxTx(ctx, tx) }

// Driver is a herald.Driver whose log is a SQL table. See the package doc.
type Driver struct {
	db  *sql.DB
	n   names
	cfg config

	parts  atomic.Int32 // the log's partition count, once read
	purges int          // retention passes so far (the pump's)

	rr     atomic.Uint32 // round robin of keyless messages
	notify sqlcore.Pacer // which writes call pg_notify
	closed atomic.Bool

	mu   sync.Mutex
	subs map[*subscription]struct{}
	pump *pump // runs while a subscription is open
}

var (
	_ herald.Driver          = (*Driver)(nil)
	_ herald.Pinger          = (*Driver)(nil)
	_ herald.MessagingSystem = (*Driver)(nil)
)

// New returns a Driver on db for dialect d. It does not touch the
// database: run Migrate once (or apply Schema) before the first Write or
// Subscribe. db stays the caller's: Close does not close it. On SQLite
// use the DSN the outbox recommends (WAL, a busy timeout, immediate
// transactions).
func New(db *sql.DB, d Dialect, opts ...Option) (*Driver, error) {
	if db == nil {
		return nil, fmt.Errorf("sqldriver: %w: nil *sql.DB", herald.ErrInvalidOption)
	}
	if err := d.Check(); err != nil {
		return nil, err
	}
	cfg := newConfig(opts)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.notify = cfg.notify && d == sqlcore.Postgres
	drv := &Driver{db: db, n: newNames(d, cfg.table), cfg: cfg, subs: make(map[*subscription]struct{})}
	drv.notify.Pause = 5 * time.Millisecond
	return drv, nil
}

func fail(op, topic, group, detail string, err error) error {
	return &herald.DriverError{Driver: "sqldriver", Op: op, Topic: topic, Group: group, Detail: detail, Err: err}
}

// MessagingSystem names the driver for telemetry.
func (d *Driver) MessagingSystem() string { return "herald.sql" }

// Table returns the log table's name.
func (d *Driver) Table() string { return d.n.name }

// Ping checks that the database answers and the log exists.
func (d *Driver) Ping(ctx context.Context) error {
	if d.closed.Load() {
		return fail("ping", "", "", "", herald.ErrClosed)
	}
	if err := d.db.PingContext(ctx); err != nil {
		return fail("ping", "", "", "", err)
	}
	if _, err := d.partitions(ctx); err != nil {
		return fail("ping", "", "", "", err)
	}
	return nil
}

// partitions returns the log's partition count, read once from its meta
// table; it fails with ErrNoLog before Migrate and ErrPartitions when the
// option disagrees. It reads on the pool.
func (d *Driver) partitions(ctx context.Context) (int, error) { return d.partitionsIn(ctx, nil) }

// partitionsIn is partitions reading in the caller's transaction x when
// x is not nil: a Write inside a transaction must not wait for a second
// connection of a pool the caller's transactions may have exhausted.
func (d *Driver) partitionsIn(ctx context.Context, x sqlcore.TxExecer) (int, error) {
	if n := d.parts.Load(); n > 0 {
		return int(n), nil
	}
	query := "SELECT partitions FROM " + d.n.meta + " WHERE id = 1"
	n := -1
	var err error
	if x != nil {
		err = x.Query(ctx, query, nil, func(rs sqlcore.Rows) error {
			for rs.Next() {
				if err := rs.Scan(&n); err != nil {
					return err
				}
			}
			return nil
		})
	} else {
		err = d.db.QueryRowContext(ctx, query).Scan(&n)
		if errors.Is(err, sql.ErrNoRows) {
			err = nil
		}
	}
	switch {
	case err != nil && sqlcore.CtxErr(ctx) != nil:
		return 0, sqlcore.CtxErr(ctx)
	case err != nil && x == nil && d.db.PingContext(ctx) != nil:
		return 0, err // the database is down, not the log missing
	case err != nil || n < 0:
		// A missing table: on PostgreSQL it also aborts the caller's
		// transaction, which is the caller's to roll back.
		return 0, fmt.Errorf("%w: %s: %v", ErrNoLog, d.n.name, err)
	case n != d.cfg.partitions:
		return 0, fmt.Errorf("%w: the log %s has %d, WithPartitions says %d", ErrPartitions, d.n.name, n, d.cfg.partitions)
	}
	d.parts.Store(int32(n))
	return n, nil
}

// Close closes the subscriptions still open and stops the driver's
// background work; later calls fail with herald.ErrClosed. It does not
// close the *sql.DB. It is idempotent.
func (d *Driver) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.mu.Lock()
	subs := make([]*subscription, 0, len(d.subs))
	for s := range d.subs {
		subs = append(subs, s)
	}
	d.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if err := s.Close(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	d.mu.Lock()
	p := d.pump
	d.pump = nil
	d.mu.Unlock()
	p.stop()
	return errors.Join(errs...)
}

// join registers s and starts the pump with the first subscription.
func (d *Driver) join(s *subscription) *pump {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.subs[s] = struct{}{}
	if d.pump == nil {
		d.pump = startPump(d)
	}
	return d.pump
}

// leave forgets s and stops the pump with the last subscription.
func (d *Driver) leave(s *subscription) {
	d.mu.Lock()
	delete(d.subs, s)
	var p *pump
	if len(d.subs) == 0 {
		p, d.pump = d.pump, nil
	}
	d.mu.Unlock()
	p.stop()
}

// wakeLocal tells this process's pump that rows were committed.
func (d *Driver) wakeLocal() {
	d.mu.Lock()
	p := d.pump
	d.mu.Unlock()
	p.poke()
}
