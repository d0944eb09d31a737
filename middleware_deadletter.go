package herald

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"
)

// DeadLetterConfig configures the dead-letter middleware (WithDeadLetter,
// WithDeadLetterConfig). The zero value of a field means its default.
type DeadLetterConfig struct {
	// Writer receives dead-lettered messages (default: the Bus's driver).
	Writer Writer
	// Topic maps a topic to its dead-letter topic (default: topic + ".dlq").
	Topic func(topic string) string
	// MaxDeliveries, when above 0, dead-letters a message that arrives for
	// a delivery beyond that count (see DeliveryCount) without running the
	// handler again: the cure for a message whose handler keeps crashing
	// the consumer, or keeps failing where nothing else stops it.
	MaxDeliveries int
	// OnDeadLetter, if set, is called after a message was written to the
	// dead-letter topic, with the original message and the reason. It must
	// not block.
	OnDeadLetter func(m *Message, reason error)
}

func (c DeadLetterConfig) validate() error {
	return badIf(c.MaxDeliveries < 0, "DeadLetterConfig.MaxDeliveries", c.MaxDeliveries, "want 0 (no limit) or more")
}

// deadLetterSettings are what the Bus adds to a DeadLetterConfig.
type deadLetterSettings struct {
	DeadLetterConfig
	group string
	// onlyUndecodable restricts dead-lettering to undecodable payloads;
	// other errors pass through to be redelivered. The Bus sets it when no
	// dead-letter option was given, so a poison payload never blocks a key.
	onlyUndecodable bool
	now             func() time.Time // default time.Now
	report          reporter         // nil: nobody
}

// DeadLetterTopic is the default dead-letter topic naming: topic + ".dlq".
func DeadLetterTopic(topic string) string { return topic + ".dlq" }

// deadLetter writes a message the handler chain gave up on to the
// dead-letter topic, with headers for the reason, the attempts, the original
// topic, the group and the time, and then reports success so the original
// is acknowledged. If the dead-letter write fails, the handler error and the
// write error are returned and the original stays unacknowledged.
//
// Errors that are not a give-up pass through: ErrInProgress (dedup), a
// breaker or throttle wait cut short (ErrBreakerOpen, ErrStopping) and any
// error after the delivery's context ended (shutdown), so a message is
// never dead-lettered because the service was stopping. Each dead letter
// written is reported to cfg.report.
func deadLetter(cfg deadLetterSettings) Middleware {
	if cfg.Topic == nil {
		cfg.Topic = DeadLetterTopic
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	report := cfg.report.orNop()
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			var err error
			if cfg.MaxDeliveries > 0 && DeliveryCount(ctx) > cfg.MaxDeliveries {
				err = fmt.Errorf("herald: delivered %d times, more than the limit of %d", DeliveryCount(ctx), cfg.MaxDeliveries)
			} else if err = next(ctx, m); err == nil {
				return nil
			}
			var notWritten *notRepublishedError
			if ctx.Err() != nil || errors.Is(err, ErrInProgress) || heldBack(err) || errors.As(err, &notWritten) ||
				(cfg.onlyUndecodable && !errors.Is(err, ErrUndecodable)) {
				return err
			}
			dl := deadLetterMessage(m, cfg.Topic(m.Topic), cfg.group, err, cfg.now())
			if werr := cfg.Writer.Write(ctx, []*Message{dl}); werr != nil {
				return errors.Join(err, fmt.Errorf("herald: write to dead-letter topic %q: %w", dl.Topic, werr))
			}
			report(ctx, event{kind: eventDeadLetter, msg: m, err: err, topic: dl.Topic})
			if cfg.OnDeadLetter != nil {
				cfg.OnDeadLetter(m, err)
			}
			return nil
		}
	}
}

// deadLetterMessage is m on the dead-letter topic topic, as group gave up
// on it at now. A retry copy's headers (WithRetryLater) are left out: its
// attempts are in the record, and a redrive starts its rounds anew.
func deadLetterMessage(m *Message, topic, group string, reason error, now time.Time) *Message {
	attempts := attemptsOf(reason)
	if _, earlier := retryState(m, group); earlier > 0 && !errors.As(reason, new(*RetryLaterError)) {
		attempts += earlier // a permanent error in a later round
	}
	dl := DeadLetterRecord{Reason: reason.Error(), Attempts: attempts, Topic: m.Topic, Group: group, Time: now}.Message(m, topic)
	maps.DeleteFunc(dl.Headers, func(k, _ string) bool { return isRetryHeader(k) })
	return dl
}

// DeadLetterRecord is what an entry of a dead-letter topic says about the
// message it holds, in the herald-dlq-* headers: the dead-letter
// middleware writes it (Message), package dlq reads it back
// (ReadDeadLetter). This is the one definition of that format.
type DeadLetterRecord struct {
	// Reason is the error that sent the message there
	// (HeaderDeadLetterReason).
	Reason string
	// Attempts is how many times the handler ran before it gave up
	// (HeaderDeadLetterAttempts; 0 when absent or malformed).
	Attempts int
	// Topic is the topic the message was read from, where a redrive writes
	// it back (HeaderDeadLetterTopic).
	Topic string
	// Group is the subscriber group that gave up on it
	// (HeaderDeadLetterGroup).
	Group string
	// Time is when it was dead-lettered (HeaderDeadLetterTime, RFC 3339
	// with nanoseconds, UTC; zero when absent or malformed).
	Time time.Time
}

// Message returns m as the dead-letter topic topic stores it: a copy on
// topic with r in the herald-dlq-* headers and m's ID (so a redrive keeps
// it), key, content type, payload, time and other headers. It shares the
// payload with m.
func (r DeadLetterRecord) Message(m *Message, topic string) *Message {
	h := make(Headers, len(m.Headers)+5)
	maps.Copy(h, m.Headers)
	h[HeaderDeadLetterReason] = r.Reason
	h[HeaderDeadLetterAttempts] = strconv.Itoa(r.Attempts)
	h[HeaderDeadLetterTopic] = r.Topic
	h[HeaderDeadLetterGroup] = r.Group
	h[HeaderDeadLetterTime] = r.Time.UTC().Format(time.RFC3339Nano)
	return &Message{
		ID:          m.ID,
		Topic:       topic,
		Key:         m.Key,
		Headers:     h,
		ContentType: m.ContentType,
		Data:        m.Data,
		Time:        m.Time,
	}
}

// ReadDeadLetter returns the record in a dead-lettered message's headers.
// A missing or malformed attempts or time header leaves that field zero.
func ReadDeadLetter(m *Message) DeadLetterRecord {
	r := DeadLetterRecord{
		Reason: m.Headers.Get(HeaderDeadLetterReason),
		Topic:  m.Headers.Get(HeaderDeadLetterTopic),
		Group:  m.Headers.Get(HeaderDeadLetterGroup),
	}
	if n, err := strconv.Atoi(m.Headers.Get(HeaderDeadLetterAttempts)); err == nil && n > 0 {
		r.Attempts = n
	}
	if t, err := time.Parse(time.RFC3339Nano, m.Headers.Get(HeaderDeadLetterTime)); err == nil {
		r.Time = t.UTC()
	}
	return r
}

// IsDeadLetterHeader reports whether name is one of the headers of a
// DeadLetterRecord: those a redrive removes.
func IsDeadLetterHeader(name string) bool { return strings.HasPrefix(name, deadLetterHeaderPrefix) }

// deadLetterHeaderPrefix starts every header of a DeadLetterRecord.
const deadLetterHeaderPrefix = HeaderPrefix + "dlq-"
