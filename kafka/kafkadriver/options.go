package kafkadriver

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/optcheck"
)

// Defaults of every setting, in one place. Each has an Option below.
const (
	// DefaultBatchSize is the most messages one produce request carries.
	DefaultBatchSize = 10_000
	// DefaultBatchBytes is the most bytes (keys, values and headers) one
	// produce request carries; a single larger message goes alone. It stays
	// under the broker's default message.max.bytes (1048588) per batch.
	DefaultBatchBytes = 1_000_000
	// DefaultBatchTimeout is how long an idle partition waits for more
	// messages before sending: none. Messages written while a request is in
	// flight are batched into the next one, so batches grow with load and a
	// single Write never waits for a timer.
	DefaultBatchTimeout = time.Duration(0)
	// DefaultMaxMessageBytes bounds one message (key, value and headers),
	// like the Java producer's max.request.size.
	DefaultMaxMessageBytes = 1 << 20
	// DefaultMaxAttempts is how often a produce request is tried when the
	// broker answers with a retriable error.
	DefaultMaxAttempts = 10
	// DefaultRequestTimeout bounds one request to a broker (produce,
	// metadata, group coordination, offset commit) and one dial.
	DefaultRequestTimeout = 10 * time.Second

	// DefaultCommitInterval is how often acknowledged offsets are committed.
	DefaultCommitInterval = time.Second
	// DefaultHeartbeatInterval is how often a member heartbeats its group;
	// it is also how fast a member notices a rebalance.
	DefaultHeartbeatInterval = 3 * time.Second
	// DefaultSessionTimeout is how long the coordinator waits for a
	// heartbeat before it drops a member.
	DefaultSessionTimeout = 30 * time.Second
	// DefaultRebalanceTimeout is how long the coordinator waits for members
	// to rejoin during a rebalance.
	DefaultRebalanceTimeout = 30 * time.Second
	// DefaultRevokeTimeout bounds how long a member whose partitions are
	// revoked waits for its in-flight deliveries to be acknowledged before it
	// commits and rejoins. kafka-go sends no heartbeat meanwhile, so it must
	// stay below the session and rebalance timeouts.
	DefaultRevokeTimeout = 5 * time.Second
	// DefaultJoinGroupBackoff is the pause after a failed group join.
	DefaultJoinGroupBackoff = time.Second
	// DefaultPartitionWatchInterval is how often a member checks its topic
	// for new partitions (and for the topic's creation).
	DefaultPartitionWatchInterval = 5 * time.Second
	// DefaultFetchMaxWait is how long the broker holds a fetch for new data.
	DefaultFetchMaxWait = 500 * time.Millisecond
	// DefaultFetchMaxBytes bounds one fetch response per partition.
	DefaultFetchMaxBytes = 1 << 20
	// DefaultMaxUncommitted bounds, per partition, the messages fetched
	// since the lowest unacknowledged one. A key whose handler keeps failing
	// holds the commit back; past this many messages its partition stops
	// fetching until it moves.
	DefaultMaxUncommitted = 100_000

	// DefaultDelayPartitions is the partition count of a delay tier topic
	// the driver creates.
	DefaultDelayPartitions = 4
	// DefaultDelayBuffer bounds, per tier partition, the delayed records
	// the mover holds in memory waiting for their time; past it, that
	// partition's fetching pauses until its head moves on.
	DefaultDelayBuffer = 10_000
)

// DefaultDelayTiers is the ladder of holds of the delay tier topics (see
// WithDelayTiers).
var DefaultDelayTiers = []time.Duration{
	time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute,
	10 * time.Minute, time.Hour, 6 * time.Hour,
}

// maxDelayTiers bounds the ladder's length (each tier is a topic and a
// mover consumer).
const maxDelayTiers = 16

// Acks is how many replicas must store a message before the broker
// acknowledges a produce request.
type Acks int

const (
	// AcksAll waits for every in-sync replica (the default).
	AcksAll Acks = iota
	// AcksLeader waits for the partition leader only.
	AcksLeader
	// AcksNone does not wait: a Write returns once the request is sent, and
	// a broker-side failure goes unnoticed. Not at-least-once.
	AcksNone
)

// String returns "all", "leader" or "none".
func (a Acks) String() string {
	switch a {
	case AcksAll:
		return "all"
	case AcksLeader:
		return "leader"
	case AcksNone:
		return "none"
	}
	return fmt.Sprintf("Acks(%d)", int(a))
}

// Compression is the codec produce requests are compressed with.
type Compression int

// Compression codecs; brokers and consumers in other languages read all of
// them.
const (
	CompressionNone Compression = iota
	CompressionGzip
	CompressionSnappy
	CompressionLz4
	CompressionZstd
)

// String returns the codec's name ("none", "gzip", "snappy", "lz4", "zstd").
func (c Compression) String() string {
	switch c {
	case CompressionNone:
		return "none"
	case CompressionGzip:
		return "gzip"
	case CompressionSnappy:
		return "snappy"
	case CompressionLz4:
		return "lz4"
	case CompressionZstd:
		return "zstd"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

// SCRAM names a SCRAM hash for WithSASLSCRAM.
type SCRAM int

// SCRAM mechanisms.
const (
	SCRAMSHA256 SCRAM = iota // SCRAM-SHA-256
	SCRAMSHA512              // SCRAM-SHA-512
)

// Option configures a Driver; New reports every invalid option at once.
type Option func(*config)

type config struct {
	brokers []string

	batchSize       int
	batchBytes      int
	batchTimeout    time.Duration
	maxMessageBytes int
	maxAttempts     int
	acks            Acks
	compression     Compression
	autoCreate      bool
	requestTimeout  time.Duration

	tls      *tls.Config
	sasl     sasl.Mechanism
	saslErr  error
	clientID string

	start                  herald.StartPosition
	commitInterval         time.Duration
	heartbeatInterval      time.Duration
	sessionTimeout         time.Duration
	rebalanceTimeout       time.Duration
	revokeTimeout          time.Duration
	joinGroupBackoff       time.Duration
	partitionWatchInterval time.Duration
	fetchMaxWait           time.Duration
	fetchMaxBytes          int
	maxUncommitted         int

	delaysOn        bool
	delayTiers      []time.Duration
	delayPrefix     string
	delayPartitions int
	delayBuffer     int

	logger *slog.Logger
}

func newConfig(brokers []string, opts []Option) config {
	c := config{
		brokers:                brokers,
		batchSize:              DefaultBatchSize,
		batchBytes:             DefaultBatchBytes,
		batchTimeout:           DefaultBatchTimeout,
		maxMessageBytes:        DefaultMaxMessageBytes,
		maxAttempts:            DefaultMaxAttempts,
		requestTimeout:         DefaultRequestTimeout,
		clientID:               "herald",
		commitInterval:         DefaultCommitInterval,
		heartbeatInterval:      DefaultHeartbeatInterval,
		sessionTimeout:         DefaultSessionTimeout,
		rebalanceTimeout:       DefaultRebalanceTimeout,
		revokeTimeout:          DefaultRevokeTimeout,
		joinGroupBackoff:       DefaultJoinGroupBackoff,
		partitionWatchInterval: DefaultPartitionWatchInterval,
		fetchMaxWait:           DefaultFetchMaxWait,
		fetchMaxBytes:          DefaultFetchMaxBytes,
		maxUncommitted:         DefaultMaxUncommitted,
		delayTiers:             DefaultDelayTiers,
		delayPartitions:        DefaultDelayPartitions,
		delayBuffer:            DefaultDelayBuffer,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	return c
}

// validate reports every problem of c at once.
func (c *config) validate() error {
	p := optcheck.New("kafkadriver")
	c.checkBrokers(p)
	c.checkSizes(p)
	c.checkTimes(p)
	p.If(c.acks < AcksAll || c.acks > AcksNone, "unknown acks setting %d", int(c.acks))
	p.If(c.compression < CompressionNone || c.compression > CompressionZstd, "unknown compression codec %d", int(c.compression))
	p.If(!c.start.Valid(), "unknown start position %d", int(c.start))
	p.Add(c.saslErr)
	c.checkDelays(p)
	if err := p.Err(); err != nil {
		return fmt.Errorf("kafkadriver: invalid configuration: %w", err)
	}
	return nil
}

func (c *config) checkBrokers(p *optcheck.Problems) {
	p.If(len(c.brokers) == 0, "no broker addresses")
	for _, b := range c.brokers {
		p.If(strings.TrimSpace(b) == "" || strings.ContainsAny(b, ", \t"), "broker address %q is not host:port", b)
	}
}

func (c *config) checkSizes(p *optcheck.Problems) {
	optcheck.Positive(p, "batch size", c.batchSize)
	optcheck.Positive(p, "batch bytes", c.batchBytes)
	optcheck.Positive(p, "max message bytes", c.maxMessageBytes)
	optcheck.Positive(p, "max attempts", c.maxAttempts)
	optcheck.Positive(p, "fetch max bytes", c.fetchMaxBytes)
	optcheck.Positive(p, "max uncommitted", c.maxUncommitted)
}

// checkDelays validates the delay options (even when delays are off, so
// that turning them on later does not surface a mistake).
func (c *config) checkDelays(p *optcheck.Problems) {
	optcheck.Positive(p, "delay partitions", c.delayPartitions)
	optcheck.Positive(p, "delay buffer", c.delayBuffer)
	p.If(len(c.delayTiers) == 0, "delay tiers: the ladder is empty")
	p.If(len(c.delayTiers) > maxDelayTiers, "delay tiers: %d holds, at most %d", len(c.delayTiers), maxDelayTiers)
	for i, h := range c.delayTiers {
		switch {
		case h < time.Millisecond || h%time.Millisecond != 0:
			p.Addf("delay tier %d: hold %v is not a positive whole number of milliseconds", i, h)
		case h > herald.MaxDelay:
			p.Addf("delay tier %d: hold %v is longer than herald.MaxDelay (%v)", i, h, herald.MaxDelay)
		case i > 0 && h <= c.delayTiers[i-1]:
			p.Addf("delay tiers must grow: hold %v after %v", h, c.delayTiers[i-1])
		}
	}
	if c.delayPrefix != "" {
		if err := validateTopic(c.delayPrefix + "herald.delay.1s"); err != nil {
			p.Addf("delay topic prefix %q: %v", c.delayPrefix, err)
		}
	}
}

func (c *config) checkTimes(p *optcheck.Problems) {
	p.If(c.batchTimeout < 0, "batch timeout must not be negative, got %v", c.batchTimeout)
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"request timeout", c.requestTimeout}, {"commit interval", c.commitInterval},
		{"heartbeat interval", c.heartbeatInterval}, {"session timeout", c.sessionTimeout},
		{"rebalance timeout", c.rebalanceTimeout}, {"revoke timeout", c.revokeTimeout},
		{"join group backoff", c.joinGroupBackoff}, {"partition watch interval", c.partitionWatchInterval},
		{"fetch max wait", c.fetchMaxWait},
	} {
		optcheck.Positive(p, d.name, d.v)
	}
	optcheck.Shorter(p, "heartbeat interval", c.heartbeatInterval, "session timeout", c.sessionTimeout)
	// kafka-go stops heartbeating once a rebalance starts, so a member that
	// drains longer than either timeout is dropped by the coordinator.
	optcheck.Shorter(p, "revoke timeout", c.revokeTimeout, "session timeout", c.sessionTimeout)
	optcheck.Shorter(p, "revoke timeout", c.revokeTimeout, "rebalance timeout", c.rebalanceTimeout)
}

// WithBatchSize bounds the messages of one produce request (default
// DefaultBatchSize).
func WithBatchSize(n int) Option { return func(c *config) { c.batchSize = n } }

// WithBatchBytes bounds the bytes of one produce request (default
// DefaultBatchBytes). Keep it under the broker's message.max.bytes.
func WithBatchBytes(n int) Option { return func(c *config) { c.batchBytes = n } }

// WithBatchTimeout makes a partition wait up to d for more messages before
// it sends a batch that is not full (default 0: send at once; see
// DefaultBatchTimeout). Waiting trades latency for bigger batches when
// writes are sparse.
func WithBatchTimeout(d time.Duration) Option { return func(c *config) { c.batchTimeout = d } }

// WithMaxMessageBytes sets the largest message (key, value and headers)
// Write accepts; larger ones fail with herald.ErrMessageTooLarge before
// anything is sent (default DefaultMaxMessageBytes).
func WithMaxMessageBytes(n int) Option { return func(c *config) { c.maxMessageBytes = n } }

// WithMaxAttempts sets how often a produce request is tried on retriable
// broker errors (default DefaultMaxAttempts).
func WithMaxAttempts(n int) Option { return func(c *config) { c.maxAttempts = n } }

// WithRequiredAcks sets the acknowledgment a produce request waits for
// (default AcksAll).
func WithRequiredAcks(a Acks) Option { return func(c *config) { c.acks = a } }

// WithCompression compresses produce requests with codec (default none).
func WithCompression(codec Compression) Option { return func(c *config) { c.compression = codec } }

// WithAutoCreateTopics lets Write and Subscribe create a missing topic with
// the broker's default partition count, when the broker allows it
// (auto.create.topics.enable). Off by default: a Write to a missing topic
// fails after the request timeout.
func WithAutoCreateTopics() Option { return func(c *config) { c.autoCreate = true } }

// WithRequestTimeout bounds each request to a broker and each dial (default
// DefaultRequestTimeout).
func WithRequestTimeout(d time.Duration) Option { return func(c *config) { c.requestTimeout = d } }

// WithTLS connects to the brokers over TLS with cfg.
func WithTLS(cfg *tls.Config) Option { return func(c *config) { c.tls = cfg } }

// WithSASL authenticates every connection with m (for example a mechanism
// from github.com/segmentio/kafka-go/sasl/...).
func WithSASL(m sasl.Mechanism) Option { return func(c *config) { c.sasl = m } }

// WithSASLPlain authenticates with SASL/PLAIN; use it over TLS.
func WithSASLPlain(user, password string) Option {
	return WithSASL(plain.Mechanism{Username: user, Password: password})
}

// WithSASLSCRAM authenticates with SASL/SCRAM-SHA-256 or SCRAM-SHA-512.
// The credentials are used as given (no SASLprep normalization of
// non-ASCII characters).
func WithSASLSCRAM(alg SCRAM, user, password string) Option {
	return func(c *config) {
		m, err := newSCRAM(alg, user, password)
		if err != nil {
			c.saslErr = fmt.Errorf("SASL: %w", err)
			return
		}
		c.sasl = m
	}
}

// WithClientID sets the client id the brokers see (default "herald").
func WithClientID(id string) Option { return func(c *config) { c.clientID = id } }

// WithStartPosition sets where a group without a committed offset for a
// partition starts (default herald.StartEarliest). The offset it resolves
// to is committed at once, so a restart does not skip what was written in
// between.
func WithStartPosition(p herald.StartPosition) Option { return func(c *config) { c.start = p } }

// WithCommitInterval sets how often acknowledged offsets are committed
// (default DefaultCommitInterval). Offsets are also committed when a member
// loses its partitions and when a subscription closes.
func WithCommitInterval(d time.Duration) Option { return func(c *config) { c.commitInterval = d } }

// WithHeartbeatInterval sets the group heartbeat interval (default
// DefaultHeartbeatInterval).
func WithHeartbeatInterval(d time.Duration) Option {
	return func(c *config) { c.heartbeatInterval = d }
}

// WithSessionTimeout sets the group session timeout (default
// DefaultSessionTimeout); the broker bounds it with
// group.min.session.timeout.ms and group.max.session.timeout.ms.
func WithSessionTimeout(d time.Duration) Option { return func(c *config) { c.sessionTimeout = d } }

// WithRebalanceTimeout sets the group rebalance timeout (default
// DefaultRebalanceTimeout).
func WithRebalanceTimeout(d time.Duration) Option {
	return func(c *config) { c.rebalanceTimeout = d }
}

// WithRevokeTimeout bounds the wait for in-flight deliveries when
// partitions are revoked (default DefaultRevokeTimeout); it must be shorter
// than the session and rebalance timeouts.
func WithRevokeTimeout(d time.Duration) Option { return func(c *config) { c.revokeTimeout = d } }

// WithJoinGroupBackoff sets the pause after a failed group join (default
// DefaultJoinGroupBackoff).
func WithJoinGroupBackoff(d time.Duration) Option {
	return func(c *config) { c.joinGroupBackoff = d }
}

// WithPartitionWatchInterval sets how often a member looks for new
// partitions of its topic (default DefaultPartitionWatchInterval).
func WithPartitionWatchInterval(d time.Duration) Option {
	return func(c *config) { c.partitionWatchInterval = d }
}

// WithFetchMaxWait sets how long the broker holds a fetch waiting for data
// (default DefaultFetchMaxWait).
func WithFetchMaxWait(d time.Duration) Option { return func(c *config) { c.fetchMaxWait = d } }

// WithFetchMaxBytes bounds one fetch response per partition (default
// DefaultFetchMaxBytes); a larger single message is still returned.
func WithFetchMaxBytes(n int) Option { return func(c *config) { c.fetchMaxBytes = n } }

// WithMaxUncommitted bounds the messages a partition fetches past its
// lowest unacknowledged one (default DefaultMaxUncommitted).
func WithMaxUncommitted(n int) Option { return func(c *config) { c.maxUncommitted = n } }

// WithLogger sets where the driver logs (default slog.Default()): offset
// resets, abandoned deliveries at a rebalance, retried failures at warn
// level, and kafka-go's own messages at debug level.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithDelayTiers sets the ladder of holds of the delay tier topics, with
// WithDelays (default DefaultDelayTiers: 1s 5s 30s 2m 10m 1h 6h): one topic per hold,
// named DelayTopic(hold). A delayed message goes to the tier of the
// largest hold not above its remaining delay (the smallest tier when the
// delay is shorter than that), and hops down the ladder until it is due,
// so a delay of D takes about as many writes as there are tiers up to D.
// Holds must be whole milliseconds, strictly increasing, at most
// herald.MaxDelay, and at most 16 of them. Changing the ladder of a
// running system leaves records in tiers no longer listed unmoved:
// add tiers, do not remove one that may hold records.
func WithDelayTiers(holds ...time.Duration) Option {
	return func(c *config) { c.delayTiers = append([]time.Duration(nil), holds...) }
}

// WithDelayTopicPrefix puts the delay tier topics and the mover's group
// under prefix ("" by default): topics "<prefix>herald.delay.<hold>",
// each read by the mover group of the same name. Drivers that share a prefix share the
// delayed messages and the movers.
func WithDelayTopicPrefix(prefix string) Option { return func(c *config) { c.delayPrefix = prefix } }

// WithDelayPartitions sets the partition count of the tier topics the
// driver creates (default DefaultDelayPartitions); existing topics are
// used as they are.
func WithDelayPartitions(n int) Option { return func(c *config) { c.delayPartitions = n } }

// WithDelayBuffer bounds the records the mover holds per tier partition
// while they wait for their time (default DefaultDelayBuffer).
func WithDelayBuffer(n int) Option { return func(c *config) { c.delayBuffer = n } }

// WithDelays turns delayed delivery on (it is off by default): a message
// due in the future goes to a delay tier topic (WithDelayTiers), and every
// Driver with subscriptions runs a member of each tier's mover group,
// which forwards it when it is due. It costs a consumer group per tier in
// every such Driver, which is why it is opt-in. Every Driver that
// publishes or consumes delayed messages of a system should take the same
// WithDelays, WithDelayTiers and WithDelayTopicPrefix.
func WithDelays() Option { return func(c *config) { c.delaysOn = true } }

// WithoutDelays turns delayed delivery off, as by default (after a
// WithDelays, say): Write refuses a message due in the future
// (herald.ErrDelayNotSupported, nothing written), DelayPrecision reports
// 0, and no mover runs.
func WithoutDelays() Option { return func(c *config) { c.delaysOn = false } }
