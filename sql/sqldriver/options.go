package sqldriver

import (
	"log/slog"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/optcheck"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Defaults of every option, in one place. Each option documents what it
// changes; New validates the result and reports every problem at once.
const (
	// DefaultTable names the log table; its companions add suffixes
	// (_offsets, _members, _meta).
	DefaultTable = "herald_log"
	// DefaultPartitions is the number of partitions of every topic of a
	// log, fixed when Migrate creates it.
	DefaultPartitions = 16
	// DefaultMaxMessageBytes bounds one message by herald.Message.Size.
	DefaultMaxMessageBytes = herald.DefaultMaxMessageBytes
	// DefaultLease is how long a member owns a partition without
	// renewing it; a member that dies loses its partitions this long
	// after its last renewal. Members renew every third of it.
	DefaultLease = 6 * time.Second
	// DefaultMinPoll and DefaultMaxPoll bound the adaptive poll of the
	// log: right after rows arrived it is polled again after the minimum,
	// and the interval doubles while nothing comes, up to the maximum (the
	// idle rate: one query per process per DefaultMaxPoll). On PostgreSQL
	// LISTEN/NOTIFY wakes it at once and the poll is only a fallback.
	DefaultMinPoll = time.Millisecond
	DefaultMaxPoll = time.Second
	// DefaultRetention is how long a row is kept after it was written
	// (it is deleted only when every group of its topic is past it too).
	DefaultRetention = 24 * time.Hour
	// DefaultFetchSize bounds the rows one read returns.
	DefaultFetchSize = 512
	// DefaultCommitInterval is how often acknowledged positions are
	// written to the offsets table (and at Close, and before a partition
	// is handed over).
	DefaultCommitInterval = 100 * time.Millisecond
)

// Option configures a Driver; see New.
type Option func(*config)

type config struct {
	table           string
	partitions      int
	maxMessageBytes int
	start           herald.StartPosition
	lease           time.Duration
	minPoll         time.Duration
	maxPoll         time.Duration
	retention       time.Duration
	fetchSize       int
	commitInterval  time.Duration
	notify          bool
	onError         func(error)
	delayPoll       time.Duration
}

func newConfig(opts []Option) config {
	c := config{
		table:           DefaultTable,
		partitions:      DefaultPartitions,
		maxMessageBytes: DefaultMaxMessageBytes,
		lease:           DefaultLease,
		minPoll:         DefaultMinPoll,
		maxPoll:         DefaultMaxPoll,
		retention:       DefaultRetention,
		fetchSize:       DefaultFetchSize,
		commitInterval:  DefaultCommitInterval,
		notify:          true,
		delayPoll:       DefaultDelayPollInterval,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.onError == nil {
		c.onError = func(err error) {
			slog.Default().Error("herald sql driver", slog.Any("error", err))
		}
	}
	return c
}

// validate reports every problem of c at once.
func (c config) validate() error {
	p := optcheck.New("sqldriver")
	p.Add(sqlcore.ValidateTable(c.table))
	p.If(len(c.table) > sqlcore.MaxTableNameLength-8, "table %q: at most %d bytes (its companions add suffixes)", c.table, sqlcore.MaxTableNameLength-8)
	p.If(c.partitions < 1 || c.partitions > 4096, "partitions %d: want 1 to 4096", c.partitions)
	p.If(c.maxMessageBytes < 0, "max message bytes %d: want 0 (no check) or more", c.maxMessageBytes)
	p.If(!c.start.Valid(), "start position %v: want herald.StartEarliest or herald.StartLatest", c.start)
	optcheck.Positive(p, "lease", c.lease)
	optcheck.Positive(p, "minimum poll interval", c.minPoll)
	optcheck.Positive(p, "maximum poll interval", c.maxPoll)
	p.If(c.minPoll > c.maxPoll, "poll interval: minimum %v above maximum %v", c.minPoll, c.maxPoll)
	optcheck.Positive(p, "retention", c.retention)
	p.If(c.fetchSize < 1 || c.fetchSize > 10000, "fetch size %d: want 1 to 10000", c.fetchSize)
	optcheck.Positive(p, "commit interval", c.commitInterval)
	optcheck.Shorter(p, "commit interval", c.commitInterval, "lease", c.lease)
	if c.delayPoll < time.Millisecond || c.delayPoll > time.Minute {
		p.Add(&herald.OptionError{Option: "sqldriver.WithDelayPollInterval", Value: c.delayPoll, Reason: "want 1 ms to 1 min"})
	}
	return p.Err()
}

// WithTable names the log table (default DefaultTable): lower-case
// letters, digits and underscores, at most 32 bytes.
func WithTable(name string) Option { return func(c *config) { c.table = name } }

// WithPartitions sets the number of partitions per topic that Migrate
// records for a new log (default DefaultPartitions, 1 to 4096). Members of
// a group share a topic's partitions, so it bounds how many members work
// at once. Once a log exists its count is the one Migrate recorded: a
// Driver whose option disagrees fails with ErrPartitions.
func WithPartitions(n int) Option { return func(c *config) { c.partitions = n } }

// WithMaxMessageBytes sets the largest message Write accepts, by
// herald.Message.Size (default DefaultMaxMessageBytes); zero disables the
// check.
func WithMaxMessageBytes(n int) Option { return func(c *config) { c.maxMessageBytes = n } }

// WithStartPosition sets where a new group starts (default
// herald.StartEarliest: every row the log still holds). StartLatest
// starts after the newest row sequenced when the group is created.
func WithStartPosition(p herald.StartPosition) Option { return func(c *config) { c.start = p } }

// WithLease sets how long a member owns its partitions without renewing
// them (default DefaultLease): a dead member's partitions move after at
// most this long plus a third of it.
func WithLease(d time.Duration) Option { return func(c *config) { c.lease = d } }

// WithPollInterval sets the bounds of the adaptive poll (defaults
// DefaultMinPoll and DefaultMaxPoll).
func WithPollInterval(minimum, maximum time.Duration) Option {
	return func(c *config) { c.minPoll, c.maxPoll = minimum, maximum }
}

// WithRetention sets how long rows are kept (default DefaultRetention).
// A row is deleted once it is older than that and every group of its
// topic has acknowledged it; rows no group has read stay.
func WithRetention(d time.Duration) Option { return func(c *config) { c.retention = d } }

// WithFetchSize bounds the rows one read of the log returns (default
// DefaultFetchSize, 1 to 10000).
func WithFetchSize(n int) Option { return func(c *config) { c.fetchSize = n } }

// WithCommitInterval sets how often acknowledged positions are written
// (default DefaultCommitInterval); it must be shorter than the lease.
// A member that dies loses at most this much acknowledged work to
// redelivery.
func WithCommitInterval(d time.Duration) Option { return func(c *config) { c.commitInterval = d } }

// WithoutNotify stops the PostgreSQL driver from using NOTIFY: writes do
// not notify and members find rows by polling only.
func WithoutNotify() Option { return func(c *config) { c.notify = false } }

// WithErrorHandler receives the errors met outside Fetch and Ack before a
// Bus takes them over (herald.ErrorReporter): lease renewals, commits,
// the sequencer, retention. The default logs them with slog.
func WithErrorHandler(f func(error)) Option { return func(c *config) { c.onError = f } }

// WithDelayPollInterval sets how often the mover of a process with
// subscriptions looks for due delayed rows when none is known to be due
// sooner (default DefaultDelayPollInterval, 1 ms to 1 min): the precision
// of delayed delivery, and its idle cost, one query per process per
// interval. Out of range is a *herald.OptionError.
func WithDelayPollInterval(d time.Duration) Option { return func(c *config) { c.delayPoll = d } }
