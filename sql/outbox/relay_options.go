package outbox

import (
	"log/slog"
	"time"

	"github.com/heraldbus/herald/internal/optcheck"
	"github.com/heraldbus/herald/internal/telemetry"
)

// Relay defaults. Every RelayOption documents the setting it changes; this
// is the one place their defaults live.
const (
	// DefaultBatchSize is how many rows the relay reads and writes to the
	// target per round.
	DefaultBatchSize = 1000
	// DefaultLanes is how many target writes of one round run at once.
	DefaultLanes = 1
	// DefaultMaxAttempts is how many charged failures move a row to the
	// quarantine table.
	DefaultMaxAttempts = 10
	// DefaultMinBackoff and DefaultMaxBackoff pace the retries of a failing
	// row (per key) and of an unavailable target (whole relay), doubling.
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	// DefaultMinPollInterval and DefaultMaxPollInterval bound the adaptive
	// idle poll: it starts at the minimum after a round that found rows or
	// a notification, and doubles to the maximum while the table stays
	// empty.
	DefaultMinPollInterval = 5 * time.Millisecond
	DefaultMaxPollInterval = time.Second
	// DefaultLockRetryInterval is how often a standby relay tries to take
	// the lock, which bounds how long a hand-over takes after the active
	// relay dies.
	DefaultLockRetryInterval = time.Second
	// DefaultWriteTimeout bounds one target Write.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultPurgeBatch is how many sent rows one purge statement deletes
	// (WithRetention).
	DefaultPurgeBatch = 1000
	// DefaultStatsInterval is how often WithStatsHook's hook is called.
	DefaultStatsInterval = 10 * time.Second
)

// maxBatchSize keeps a round's id lists within every dialect's
// bind-parameter limit.
const maxBatchSize = 10000

// RelayOption configures a Relay; see the Default constants for the
// defaults. NewRelay checks the result and reports every bad setting at
// once.
type RelayOption func(*relayConfig)

// relayConfig is the full configuration of a Relay: the defaults, then the
// options.
type relayConfig struct {
	BatchSize         int
	Lanes             int
	MaxAttempts       int
	MinBackoff        time.Duration
	MaxBackoff        time.Duration
	MinPollInterval   time.Duration
	MaxPollInterval   time.Duration
	LockRetryInterval time.Duration
	WriteTimeout      time.Duration
	Retention         time.Duration
	PurgeBatch        int
	Listen            bool
	StatsInterval     time.Duration
	StatsHook         func(Stats)
	EventHook         func(RelayEvent)
	Logger            *slog.Logger
	Telemetry         telemetry.Config
	HealthMaxAge      time.Duration
}

func defaultRelayConfig() relayConfig {
	return relayConfig{
		BatchSize:         DefaultBatchSize,
		Lanes:             DefaultLanes,
		MaxAttempts:       DefaultMaxAttempts,
		MinBackoff:        DefaultMinBackoff,
		MaxBackoff:        DefaultMaxBackoff,
		MinPollInterval:   DefaultMinPollInterval,
		MaxPollInterval:   DefaultMaxPollInterval,
		LockRetryInterval: DefaultLockRetryInterval,
		WriteTimeout:      DefaultWriteTimeout,
		PurgeBatch:        DefaultPurgeBatch,
		Listen:            true,
		StatsInterval:     DefaultStatsInterval,
		HealthMaxAge:      DefaultHealthMaxAge,
	}
}

// ValidateRelayOptions reports every invalid setting among opts at once,
// as NewRelay would, without a database: for callers that build options
// from flags or a configuration file and want to check them first.
func ValidateRelayOptions(opts ...RelayOption) error {
	cfg := defaultRelayConfig()
	for _, o := range opts {
		o(&cfg)
	}
	return cfg.validate()
}

// validate reports every problem of c at once.
func (c relayConfig) validate() error {
	p := optcheck.New("outbox: relay")
	p.If(c.BatchSize < 1 || c.BatchSize > maxBatchSize, "batch size %d: want 1 to %d", c.BatchSize, maxBatchSize)
	p.If(c.Lanes < 1 || c.Lanes > 256, "lanes %d: want 1 to 256", c.Lanes)
	p.If(c.MaxAttempts < 0, "max attempts %d: want 0 (never quarantine) or more", c.MaxAttempts)
	p.If(c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff, "backoff %v to %v: want 0 < min <= max", c.MinBackoff, c.MaxBackoff)
	p.If(c.MinPollInterval <= 0 || c.MaxPollInterval < c.MinPollInterval, "poll interval %v to %v: want 0 < min <= max", c.MinPollInterval, c.MaxPollInterval)
	p.If(c.LockRetryInterval <= 0, "lock retry interval %v: want > 0", c.LockRetryInterval)
	p.If(c.WriteTimeout <= 0, "write timeout %v: want > 0", c.WriteTimeout)
	p.If(c.Retention < 0, "retention %v: want >= 0", c.Retention)
	p.If(c.PurgeBatch < 1 || c.PurgeBatch > maxBatchSize, "purge batch %d: want 1 to %d", c.PurgeBatch, maxBatchSize)
	p.If(c.HealthMaxAge <= 0, "health max age %v: want > 0", c.HealthMaxAge)
	p.If(c.StatsHook != nil && c.StatsInterval <= 0, "stats interval %v: want > 0", c.StatsInterval)
	return p.Err()
}

// WithBatchSize sets how many rows a round reads and writes (1 to 10000).
// A round holds its rows in memory: BatchSize times the largest message
// bounds the relay's memory.
func WithBatchSize(n int) RelayOption { return func(c *relayConfig) { c.BatchSize = n } }

// WithLanes splits each round into n target writes that run at once, by
// key hash (rows without a key by id). One key always lands in one lane,
// so per-key order holds; lanes help targets whose Write has a high
// per-call latency.
func WithLanes(n int) RelayOption { return func(c *relayConfig) { c.Lanes = n } }

// WithMaxAttempts sets how many charged failures move a row to the
// quarantine table; 0 never quarantines (the row is retried for ever and
// its key waits behind it). See the package doc for which failures are
// charged to a row.
func WithMaxAttempts(n int) RelayOption { return func(c *relayConfig) { c.MaxAttempts = n } }

// WithBackoff sets the first and the largest retry delay, for a failing
// row's key and for an unavailable target.
func WithBackoff(minDelay, maxDelay time.Duration) RelayOption {
	return func(c *relayConfig) { c.MinBackoff, c.MaxBackoff = minDelay, maxDelay }
}

// WithPollInterval sets the bounds of the adaptive idle poll: after a
// round that found rows (or a notification) the relay reads again after
// minInterval, then after twice that, up to maxInterval, as long as it
// finds nothing. The maximum sets the idle query rate, one read per
// maxInterval; a notification or found rows reset it to the minimum.
func WithPollInterval(minInterval, maxInterval time.Duration) RelayOption {
	return func(c *relayConfig) { c.MinPollInterval, c.MaxPollInterval = minInterval, maxInterval }
}

// WithLockRetryInterval sets how often a standby relay tries to take over.
func WithLockRetryInterval(d time.Duration) RelayOption {
	return func(c *relayConfig) { c.LockRetryInterval = d }
}

// WithWriteTimeout bounds each target Write; a Write that times out is
// treated as the target being unavailable (nothing is charged to rows).
func WithWriteTimeout(d time.Duration) RelayOption {
	return func(c *relayConfig) { c.WriteTimeout = d }
}

// WithRetention keeps sent rows for d in the table's "_sent" companion
// instead of deleting them, and purges older ones in batches of
// WithPurgeBatch rows. Zero (the default) deletes rows once sent.
func WithRetention(d time.Duration) RelayOption { return func(c *relayConfig) { c.Retention = d } }

// WithPurgeBatch sets how many sent rows one purge statement deletes.
func WithPurgeBatch(n int) RelayOption { return func(c *relayConfig) { c.PurgeBatch = n } }

// WithoutListen makes a PostgreSQL relay poll only, without LISTEN. By
// default it listens on a second dedicated connection when the *sql.DB
// uses the pgx driver, and polls only otherwise.
func WithoutListen() RelayOption { return func(c *relayConfig) { c.Listen = false } }

// WithStatsHook calls hook with the relay's Stats every interval, from a
// goroutine of the relay, while Run runs (active or standby). hook must not
// block for long; a failed stats query is logged and skipped.
func WithStatsHook(interval time.Duration, hook func(Stats)) RelayOption {
	return func(c *relayConfig) { c.StatsInterval, c.StatsHook = interval, hook }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) RelayOption { return func(c *relayConfig) { c.Logger = l } }
