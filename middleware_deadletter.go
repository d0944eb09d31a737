package herald

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/heraldbus/herald/internal/telemetry"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// DeadLetterConfig configures DeadLetter.
type DeadLetterConfig struct {
	// Writer receives dead-lettered messages (required; the Bus passes its
	// own writer).
	Writer Writer
	// Topic maps a topic to its dead-letter topic (default: topic + ".dlq").
	Topic func(topic string) string
	// Group is recorded in HeaderDeadLetterGroup (the Bus sets it).
	Group string
	// MaxDeliveries, when above 0, dead-letters a message that arrives for
	// a delivery beyond that count (see DeliveryCount) without running the
	// handler again: the cure for a message whose handler keeps crashing
	// the consumer, or keeps failing where nothing else stops it.
	MaxDeliveries int
	// OnlyUndecodable restricts dead-lettering to undecodable payloads;
	// other errors pass through to be redelivered. The Bus uses it when no
	// dead-letter option was given, so a poison payload never blocks a key.
	OnlyUndecodable bool
	// OnDeadLetter, if set, is called after a message was written to the
	// dead-letter topic, with the original message and the reason.
	OnDeadLetter func(m *Message, reason error)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// DeadLetterTopic is the default dead-letter topic naming: topic + ".dlq".
func DeadLetterTopic(topic string) string { return topic + ".dlq" }

// DeadLetter writes a message the handler chain gave up on to the
// dead-letter topic, with headers for the reason, the attempts, the original
// topic, the group and the time, and then reports success so the original
// is acknowledged. If the dead-letter write fails, the handler error and the
// write error are returned and the original stays unacknowledged.
//
// Errors that are not a give-up pass through: ErrInProgress (dedup) and any
// error after the delivery's context ended (shutdown), so a message is
// never dead-lettered because the service was stopping.
func DeadLetter(cfg DeadLetterConfig) Middleware {
	if cfg.Topic == nil {
		cfg.Topic = DeadLetterTopic
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			var err error
			if cfg.MaxDeliveries > 0 && DeliveryCount(ctx) > cfg.MaxDeliveries {
				err = fmt.Errorf("herald: delivered %d times, more than the limit of %d", DeliveryCount(ctx), cfg.MaxDeliveries)
			} else if err = next(ctx, m); err == nil {
				return nil
			}
			if ctx.Err() != nil || errors.Is(err, ErrInProgress) ||
				(cfg.OnlyUndecodable && !errors.Is(err, ErrUndecodable)) {
				return err
			}
			dl := deadLetterMessage(m, cfg.Topic(m.Topic), cfg.Group, err, cfg.Now())
			if werr := cfg.Writer.Write(ctx, []*Message{dl}); werr != nil {
				return errors.Join(err, fmt.Errorf("herald: write to dead-letter topic %q: %w", dl.Topic, werr))
			}
			if span := trace.SpanFromContext(ctx); span.IsRecording() {
				span.AddEvent("herald.dead_letter", trace.WithAttributes(
					attribute.String("herald.dead_letter.topic", dl.Topic),
					attribute.String("herald.dead_letter.reason", err.Error()),
					semconv.ErrorTypeKey.String(telemetry.ErrorType(err))))
			}
			if cfg.OnDeadLetter != nil {
				cfg.OnDeadLetter(m, err)
			}
			return nil
		}
	}
}

func deadLetterMessage(m *Message, topic, group string, reason error, now time.Time) *Message {
	attempts := 1
	var re *RetryError
	if errors.As(reason, &re) {
		attempts = re.Attempts
	}
	h := make(Headers, len(m.Headers)+5)
	maps.Copy(h, m.Headers)
	h[HeaderDeadLetterReason] = reason.Error()
	h[HeaderDeadLetterAttempts] = strconv.Itoa(attempts)
	h[HeaderDeadLetterTopic] = m.Topic
	h[HeaderDeadLetterGroup] = group
	h[HeaderDeadLetterTime] = now.UTC().Format(time.RFC3339Nano)
	return &Message{
		ID:          m.ID, // kept, so a redrive deduplicates against the original
		Topic:       topic,
		Key:         m.Key,
		Headers:     h,
		ContentType: m.ContentType,
		Data:        m.Data,
		Time:        m.Time,
	}
}
