package amqpdriver

import (
	"fmt"
	"strings"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/optcheck"
)

// Defaults of every option, in one place. Each option below documents what
// it changes; New validates the result and reports every problem at once.
const (
	// DefaultNamePrefix starts the name of every exchange and queue the
	// driver declares: topic T is the exchange DefaultNamePrefix+T, and
	// group G of it the queue DefaultNamePrefix+T+"@"+G.
	DefaultNamePrefix = "herald."
	// DefaultMaxMessageBytes bounds one message (herald.Message.Size:
	// payload, key, ID, content type and headers): 16 MiB, the broker's
	// own max_message_size default since RabbitMQ 4.0.
	DefaultMaxMessageBytes = 16 << 20
	// MaxPropertyBytes bounds what travels in a message's AMQP properties
	// (the key, the ID, the content type and the headers, everything but
	// the payload): the properties must fit in one frame, and 64 KiB fits
	// the smallest frame_max RabbitMQ negotiates by default (128 KiB) with
	// room for the encoding. A larger message fails with
	// herald.ErrMessageTooLarge whatever WithMaxMessageBytes says.
	MaxPropertyBytes = 64 << 10
	// DefaultPrefetch is how many unacknowledged deliveries the broker
	// sends one subscription ahead of its acknowledgments (basic.qos).
	DefaultPrefetch = 256
	// DefaultReconnectMin and DefaultReconnectMax bound the wait between
	// two attempts to reconnect (with jitter, doubling in between).
	DefaultReconnectMin = 100 * time.Millisecond
	DefaultReconnectMax = 10 * time.Second
	// DefaultConnectionName is the connection_name client property the
	// broker shows for the driver's connections (suffixed " publish" and
	// " consume").
	DefaultConnectionName = "herald"
	// DefaultRetentionAge and DefaultRetentionBytes bound what the stream
	// of a retained topic keeps (WithRetention): a week, as Kafka keeps a
	// topic by default, and 1 GiB, so that a storm of dead letters cannot
	// fill the broker's disk.
	DefaultRetentionAge   = 7 * 24 * time.Hour
	DefaultRetentionBytes = 1 << 30
)

// maxKeyBytes is the longest routing key AMQP carries (a short string).
const maxKeyBytes = 255

// QueueType is the kind of queue Subscribe declares for a group.
type QueueType int

const (
	// QueueQuorum declares quorum queues (x-queue-type=quorum): replicated,
	// durable, and what RabbitMQ recommends for data that must not be lost.
	// They need RabbitMQ 3.8 or later. The default.
	QueueQuorum QueueType = iota
	// QueueClassic declares classic durable queues, for brokers without
	// quorum queues or queues that must be classic.
	QueueClassic
)

// String returns "quorum" or "classic", the x-queue-type value.
func (q QueueType) String() string {
	switch q {
	case QueueQuorum:
		return "quorum"
	case QueueClassic:
		return "classic"
	}
	return fmt.Sprintf("QueueType(%d)", int(q))
}

// Option configures a Driver; see New.
type Option func(*config)

type config struct {
	prefix          string
	exchange        string
	maxMessageBytes int
	prefetch        int
	queueType       QueueType
	singleActive    bool
	reconnectMin    time.Duration
	reconnectMax    time.Duration
	connectionName  string
	retained        func(topic string) bool
	retentionAge    time.Duration
	retentionBytes  int64
}

func newConfig(opts []Option) (config, error) {
	c := config{
		prefix:          DefaultNamePrefix,
		maxMessageBytes: DefaultMaxMessageBytes,
		prefetch:        DefaultPrefetch,
		reconnectMin:    DefaultReconnectMin,
		reconnectMax:    DefaultReconnectMax,
		connectionName:  DefaultConnectionName,
		retained:        isDeadLetterTopic,
		retentionAge:    DefaultRetentionAge,
		retentionBytes:  DefaultRetentionBytes,
	}
	p := optcheck.New("amqpdriver")
	for i, o := range opts {
		if o == nil {
			p.Add(&herald.OptionError{Option: fmt.Sprintf("amqpdriver option %d", i), Value: nil, Reason: "nil option"})
			continue
		}
		o(&c)
	}
	p.Add(c.validate())
	return c, p.Err()
}

// validate reports every problem of c at once, each a *herald.OptionError
// (which wraps herald.ErrInvalidOption).
func (c config) validate() error {
	p := optcheck.New("amqpdriver")
	bad := func(cond bool, option string, value any, reason string) {
		if cond {
			p.Add(&herald.OptionError{Option: option, Value: value, Reason: reason})
		}
	}
	bad(c.maxMessageBytes < 0, "WithMaxMessageBytes", c.maxMessageBytes, "want 0 (no limit of the driver's own) or more")
	bad(c.prefetch < 1 || c.prefetch > 65535, "WithPrefetch", c.prefetch, "want 1 to 65535 (basic.qos prefetch-count is 16 bits)")
	bad(c.queueType != QueueQuorum && c.queueType != QueueClassic, "WithQueueType", c.queueType, "want QueueQuorum or QueueClassic")
	bad(c.reconnectMin <= 0, "WithReconnectBackoff", c.reconnectMin, "the first wait must be positive")
	bad(c.reconnectMax < c.reconnectMin, "WithReconnectBackoff", c.reconnectMax, fmt.Sprintf("the longest wait must be at least the first (%v)", c.reconnectMin))
	bad(len(c.prefix) > 40, "WithNamePrefix", c.prefix, "longer than 40 bytes")
	bad(!validPrefix(c.prefix), "WithNamePrefix", c.prefix, "only letters, digits and . - _ : / are allowed")
	if c.exchange != "" {
		if err := herald.ValidateName("exchange", c.exchange); err != nil {
			p.Add(&herald.OptionError{Option: "WithExchange", Value: c.exchange, Reason: err.Error()})
		}
	}
	bad(c.connectionName == "", "WithConnectionName", c.connectionName, "empty")
	bad(c.retentionAge < 0 || c.retentionAge%time.Second != 0, "WithRetention", c.retentionAge, "want 0 (no age limit) or a whole number of seconds")
	bad(c.retentionBytes < 0, "WithRetention", c.retentionBytes, "want 0 (no size limit) or more bytes")
	return p.Err()
}

func validPrefix(s string) bool {
	return s == "" || herald.ValidateName("prefix", s) == nil
}

// WithNamePrefix sets the prefix of the exchanges and queues the driver
// declares (default DefaultNamePrefix; at most 40 bytes of letters,
// digits and ". - _ : /"). Give each application its own prefix when
// several share one virtual host.
func WithNamePrefix(prefix string) Option { return func(c *config) { c.prefix = prefix } }

// WithExchange routes every topic through the one topic exchange name
// (declared durable if it does not exist) instead of an exchange per
// topic: a message is published with its topic as the routing key, and a
// group's queue is bound with its topic. The message key then travels only
// in the herald-key header. Use it when the exchanges are provisioned by
// someone else, or to bind other queues across topics with wildcards.
func WithExchange(name string) Option { return func(c *config) { c.exchange = name } }

// WithMaxMessageBytes sets the largest message Write accepts, by
// herald.Message.Size (default DefaultMaxMessageBytes). Larger messages
// fail with herald.ErrMessageTooLarge and nothing of the batch is
// published. Zero means no limit of the driver's own: the broker's
// max_message_size still applies (it closes the channel, and Write
// reports the messages it did not confirm). MaxPropertyBytes applies
// either way.
func WithMaxMessageBytes(n int) Option { return func(c *config) { c.maxMessageBytes = n } }

// WithPrefetch sets how many deliveries the broker sends a subscription
// before it waits for acknowledgments (default DefaultPrefetch). It bounds
// the deliveries one member holds, and so how many a crash or a lost
// connection hands back at once. Members of one group compete for
// messages in chunks of up to this many.
func WithPrefetch(n int) Option { return func(c *config) { c.prefetch = n } }

// WithQueueType sets the type of the queues Subscribe declares (default
// QueueQuorum). Every member of a group must use the same type: the
// broker refuses to redeclare a queue with other arguments, and Subscribe
// returns its error.
func WithQueueType(q QueueType) Option { return func(c *config) { c.queueType = q } }

// WithSingleActiveConsumer declares the groups' queues with
// x-single-active-consumer: the broker delivers to one member of a group
// at a time, and the next member takes over when it leaves. This keeps
// per-key order, and the total order of the queue, within a group that
// has several members (the others are hot standbys); without it members
// share the queue and a key's messages may be handled by two members at
// once. Every member of a group must agree (see WithQueueType). See the
// package documentation, "Order and duplicates".
func WithSingleActiveConsumer() Option { return func(c *config) { c.singleActive = true } }

// WithReconnectBackoff sets the wait between two attempts to reconnect
// after the connection was lost or a dial failed: lo at first, doubling to
// at most hi, with jitter (default DefaultReconnectMin to
// DefaultReconnectMax).
func WithReconnectBackoff(lo, hi time.Duration) Option {
	return func(c *config) { c.reconnectMin, c.reconnectMax = lo, hi }
}

// WithConnectionName sets the connection_name client property of the
// driver's connections, which the management UI and rabbitmqctl
// list_connections show (default DefaultConnectionName). The publishing
// connection is named name+" publish", the consuming one name+" consume".
func WithConnectionName(name string) Option { return func(c *config) { c.connectionName = name } }

// isDeadLetterTopic reports whether topic is named as herald names
// dead-letter topics (herald.DeadLetterTopic): the default of
// WithRetainedTopics.
func isDeadLetterTopic(topic string) bool {
	return strings.HasSuffix(topic, herald.DeadLetterTopic(""))
}

// WithRetainedTopics sets which topics the driver keeps in a stream of
// their own, which Driver.DeadLetters reads (default: the dead-letter
// topics, whose names end in ".dlq" as herald.DeadLetterTopic makes them).
// match replaces the default: to keep dead letters and more, match both,
// as in
//
//	amqpdriver.WithRetainedTopics(func(topic string) bool {
//		return strings.HasSuffix(topic, ".dlq") || topic == "audit"
//	})
//
// A nil match keeps no topic, for brokers without streams (before
// RabbitMQ 3.9): dead letters then reach only the groups subscribed to
// their topic, and DeadLetters lists nothing. See the package
// documentation, "Dead letters".
func WithRetainedTopics(match func(topic string) bool) Option {
	return func(c *config) {
		c.retained = match
		if match == nil {
			c.retained = func(string) bool { return false }
		}
	}
}

// WithRetention bounds what the stream of a retained topic keeps
// (default DefaultRetentionAge and DefaultRetentionBytes): the broker
// drops its oldest messages once they are older than maxAge (a whole
// number of seconds; x-max-age) or the stream is larger than maxBytes
// (x-max-length-bytes). Zero removes that bound. The broker drops whole
// segments (500 MB by default), so both bounds are approximate and a
// stream always keeps its newest segment. The retention is set when the
// stream is declared, by the first driver that writes the topic (or, for
// a marks stream, marks an entry redriven); a driver that finds the
// stream declared uses it as it is. Change the retention of a stream
// that exists with a policy (rabbitmqctl set_policy ... '{"max-age":
// "14D"}' --apply-to queues).
func WithRetention(maxAge time.Duration, maxBytes int64) Option {
	return func(c *config) { c.retentionAge, c.retentionBytes = maxAge, maxBytes }
}
