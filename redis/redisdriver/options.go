package redisdriver

import (
	"log/slog"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/optcheck"
)

// Defaults of every option, in one place. Each option below documents what
// it changes; New validates the result and reports every problem at once.
const (
	// DefaultKeyPrefix starts the key of every stream: a topic's stream is
	// the key DefaultKeyPrefix + topic.
	DefaultKeyPrefix = "herald:stream:"
	// DefaultMaxMessageBytes bounds one stream entry (payload, key, ID,
	// headers and field names together): 1 MiB.
	DefaultMaxMessageBytes = 1 << 20
	// DefaultBlock is how long one XREADGROUP waits for new entries; it
	// bounds how long a Fetch or a Close waits after its context was
	// cancelled (go-redis does not interrupt a blocked read).
	DefaultBlock = 500 * time.Millisecond
	// DefaultClaimMinIdle is how long an entry must sit unacknowledged and
	// untouched before another member of the group may take it over.
	DefaultClaimMinIdle = 30 * time.Second
	// DefaultReclaimInterval is how often a member looks for entries to
	// take over (XAUTOCLAIM) and for departed consumers to remove.
	DefaultReclaimInterval = 5 * time.Second
	// DefaultConsumerIdle is how long a consumer with no pending entries
	// must have been silent before another member removes it from the group.
	DefaultConsumerIdle = 30 * time.Minute
)

// startID is the XGROUP CREATE start of a new group: "0" (every entry
// the stream still holds) or "$" (only entries added after it).
func startID(p herald.StartPosition) string {
	if p == herald.StartLatest {
		return "$"
	}
	return "0"
}

// Option configures a Driver; see New.
type Option func(*config)

type config struct {
	prefix          string
	maxMessageBytes int
	trimMaxLen      int64
	trimMaxAge      time.Duration
	start           herald.StartPosition
	block           time.Duration
	claimMinIdle    time.Duration
	reclaimInterval time.Duration
	consumerIdle    time.Duration
	waitReplicas    int
	waitTimeout     time.Duration
	onError         func(error)
	delayPoll       time.Duration
}

func newConfig(opts []Option) config {
	c := config{
		prefix:          DefaultKeyPrefix,
		maxMessageBytes: DefaultMaxMessageBytes,
		block:           DefaultBlock,
		claimMinIdle:    DefaultClaimMinIdle,
		reclaimInterval: DefaultReclaimInterval,
		consumerIdle:    DefaultConsumerIdle,
		delayPoll:       DefaultDelayPollInterval,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.onError == nil {
		c.onError = func(err error) {
			slog.Default().Error("herald redis driver", slog.Any("error", err))
		}
	}
	return c
}

// validate reports every problem of c at once.
func (c config) validate() error {
	p := optcheck.New("redisdriver")
	p.If(c.maxMessageBytes < 0, "max message bytes %d: want 0 (no limit) or more", c.maxMessageBytes)
	p.If(c.trimMaxLen < 0, "trim max length %d is negative", c.trimMaxLen)
	p.If(c.trimMaxAge < 0, "trim max age %v is negative", c.trimMaxAge)
	p.If(c.trimMaxAge > 0 && c.trimMaxAge < time.Millisecond, "trim max age %v is below the 1 ms resolution of stream IDs", c.trimMaxAge)
	p.If(c.trimMaxLen > 0 && c.trimMaxAge > 0, "WithTrimMaxLen and WithTrimMaxAge exclude each other (XADD takes one of MAXLEN and MINID)")
	p.If(!c.start.Valid(), "unknown start position %d", c.start)
	p.If(c.block < time.Millisecond, "block %v is below 1 ms (Redis would read 0 as: block forever)", c.block)
	p.If(c.claimMinIdle < 3*time.Millisecond, "claim min idle %v is below 3 ms (in-flight entries are refreshed every third of it)", c.claimMinIdle)
	p.If(c.reclaimInterval <= 0, "reclaim interval %v is not positive", c.reclaimInterval)
	p.If(c.consumerIdle <= 0, "consumer idle %v is not positive", c.consumerIdle)
	p.If(c.consumerIdle > 0 && c.consumerIdle <= c.block, "consumer idle %v must exceed the block time %v, or live consumers would look departed", c.consumerIdle, c.block)
	p.If(c.waitReplicas < 0, "wait for %d replicas: want 0 (do not wait) or more", c.waitReplicas)
	p.If(c.waitReplicas > 0 && c.waitTimeout < time.Millisecond, "wait timeout %v is below 1 ms (Redis would read 0 as: wait forever)", c.waitTimeout)
	if c.delayPoll < time.Millisecond || c.delayPoll > time.Minute {
		p.Add(&herald.OptionError{Option: "redisdriver.WithDelayPollInterval", Value: c.delayPoll, Reason: "want 1 ms to 1 min"})
	}
	return p.Err()
}

// WithKeyPrefix sets the prefix of stream keys (default DefaultKeyPrefix):
// topic T lives in the stream prefix+T. Give each application its own
// prefix when several share one Redis.
func WithKeyPrefix(prefix string) Option { return func(c *config) { c.prefix = prefix } }

// WithMaxMessageBytes sets the largest stream entry Write accepts (default
// DefaultMaxMessageBytes), counting the payload, the key, the ID, the
// headers and the field names. Larger messages fail with
// herald.ErrMessageTooLarge and nothing of the batch is written. Zero or
// less means no limit of the driver's own (Redis still refuses a value
// above its proto-max-bulk-len, 512 MB by default).
func WithMaxMessageBytes(n int) Option { return func(c *config) { c.maxMessageBytes = n } }

// WithTrimMaxLen makes every XADD trim its stream to about n entries
// (MAXLEN ~ n). Off by default. Trimming does not look at consumer groups:
// entries a slow group has not read yet, or has read and not acknowledged,
// are deleted all the same. See the package documentation, "Trimming".
func WithTrimMaxLen(n int64) Option { return func(c *config) { c.trimMaxLen = n } }

// WithTrimMaxAge makes every XADD drop entries older than about age (MINID
// ~ now-age, measured by the writer's clock against the millisecond time in
// the entry IDs). Off by default; the same warning as WithTrimMaxLen applies.
func WithTrimMaxAge(age time.Duration) Option { return func(c *config) { c.trimMaxAge = age } }

// WithStartPosition sets where a group that does not exist yet starts
// (default herald.StartEarliest). It matters only when Subscribe creates the
// group. A group that vanishes under a running consumer (a Redis restart
// without persistence, a deleted stream) is recreated at the beginning of
// the stream whatever this says, so that nothing written since is skipped.
func WithStartPosition(p herald.StartPosition) Option { return func(c *config) { c.start = p } }

// WithBlock sets how long one XREADGROUP blocks waiting for entries
// (default DefaultBlock). A Fetch whose context is cancelled, and a Close
// that waits for that Fetch, return at most this long after.
func WithBlock(d time.Duration) Option { return func(c *config) { c.block = d } }

// WithClaimMinIdle sets how long an entry must be pending and untouched
// before another member of the group takes it over with XAUTOCLAIM
// (default DefaultClaimMinIdle). A live subscription touches its own
// in-flight entries every third of it, so a handler may run for any length
// of time; the setting only decides how soon the entries of a crashed
// process are delivered again. Every member of a group should use the same
// value.
func WithClaimMinIdle(d time.Duration) Option { return func(c *config) { c.claimMinIdle = d } }

// WithReclaimInterval sets how often a subscription scans its group's
// pending entries for ones to take over, and removes departed consumers
// (default DefaultReclaimInterval).
func WithReclaimInterval(d time.Duration) Option { return func(c *config) { c.reclaimInterval = d } }

// WithConsumerIdle sets how long a consumer that holds no pending entries
// must have been silent before another member deletes it from the group
// (default DefaultConsumerIdle). A consumer that still holds pending entries
// is never deleted: its entries are taken over first.
func WithConsumerIdle(d time.Duration) Option { return func(c *config) { c.consumerIdle = d } }

// WithWait makes every Write wait until at least replicas replicas of
// each master it wrote to acknowledged its entries (WAIT replicas timeout,
// sent after the XADDs on the connection that carried them: one per
// master of a cluster), and fail the messages for which fewer did within
// timeout, with an error wrapping ErrNotReplicated. Off by default (0):
// Redis replicates asynchronously, so a failover can lose entries that
// Write reported stored. A failed message may have been stored all the
// same (on the master, and on some replicas), so a retry can duplicate
// it; consumers deduplicate by Message.ID. WAIT narrows the window but is
// no consensus: a promoted replica other than the ones that acknowledged
// can still lack the entry, and a master left without replicas fails
// every Write until one is back. timeout must be below the client's
// ReadTimeout, within which go-redis reads the pipeline's replies; New
// checks it for a *goredis.Client and a *goredis.ClusterClient, and
// refuses a *goredis.Ring, whose pipelines split the XADDs from their
// WAIT.
func WithWait(replicas int, timeout time.Duration) Option {
	return func(c *config) { c.waitReplicas, c.waitTimeout = replicas, timeout }
}

// WithErrorHandler receives the errors the driver meets in the background,
// where no caller can receive them: acknowledgments that could not be
// flushed yet (they are retried), pending entries deleted by trimming
// before they were acknowledged, in-flight entries taken over by another
// member, and failed clean-ups. It is called from several goroutines, must
// be safe for that, and must not block. Default: log with slog.Default() at
// error level. A subscription run by a herald scheduler (a Bus) reports to
// the scheduler's error handler instead (herald.ErrorReporter), so these
// errors reach herald.WithErrorHandler with the Bus's other errors.
func WithErrorHandler(f func(error)) Option { return func(c *config) { c.onError = f } }

// WithDelayPollInterval sets how often each topic's mover looks for due
// delayed messages when none is known to be due sooner (default
// DefaultDelayPollInterval, 1 ms to 1 min): the precision of delayed
// delivery, and its idle cost, one script call per topic with open
// subscriptions per process per interval. Out of range is a
// *herald.OptionError.
func WithDelayPollInterval(d time.Duration) Option { return func(c *config) { c.delayPoll = d } }
