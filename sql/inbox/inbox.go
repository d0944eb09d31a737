package inbox

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/optcheck"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Dialect is the SQL dialect of the database that holds the inbox table
// and the handlers' data: the type of outbox.Dialect and
// sqldriver.Dialect, with the same values.
type Dialect = sqlcore.Dialect

// The supported dialects.
const (
	// Postgres is PostgreSQL 11 or later through jackc/pgx/v5's
	// database/sql driver "pgx".
	Postgres = sqlcore.Postgres
	// MySQL is MySQL 8 or MariaDB 10.3 or later through go-sql-driver/mysql.
	MySQL = sqlcore.MySQL
	// SQLite is SQLite through modernc.org/sqlite (driver name "sqlite").
	SQLite = sqlcore.SQLite
)

// Defaults of the options, in one place.
const (
	// DefaultTable names the inbox table.
	DefaultTable = "herald_inbox"
	// DefaultRetention is how long Purge and Run keep a mark.
	DefaultRetention = 7 * 24 * time.Hour
	// MaxKeyBytes bounds a mark's key (herald.DedupKey: the message ID,
	// at most 255 bytes, and a redrive suffix); a message whose key is
	// longer, or not valid UTF-8, or holds a NUL byte, fails permanently
	// (herald.ErrPermanent, so the dead-letter middleware takes it).
	MaxKeyBytes = 300
)

// purgeBatch bounds the marks one DELETE of Purge removes.
const purgeBatch = 2000

// ErrInvalidMessage is wrapped by the permanent error of a message whose
// ID cannot be a mark's key (see MaxKeyBytes). It is the sentinel of the
// outbox and the SQL driver for the same problem.
var ErrInvalidMessage = sqlcore.ErrInvalidMessage

// Option configures an Inbox; see New.
type Option func(*config)

type config struct {
	table       string
	retention   time.Duration
	txOptions   *sql.TxOptions
	onDuplicate func(group string, m *herald.Message)
	onError     func(error)
}

func (c config) validate() error {
	p := optcheck.New("inbox")
	p.Add(sqlcore.ValidateTable(c.table))
	optcheck.Positive(p, "retention", c.retention)
	return p.Err()
}

// WithTable names the inbox table (default DefaultTable): lower-case
// letters, digits and underscores, at most 40 bytes (see
// outbox.ValidateTable). Its index adds "_handled_at_idx".
func WithTable(name string) Option { return func(c *config) { c.table = name } }

// WithRetention sets how long Purge and Run keep a mark (default
// DefaultRetention). A delivery of a message whose mark was purged runs
// the handler again: keep marks longer than any redelivery can come
// (a broker's redelivery of an unacknowledged message comes within its
// lease or visibility timeout; a replay from an old offset, an outbox
// relay's resend after a crash or a dead-letter redrive may come much
// later).
func WithRetention(d time.Duration) Option { return func(c *config) { c.retention = d } }

// WithTxOptions sets the options of the transactions the inbox begins
// for handlers (default nil: the database's default isolation level,
// READ COMMITTED on PostgreSQL, REPEATABLE READ on MySQL, SERIALIZABLE on
// SQLite). The mark is claimed the same way at every level.
func WithTxOptions(o *sql.TxOptions) Option { return func(c *config) { c.txOptions = o } }

// WithOnDuplicate sets a function called for each delivery skipped because
// its mark was already committed (it is then acknowledged without running
// the handler). It must not block.
func WithOnDuplicate(f func(group string, m *herald.Message)) Option {
	return func(c *config) { c.onDuplicate = f }
}

// WithErrorHandler receives the errors of Run's purges (default: logged
// with slog).
func WithErrorHandler(f func(error)) Option { return func(c *config) { c.onError = f } }

// Inbox runs handlers in a SQL transaction that also records the message
// as handled (its mark) for the handler's group, so that the handler's
// effects on the database and the mark commit together or not at all. See
// the package doc. An Inbox holds no connection of its own and is safe for
// concurrent use.
type Inbox struct {
	db  *sql.DB
	d   Dialect
	cfg config

	table  string // quoted
	index  string // quoted index on handled_at
	insert string // claims a mark; no row affected when it exists
	exists string // is a mark there?
	purge  string // deletes a batch of old marks
}

// New returns an Inbox whose table of dialect d is in db. It does not
// touch the database: run Migrate (or apply Schema) first. db stays the
// caller's. The handlers' transactions are db's connections: size the
// pool for the subscriptions' concurrency.
func New(db *sql.DB, d Dialect, opts ...Option) (*Inbox, error) {
	if db == nil {
		return nil, fmt.Errorf("inbox: %w: nil *sql.DB", herald.ErrInvalidOption)
	}
	if err := d.Check(); err != nil {
		return nil, err
	}
	cfg := config{table: DefaultTable, retention: DefaultRetention}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("inbox: %w: nil Option", herald.ErrInvalidOption)
		}
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.onError == nil {
		cfg.onError = func(err error) { slog.Default().Error("herald inbox", slog.Any("error", err)) }
	}
	ib := &Inbox{db: db, d: d, cfg: cfg, table: d.Quote(cfg.table), index: d.Quote(cfg.table + "_handled_at_idx")}
	ph := func(i int) string {
		if d == Postgres {
			return fmt.Sprintf("$%d", i)
		}
		return "?"
	}
	head, tail := d.InsertIgnore()
	ib.insert = head + ib.table + " (grp, msg_key, handled_at) VALUES (" + ph(1) + ", " + ph(2) + ", " + ph(3) + ")" + tail
	ib.exists = "SELECT COUNT(*) FROM " + ib.table + " WHERE grp = " + ph(1) + " AND msg_key = " + ph(2)
	switch d {
	case Postgres:
		ib.purge = "DELETE FROM " + ib.table + " WHERE ctid IN (SELECT ctid FROM " + ib.table + " WHERE handled_at < $1 LIMIT $2)"
	case MySQL:
		ib.purge = "DELETE FROM " + ib.table + " WHERE handled_at < ? LIMIT ?"
	default:
		ib.purge = "DELETE FROM " + ib.table + " WHERE rowid IN (SELECT rowid FROM " + ib.table + " WHERE handled_at < ? LIMIT ?)"
	}
	return ib, nil
}

// Table returns the inbox table's name.
func (ib *Inbox) Table() string { return ib.cfg.table }

// Dialect returns the Inbox's dialect.
func (ib *Inbox) Dialect() Dialect { return ib.d }

// SchemaVersion is the version of the table Migrate creates.
const SchemaVersion = 1

// Schema returns the statements Migrate runs, for teams whose migrations
// are run by a tool: idempotent (IF NOT EXISTS), in order, without a
// trailing semicolon. The table has the columns grp (the group), msg_key
// (herald.DedupKey of the message for the group) and handled_at (when the
// mark was claimed, microseconds; Unix microseconds on SQLite), with the
// primary key (grp, msg_key) and an index on handled_at for Purge.
func (ib *Inbox) Schema() []string {
	switch ib.d {
	case Postgres:
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + ib.table + ` (
	grp        TEXT NOT NULL,
	msg_key    TEXT NOT NULL,
	handled_at TIMESTAMPTZ NOT NULL,
	PRIMARY KEY (grp, msg_key)
)`,
			`CREATE INDEX IF NOT EXISTS ` + ib.index + ` ON ` + ib.table + ` (handled_at)`,
		}
	case MySQL:
		// utf8mb4_bin: keys compare byte for byte, as they do in Go.
		return []string{`CREATE TABLE IF NOT EXISTS ` + ib.table + ` (
	grp        VARCHAR(200) NOT NULL,
	msg_key    VARCHAR(300) NOT NULL,
	handled_at DATETIME(6) NOT NULL,
	PRIMARY KEY (grp, msg_key),
	INDEX ` + ib.index + ` (handled_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`}
	default:
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + ib.table + ` (
	grp        TEXT NOT NULL,
	msg_key    TEXT NOT NULL,
	handled_at INTEGER NOT NULL,
	PRIMARY KEY (grp, msg_key)
)`,
			`CREATE INDEX IF NOT EXISTS ` + ib.index + ` ON ` + ib.table + ` (handled_at)`,
		}
	}
}

// Migrate creates the inbox table and its index if they do not exist. It
// is idempotent and safe to run from several processes at once (the locks
// of outbox.Migrate); run it at deploy or start-up, never inside a
// business transaction.
func (ib *Inbox) Migrate(ctx context.Context) error {
	if err := sqlcore.Migrate(ctx, ib.db, ib.d, "inbox:"+ib.cfg.table, ib.Schema()); err != nil {
		return fmt.Errorf("inbox: migrate %s (%v): %w", ib.cfg.table, ib.d, err)
	}
	return nil
}

// Handled reports whether group's mark for m is committed: whether a
// delivery of m to group now would be skipped. A message without an ID
// is never marked.
func (ib *Inbox) Handled(ctx context.Context, group string, m *herald.Message) (bool, error) {
	if m == nil {
		return false, fmt.Errorf("inbox: handled: %w", herald.ErrNilEvent)
	}
	key := herald.DedupKey(group, m)
	if key == "" {
		return false, nil
	}
	var n int
	if err := ib.db.QueryRowContext(ctx, ib.exists, group, key).Scan(&n); err != nil {
		return false, fmt.Errorf("inbox: read mark %s/%s from %s: %w", group, key, ib.cfg.table, err)
	}
	return n > 0, nil
}

// Purge deletes the marks older than the retention (WithRetention), in
// batches, and returns how many it deleted. A message whose mark is gone
// runs again if it is delivered again.
func (ib *Inbox) Purge(ctx context.Context) (int64, error) {
	cutoff := ib.d.TimeArg(time.Now().Add(-ib.cfg.retention))
	var total int64
	for {
		res, err := ib.db.ExecContext(ctx, ib.purge, cutoff, purgeBatch)
		if err != nil {
			return total, fmt.Errorf("inbox: purge %s: %w", ib.cfg.table, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("inbox: purge %s: %w", ib.cfg.table, err)
		}
		total += n
		if n < purgeBatch {
			return total, nil
		}
	}
}

// PurgeInterval is how often Run purges: a tenth of the retention,
// between a second and an hour.
func (ib *Inbox) PurgeInterval() time.Duration {
	return min(max(ib.cfg.retention/10, time.Second), time.Hour)
}

// Run purges old marks (Purge) at once and then every PurgeInterval,
// until ctx is cancelled; it then returns nil. Errors go to the error
// handler (WithErrorHandler) and the next purge tries again. Run it in
// one goroutine per process, or not at all if the table is purged by
// other means; several processes purging one table only repeat each
// other's work.
func (ib *Inbox) Run(ctx context.Context) error {
	t := time.NewTicker(ib.PurgeInterval())
	defer t.Stop()
	for {
		if _, err := ib.Purge(ctx); err != nil && ctx.Err() == nil {
			ib.cfg.onError(err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// checkKey returns the permanent error of a key no mark can hold.
func checkKey(group, key string, m *herald.Message) error {
	reason := ""
	switch {
	case len(key) > MaxKeyBytes:
		reason = fmt.Sprintf("is longer than %d bytes", MaxKeyBytes)
	case !utf8.ValidString(key):
		reason = "is not valid UTF-8"
	case strings.IndexByte(key, 0) >= 0:
		reason = "contains a NUL byte"
	}
	if reason == "" {
		return nil
	}
	return herald.Permanent(fmt.Errorf("inbox: message %q (topic %q) for group %q: its key %s: %w", m.ID, m.Topic, group, reason, ErrInvalidMessage))
}

var errNilInbox = fmt.Errorf("inbox: %w: nil *Inbox", herald.ErrInvalidOption)
