package herald

import (
	"log/slog"

	"github.com/google/uuid"
	"github.com/heraldbus/herald/codec"
	"github.com/heraldbus/herald/internal/telemetry"
	"github.com/segmentio/ksuid"
)

// Option configures a Bus or a Publisher. Defaults, in one place:
//
//   - codec: JSON; codecs known for decoding: JSON, Protobuf
//   - message IDs: KSUID (time-ordered, 27 characters)
//   - naming strategy: none (events must be registered or have a Topic method)
//   - largest message: 1 MiB (DefaultMaxMessageBytes), by Message.Size
//   - logger: slog.Default(); errors go to the logger at error level
//   - publish writer: the driver given to NewBus
//   - telemetry: the global OpenTelemetry tracer and meter providers, W3C
//     trace context (see telemetry.go)
type Option func(*options)

// DefaultMaxMessageBytes is the default size limit (Message.Size) of a
// Publisher; it matches Kafka's default message.max.bytes.
const DefaultMaxMessageBytes = 1 << 20

type options struct {
	codec           codec.Codec
	codecs          []codec.Codec
	newID           func() string // nil: the publisher's pooled KSUID source
	naming          NamingStrategy
	maxMessageBytes int
	logger          *slog.Logger
	onError         func(error)
	publishWriter   Writer
	onHandled       func(HandleResult)
	telemetry       telemetry.Config
	health          HealthConfig
}

func newOptions(opts []Option) options {
	o := options{
		codec:           codec.JSON{},
		maxMessageBytes: DefaultMaxMessageBytes,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	if o.onError == nil {
		logger := o.logger
		o.onError = func(err error) { logger.Error("herald", slog.Any("error", err)) }
	}
	return o
}

// WithDefaultCodec encodes published events with c (default JSON) unless
// their registration names another codec. c is also known for decoding.
func WithDefaultCodec(c codec.Codec) Option {
	return func(o *options) { o.codec = c; o.codecs = append(o.codecs, c) }
}

// WithCodecs makes more codecs known for decoding, by content type.
func WithCodecs(cs ...codec.Codec) Option {
	return func(o *options) { o.codecs = append(o.codecs, cs...) }
}

// WithIDGenerator sets how message IDs are made (default: KSUIDs, made
// from a pooled ksuid.Sequence so that an ID costs no random read).
func WithIDGenerator(newID func() string) Option {
	return func(o *options) { o.newID = newID }
}

// WithUUIDs makes message IDs random UUIDs (version 4).
func WithUUIDs() Option { return WithIDGenerator(uuid.NewString) }

// NewKSUID returns a new KSUID string: 27 characters, sortable by time.
func NewKSUID() string { return ksuid.New().String() }

// WithNamingStrategy places event types that were not registered and have
// no Topic method (for example SnakeCaseTopics).
func WithNamingStrategy(s NamingStrategy) Option {
	return func(o *options) { o.naming = s }
}

// WithMaxMessageBytes sets the largest message a Publisher accepts, by
// Message.Size (payload, key, ID, content type and headers; default
// 1 MiB); larger events fail with ErrMessageTooLarge before they reach the
// driver. Zero or less disables the check.
func WithMaxMessageBytes(n int) Option {
	return func(o *options) { o.maxMessageBytes = n }
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithErrorHandler receives every error the bus handles itself: driver
// errors of subscribers (retried), handler failures (redelivered), dedup
// bookkeeping failures. It must not block. Default: log at error level.
func WithErrorHandler(f func(error)) Option { return func(o *options) { o.onError = f } }

// WithPublishWriter sends Publish to w instead of the driver, typically an
// outbox.Writer so events are written in the caller's SQL transaction.
// Subscribers and dead-letters still use the driver.
func WithPublishWriter(w Writer) Option { return func(o *options) { o.publishWriter = w } }

// WithHandleHook is called with the result of every handled message of
// every subscription (see Observe): the place for metrics.
func WithHandleHook(f func(HandleResult)) Option { return func(o *options) { o.onHandled = f } }
