package natsdriver

import (
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/optcheck"
)

// Defaults of every option, in one place. Each option below documents what
// it changes; New validates the result and reports every problem at once.
const (
	// DefaultStreamPrefix starts the name of every stream the driver
	// creates: topic T lives in the stream DefaultStreamPrefix+Token(T).
	DefaultStreamPrefix = "HERALD_"
	// DefaultSubjectPrefix is the first subject token of every topic: topic
	// T is published on DefaultSubjectPrefix+"."+Token(T).
	DefaultSubjectPrefix = "herald"
	// DefaultMaxMessageBytes bounds one NATS message (payload and encoded
	// headers): 1 MiB, the server's default max_payload.
	DefaultMaxMessageBytes = 1 << 20
	// DefaultAckWait is how long the server waits for an acknowledgment
	// before it delivers a message again. A live subscription tells the
	// server it is still working on a delivery it holds for longer than
	// half of it, so handlers may run longer.
	DefaultAckWait = 30 * time.Second
	// DefaultFetchWait is how long one pull request waits on the server
	// for messages before Fetch sends the next; a subscription's Close
	// waits for the request under way to end, so it bounds Close too.
	DefaultFetchWait = time.Second
	// DefaultDuplicateWindow is the window of a created stream in which
	// the server drops a second message with the same Nats-Msg-Id
	// (herald's Message.ID): the server's own default, 2 minutes.
	DefaultDuplicateWindow = 2 * time.Minute
)

// Option configures a Driver; see New.
type Option func(*config)

type config struct {
	streamPrefix    string
	subjectPrefix   string
	subjectFor      func(topic string) string
	storage         jetstream.StorageType
	replicas        int
	maxAge          time.Duration
	duplicateWindow time.Duration
	maxMessageBytes int
	ackWait         time.Duration
	fetchWait       time.Duration
	start           herald.StartPosition
	releaseBucket   string
	delaysOn        bool
	onError         func(error)
}

func newConfig(opts []Option) config {
	c := config{
		streamPrefix:    DefaultStreamPrefix,
		subjectPrefix:   DefaultSubjectPrefix,
		storage:         jetstream.FileStorage,
		replicas:        1,
		duplicateWindow: DefaultDuplicateWindow,
		maxMessageBytes: DefaultMaxMessageBytes,
		ackWait:         DefaultAckWait,
		fetchWait:       DefaultFetchWait,
	}
	for _, o := range opts {
		o(&c)
	}
	if c.releaseBucket == "" {
		c.releaseBucket = c.streamPrefix + "RELEASES"
	}
	if c.onError == nil {
		c.onError = func(err error) {
			slog.Default().Error("herald nats driver", slog.Any("error", err))
		}
	}
	return c
}

// validate reports every problem of c at once.
func (c config) validate() error {
	p := optcheck.New("natsdriver")
	if c.subjectFor == nil {
		p.If(c.streamPrefix == "" || !validToken(c.streamPrefix), "stream prefix %q: want letters, digits, - and _ only", c.streamPrefix)
		p.If(!validSubject(c.subjectPrefix), "subject prefix %q: want one or more non-empty subject tokens without wildcards or spaces", c.subjectPrefix)
	}
	p.If(c.storage != jetstream.FileStorage && c.storage != jetstream.MemoryStorage, "unknown storage type %d", c.storage)
	p.If(c.replicas < 1 || c.replicas > 5, "replicas %d: want 1 to 5", c.replicas)
	p.If(c.maxAge < 0, "max age %v is negative", c.maxAge)
	p.If(c.duplicateWindow < 0, "duplicate window %v is negative", c.duplicateWindow)
	p.If(c.maxAge > 0 && c.duplicateWindow > c.maxAge, "duplicate window %v exceeds the max age %v (the server refuses it)", c.duplicateWindow, c.maxAge)
	p.If(c.maxMessageBytes < 0, "max message bytes %d: want 0 (the server's max_payload) or more", c.maxMessageBytes)
	p.If(c.ackWait < 10*time.Millisecond, "ack wait %v is below 10 ms", c.ackWait)
	p.If(c.fetchWait < 10*time.Millisecond, "fetch wait %v is below 10 ms", c.fetchWait)
	p.If(!c.start.Valid(), "unknown start position %d", c.start)
	p.If(!validToken(c.releaseBucket), "release bucket %q: want letters, digits, - and _ only", c.releaseBucket)
	return p.Err()
}

// WithStreamPrefix sets the prefix of the names of the streams the driver
// creates (default DefaultStreamPrefix): topic T lives in the stream
// prefix+Token(T). Give each application its own prefix, and its own
// WithSubjectPrefix, when several share one NATS account.
func WithStreamPrefix(prefix string) Option { return func(c *config) { c.streamPrefix = prefix } }

// WithSubjectPrefix sets the subject tokens before the topic (default
// DefaultSubjectPrefix): topic T is published on prefix+"."+Token(T), the
// only subject of its stream.
func WithSubjectPrefix(prefix string) Option { return func(c *config) { c.subjectPrefix = prefix } }

// WithSubjects maps topics onto streams that exist already, which the
// driver then neither creates nor changes: topic T is published on
// subject(T), and a group's consumer is created on the stream that
// holds that subject, filtered to it. Stream prefix, subject prefix,
// storage, replicas, max age and duplicate window do not apply; the
// streams' own settings do (keep a duplicate window, or retried
// publishes are stored twice). subject must return a valid subject without
// wildcards, a distinct one for each topic.
func WithSubjects(subject func(topic string) string) Option {
	return func(c *config) { c.subjectFor = subject }
}

// WithStorage sets the storage of the streams the driver creates (default
// jetstream.FileStorage). With jetstream.MemoryStorage a server restart
// loses the stream.
func WithStorage(s jetstream.StorageType) Option { return func(c *config) { c.storage = s } }

// WithReplicas sets the replica count of the streams the driver creates
// (default 1; a clustered server takes up to 5).
func WithReplicas(n int) Option { return func(c *config) { c.replicas = n } }

// WithMaxAge sets the age after which a created stream drops messages
// (default 0: kept until deleted). The server drops them whether every
// group acknowledged them or not.
func WithMaxAge(d time.Duration) Option { return func(c *config) { c.maxAge = d } }

// WithDuplicateWindow sets how long a created stream remembers message
// IDs to drop retried publishes (default DefaultDuplicateWindow; 0 is the
// server's default).
func WithDuplicateWindow(d time.Duration) Option { return func(c *config) { c.duplicateWindow = d } }

// WithMaxMessageBytes sets the largest message Write accepts, payload
// and encoded headers together (default DefaultMaxMessageBytes). Larger
// messages fail with herald.ErrMessageTooLarge and nothing of the batch is
// written. 0 means the connection's max_payload, which also bounds any
// larger setting: the server refuses what exceeds it.
func WithMaxMessageBytes(n int) Option { return func(c *config) { c.maxMessageBytes = n } }

// WithAckWait sets the AckWait of the consumers the driver creates
// (default DefaultAckWait): how soon the server delivers again a message
// whose member died. A live member sends an in-progress signal for each
// delivery it holds for longer than half of it. It applies when a group's
// consumer is created and is updated on the consumer when a member
// subscribes with another value; every member of a group should use one.
func WithAckWait(d time.Duration) Option { return func(c *config) { c.ackWait = d } }

// WithFetchWait sets how long one pull request waits on the server
// (default DefaultFetchWait). A cancelled Fetch returns at once whatever
// it is; a subscription's Close waits for the request under way to end,
// up to this long.
func WithFetchWait(d time.Duration) Option { return func(c *config) { c.fetchWait = d } }

// WithStartPosition sets where a group that has no consumer yet starts
// (default herald.StartEarliest: everything the stream holds;
// herald.StartLatest: what is published after the consumer is created).
func WithStartPosition(p herald.StartPosition) Option { return func(c *config) { c.start = p } }

// WithReleaseBucket names the key-value bucket in which the driver keeps
// the hand-backs of deliveries no handler started, so that they do not
// count in Delivery.Count (default: the stream prefix followed by
// "RELEASES", HERALD_RELEASES). It is created on the first Subscribe with
// the configured storage and replicas; every driver of one application
// must use the same bucket.
func WithReleaseBucket(name string) Option { return func(c *config) { c.releaseBucket = name } }

// WithErrorHandler receives the errors the driver meets in the
// background, where no caller can receive them: in-progress signals,
// acknowledgments the server did not confirm, hand-backs the server did
// not take, and the consumer of a dead-letter
// read that could not be deleted (see DeadLetters). It is called from several
// goroutines and must not block. Default: log with slog.Default() at
// error level. A subscription run by a herald scheduler reports to the
// scheduler's error handler instead (herald.ErrorReporter).
func WithErrorHandler(f func(error)) Option { return func(c *config) { c.onError = f } }

// WithDelays turns delayed delivery on: a Write puts a message whose
// herald.HeaderDeliverAt lies in the future in the delay stream
// (DelayStreamName), and a mover in each Driver with subscriptions (or
// StartDelayMover) forwards it to its topic when it is due. Without it a
// delayed message fails the Write with herald.ErrDelayNotSupported, and
// the driver creates no delay stream and runs no mover. See "Delayed
// delivery" in the package documentation.
func WithDelays() Option { return func(c *config) { c.delaysOn = true } }

// WithoutDelays turns delayed delivery off again (the default).
func WithoutDelays() Option { return func(c *config) { c.delaysOn = false } }
