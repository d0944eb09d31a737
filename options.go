package herald

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/uuid"
	"github.com/heraldbus/herald/codec"
	"github.com/heraldbus/herald/internal/telemetry"
	"github.com/segmentio/ksuid"
)

// Option configures a Bus (NewBus). Every PublisherOption is an Option
// too, and configures the Bus's Publisher; the options that only a Bus has
// (WithLogger, WithErrorHandler, WithHandleHook, WithHealth,
// WithPublishWriter, WithOutbox) are not PublisherOptions, so giving one to
// NewPublisher does not compile. A bad value is an error from the
// constructor (an *OptionError wrapping ErrInvalidOption; every problem at
// once), never a silent correction.
//
// Defaults, in one place:
//
//   - codec: JSON (WithDefaultCodec); codecs known for decoding: JSON, the
//     default codec, each registered type's codec, and WithCodecs
//   - message IDs: KSUID (time-ordered, 27 characters)
//   - naming strategy: none (events must be registered or have a Topic method)
//   - largest message: 1 MiB (DefaultMaxMessageBytes), by Message.Size
//   - logger: slog.Default(); errors go to the logger at error level
//   - publishing: the driver given to NewBus (WithPublishWriter,
//     WithOutbox)
//   - telemetry: the global OpenTelemetry tracer and meter providers, W3C
//     trace context (see telemetry.go)
type Option interface {
	applyBus(*busOptions)
}

// PublisherOption configures a Publisher (NewPublisher), or the Publisher
// of a Bus.
type PublisherOption interface {
	Option
	applyPublisher(*pubOptions)
}

// busOption is an option only a Bus has.
type busOption func(*busOptions)

func (f busOption) applyBus(o *busOptions) { f(o) }

// pubOption is an option of the Publisher, a Bus's included.
type pubOption func(*pubOptions)

func (f pubOption) applyBus(o *busOptions)       { f(&o.pub) }
func (f pubOption) applyPublisher(o *pubOptions) { f(o) }

// DefaultMaxMessageBytes is the default size limit (Message.Size) of a
// Publisher; it matches Kafka's default message.max.bytes.
const DefaultMaxMessageBytes = 1 << 20

// pubOptions are a Publisher's settings.
type pubOptions struct {
	codec           codec.Codec
	codecs          []codec.Codec
	newID           func() string // nil: the publisher's pooled KSUID source
	naming          NamingStrategy
	maxMessageBytes int
	telemetry       telemetry.Config
	errs            []error // bad values, reported by the constructor
}

// busOptions are a Bus's settings.
type busOptions struct {
	pub           pubOptions
	logger        *slog.Logger
	onError       func(error)
	publishWriter Writer
	outbox        TransactionalWriter
	onHandled     func(HandleResult)
	health        HealthConfig
	errs          []error
}

func defaultPubOptions() pubOptions {
	return pubOptions{codec: codec.JSON{}, maxMessageBytes: DefaultMaxMessageBytes}
}

func newPubOptions(opts []PublisherOption) (pubOptions, error) {
	o := defaultPubOptions()
	for _, opt := range opts {
		if opt == nil {
			o.errs = append(o.errs, &OptionError{Option: "PublisherOption", Value: nil, Reason: "nil option"})
			continue
		}
		opt.applyPublisher(&o)
	}
	return o, errors.Join(o.errs...)
}

func newBusOptions(opts []Option) (busOptions, error) {
	o := busOptions{pub: defaultPubOptions()}
	for _, opt := range opts {
		if opt == nil {
			o.errs = append(o.errs, &OptionError{Option: "Option", Value: nil, Reason: "nil option"})
			continue
		}
		opt.applyBus(&o)
	}
	if o.publishWriter != nil && o.outbox != nil {
		o.errs = append(o.errs, &OptionError{Option: "WithPublishWriter", Value: o.publishWriter,
			Reason: "given with WithOutbox: publish either always to one writer, or to the outbox in a transaction and to the driver otherwise"})
	}
	o.errs = append(o.errs, o.health.validate())
	if err := errors.Join(append(o.errs, o.pub.errs...)...); err != nil {
		return o, err
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	if o.onError == nil {
		logger := o.logger
		o.onError = func(err error) { logger.Error("herald", slog.Any("error", err)) }
	}
	return o, nil
}

// ErrInvalidOption is wrapped by every error that reports a bad option or
// configuration value (see OptionError).
var ErrInvalidOption = errors.New("herald: invalid option")

// OptionError reports an option, or a field of a configuration struct,
// given a value herald does not accept. It wraps ErrInvalidOption.
type OptionError struct {
	Option string // "WithMaxMessageBytes", "RetryConfig.MaxAttempts", ...
	Value  any
	Reason string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("herald: %s %v: %s", e.Option, e.Value, e.Reason)
}

// Unwrap returns ErrInvalidOption.
func (e *OptionError) Unwrap() error { return ErrInvalidOption }

// pubSet is the PublisherOption named option that applies set, or reports
// v as a nil value when it is nil.
func pubSet(option string, v any, set func(*pubOptions)) PublisherOption {
	return pubOption(func(o *pubOptions) {
		if isNil(v) {
			o.errs = append(o.errs, &OptionError{Option: option, Value: nil, Reason: "nil value"})
			return
		}
		set(o)
	})
}

// busSet is pubSet for an option only a Bus has.
func busSet(option string, v any, set func(*busOptions)) Option {
	return busOption(func(o *busOptions) {
		if isNil(v) {
			o.errs = append(o.errs, &OptionError{Option: option, Value: nil, Reason: "nil value"})
			return
		}
		set(o)
	})
}

// badIf returns an *OptionError when bad holds, else nil: for building the
// errors.Join of a config's validate.
func badIf(bad bool, option string, value any, reason string) error {
	if !bad {
		return nil
	}
	return &OptionError{Option: option, Value: value, Reason: reason}
}

// WithDefaultCodec encodes published events with c (default JSON) unless
// their registration names another codec (WithCodec). c is also known for
// decoding.
func WithDefaultCodec(c codec.Codec) PublisherOption {
	return pubSet("WithDefaultCodec", c, func(o *pubOptions) {
		o.codec = c
		o.codecs = append(o.codecs, c)
	})
}

// WithCodecs makes more codecs known for decoding, by content type, for
// messages of types registered without them (a foreign producer's
// content type, say). Codecs given to WithDefaultCodec and WithCodec are
// known already.
func WithCodecs(cs ...codec.Codec) PublisherOption {
	return pubOption(func(o *pubOptions) {
		for _, c := range cs {
			if isNil(c) {
				o.errs = append(o.errs, &OptionError{Option: "WithCodecs", Value: nil, Reason: "nil codec"})
				continue
			}
			o.codecs = append(o.codecs, c)
		}
	})
}

// WithIDGenerator sets how message IDs are made (default: KSUIDs, made
// from a pooled ksuid.Sequence so that an ID costs no random read). It
// must return a unique, non-empty string on every call and be safe for
// concurrent use.
func WithIDGenerator(newID func() string) PublisherOption {
	return pubSet("WithIDGenerator", newID, func(o *pubOptions) { o.newID = newID })
}

// WithUUIDs makes message IDs random UUIDs (version 4).
func WithUUIDs() PublisherOption { return WithIDGenerator(uuid.NewString) }

// NewKSUID returns a new KSUID string: 27 characters, sortable by time.
func NewKSUID() string { return ksuid.New().String() }

// WithNamingStrategy places event types that were not registered and have
// no Topic method (for example SnakeCaseTopics).
func WithNamingStrategy(s NamingStrategy) PublisherOption {
	return pubSet("WithNamingStrategy", s, func(o *pubOptions) { o.naming = s })
}

// WithMaxMessageBytes sets the largest message a Publisher accepts, by
// Message.Size (payload, key, ID, content type and headers; default
// DefaultMaxMessageBytes, 1 MiB); larger events fail with
// ErrMessageTooLarge before any Write. 0 turns the Publisher's check off;
// below 0 is an error.
//
// Size limits are layered, and the smallest wins: the Publisher checks
// first, then the Writer it writes to (each driver's WithMaxMessageBytes,
// or the outbox Writer's), and a relay's target checks the rows it
// forwards. All of them count Message.Size (a driver may add its wire
// overhead). Keep an outbox Writer's limit at or below its relay target's,
// or an oversized row goes to quarantine instead of failing the Publish.
func WithMaxMessageBytes(n int) PublisherOption {
	return pubOption(func(o *pubOptions) {
		if n < 0 {
			o.errs = append(o.errs, &OptionError{Option: "WithMaxMessageBytes", Value: n, Reason: "want 0 (no check) or more"})
			return
		}
		o.maxMessageBytes = n
	})
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return busSet("WithLogger", l, func(o *busOptions) { o.logger = l })
}

// WithErrorHandler receives every error the bus handles itself: driver
// errors of subscribers (retried), handler failures (redelivered), dedup
// bookkeeping failures. It must not block. Default: log at error level.
func WithErrorHandler(f func(error)) Option {
	return busSet("WithErrorHandler", f, func(o *busOptions) { o.onError = f })
}

// WithPublishWriter sends every Publish to w instead of the driver.
// Subscribers and dead letters still use the driver. To publish through an
// outbox only inside transactions, use WithOutbox.
func WithPublishWriter(w Writer) Option {
	return busSet("WithPublishWriter", w, func(o *busOptions) { o.publishWriter = w })
}

// TransactionalWriter is a Writer that writes inside the caller's
// transaction, such as the outbox Writer: InTransaction reports whether
// ctx carries a transaction it writes in.
type TransactionalWriter interface {
	Writer
	InTransaction(ctx context.Context) bool
}

// WithOutbox makes a Bus publish both ways with one registry: a Publish
// whose context carries a transaction w writes in (outbox.WithTx,
// outbox.WithPgxTx) goes to w, in that transaction; any other Publish goes
// to the driver at once. Subscribers and dead letters use the driver.
func WithOutbox(w TransactionalWriter) Option {
	return busSet("WithOutbox", w, func(o *busOptions) { o.outbox = w })
}

// WithHandleHook is called with the result of every delivery of every
// subscription, skipped ones included (see HandleResult): the place for
// metrics of your own. It must not block.
func WithHandleHook(f func(HandleResult)) Option {
	return busSet("WithHandleHook", f, func(o *busOptions) { o.onHandled = f })
}
