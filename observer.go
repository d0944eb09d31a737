package herald

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/heraldbus/herald/internal/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// HandleResult describes one run of a subscription's chain for a message.
type HandleResult struct {
	Topic    string
	Group    string
	Message  *Message
	Duration time.Duration
	// Err is what the chain returned: nil for handled, skipped duplicates
	// and dead-lettered messages alike (use the dedup and dead-letter
	// callbacks to tell those apart).
	Err error
	// Skipped says the group does not handle this message and acknowledged
	// it without running a handler: an event type the group has no handler
	// for on a shared topic, or a redrive addressed to another group.
	Skipped bool
}

// eventKind is what a built-in middleware reports about a delivery.
type eventKind uint8

const (
	eventRetry      eventKind = iota // an attempt is about to run again
	eventDuplicate                   // the delivery was skipped: already handled
	eventDeadLetter                  // the message was written to a dead-letter topic
	eventBreaker                     // the subscription's circuit breaker changed state
	eventRetryLater                  // a retry copy was written (WithRetryLater)
)

// event is one report of a built-in middleware. Attempt and Err describe
// a retry (the attempt about to run, the error of the one before) and a
// dead letter (Err is the reason); Topic is the dead-letter topic.
type event struct {
	kind     eventKind
	msg      *Message
	attempt  int
	err      error
	topic    string
	from, to BreakerState // eventBreaker; err is the failure that opened it
	due      time.Time    // eventRetryLater: when the copy is due; attempt is its round
}

// reporter receives the events of the middleware of one subscription,
// with the delivery's context (its span, its deadline). The middleware
// know nothing of telemetry or logs: the observer does.
type reporter func(ctx context.Context, e event)

// orNop returns r, or a reporter that drops everything when r is nil.
func (r reporter) orNop() reporter {
	if r == nil {
		return func(context.Context, event) {}
	}
	return r
}

// reporterKey holds the reporter of the subscription whose scheduler a
// context was started with (Bus.startRoute): every handler context of the
// subscription carries it, at no cost per delivery.
type reporterKey struct{}

// ReportDuplicate tells the subscription that ctx belongs to (a handler's
// context, or one derived from it) that m was skipped because it was
// already handled: the same span event ("herald.duplicate"), counter
// (herald.messages.deduplicated) and debug log line as a duplicate the
// dedup middleware (WithDedup) skips. It is for handlers and middleware
// that deduplicate on their own, such as sql/inbox, which then return
// nil to acknowledge m. Outside a Bus subscription's handler it does
// nothing.
func ReportDuplicate(ctx context.Context, m *Message) {
	if r, ok := ctx.Value(reporterKey{}).(reporter); ok && m != nil {
		r(ctx, event{kind: eventDuplicate, msg: m})
	}
}

// observer owns what one subscription (topic, group) tells the outside
// world about its deliveries: the consumer span, the metrics, the log
// lines and the handle hook. middleware is the outermost layer of the
// subscription's chain and settles each delivery's outcome; report turns
// the events of the middleware inside (retry, duplicate, dead letter)
// into span events, counters and log lines.
type observer struct {
	topic, group string
	logger       *slog.Logger
	hook         func(HandleResult)     // nil: none
	tel          *subscriptionTelemetry // nil: telemetry off
	epoch        time.Time              // durations are read as time.Since(epoch)
}

func newObserver(topic, group string, logger *slog.Logger, hook func(HandleResult), tel *subscriptionTelemetry) *observer {
	return &observer{topic: topic, group: group, logger: logger, hook: hook, tel: tel, epoch: time.Now()}
}

// middleware starts the consumer span of each delivery (a child of the
// span that sent the message, and linked to it), runs the chain, and
// records the outcome: duration and outcome metrics, a log line (a failure
// at warn level, the rest at debug) and the hook's HandleResult.
func (o *observer) middleware() Middleware {
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			ctx, span := o.tel.startSpan(ctx, m)
			// The instruments are taken before the chain runs: a Shutdown
			// that closes them while it runs must not lose its outcome.
			in := o.tel.instruments()
			start := time.Since(o.epoch) // the monotonic clock only: half a time.Now
			err := next(ctx, m)
			skipped := err == errSkipped
			level := o.level(ctx, err, skipped)
			logging := o.logger.Enabled(ctx, level)
			var took time.Duration // read the clock again only for someone who uses it
			if in != nil || o.hook != nil || logging {
				took = time.Since(o.epoch) - start
			}
			o.tel.settle(ctx, span, in, took, err, skipped)
			if logging {
				o.logAt(ctx, level, m, took, err, skipped)
			}
			if o.hook != nil {
				r := HandleResult{Topic: o.topic, Group: o.group, Message: m, Duration: took, Err: err, Skipped: skipped}
				if skipped {
					r.Err = nil
				}
				o.hook(r)
			}
			return err
		}
	}
}

// level is the level of one settled delivery's line. A failure is a
// warning unless it is no news: the delivery's context ended (shutdown),
// another delivery of the message holds its dedup claim, or (a batch) an
// earlier message of its key holds it back.
func (o *observer) level(ctx context.Context, err error, skipped bool) slog.Level {
	if err != nil && !skipped && ctx.Err() == nil && !errors.Is(err, ErrInProgress) && !heldBack(err) && !errors.Is(err, ErrHeldBehind) {
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// log writes the line of one settled delivery, if its level is enabled.
func (o *observer) log(ctx context.Context, m *Message, took time.Duration, err error, skipped bool) {
	if level := o.level(ctx, err, skipped); o.logger.Enabled(ctx, level) {
		o.logAt(ctx, level, m, took, err, skipped)
	}
}

// logAt writes the line of one settled delivery at level, which the
// logger has enabled.
func (o *observer) logAt(ctx context.Context, level slog.Level, m *Message, took time.Duration, err error, skipped bool) {
	attrs := []slog.Attr{slog.String("topic", o.topic), slog.String("group", o.group),
		slog.String("message_id", m.ID), slog.String("event", m.Event())}
	switch {
	case skipped:
		o.logger.LogAttrs(ctx, level, "herald: skipped, not for this group", attrs...)
	case err != nil:
		attempts := attemptsOf(err)
		o.logger.LogAttrs(ctx, level, "herald: handler failed", append(attrs,
			slog.Int("delivery", DeliveryCount(ctx)), slog.Int("attempts", attempts),
			slog.Duration("took", took), slog.Any("error", err))...)
	default:
		o.logger.LogAttrs(ctx, level, "herald: handled", append(attrs, slog.Duration("took", took))...)
	}
}

// report is the subscription's reporter: each event becomes a span event
// on the delivery's span, a counter and a log line.
func (o *observer) report(ctx context.Context, e event) {
	span := trace.SpanFromContext(ctx)
	recording := span.IsRecording()
	attrs := []slog.Attr{slog.String("topic", o.topic), slog.String("group", o.group), slog.String("message_id", e.msg.ID)}
	switch e.kind {
	case eventRetry:
		if recording {
			span.AddEvent("herald.retry", trace.WithAttributes(
				telemetry.AttemptKey.Int(e.attempt),
				semconv.ErrorTypeKey.String(telemetry.ErrorType(e.err)),
				attribute.String("herald.previous_error", e.err.Error())))
		}
		o.tel.count(ctx, retried)
		o.logger.LogAttrs(ctx, slog.LevelDebug, "herald: retrying", append(attrs,
			slog.Int("attempt", e.attempt), slog.Any("error", e.err))...)
	case eventDuplicate:
		if recording {
			span.AddEvent("herald.duplicate")
		}
		o.tel.count(ctx, deduplicated)
		o.logger.LogAttrs(ctx, slog.LevelDebug, "herald: duplicate skipped", attrs...)
	case eventDeadLetter:
		if recording {
			span.AddEvent("herald.dead_letter", trace.WithAttributes(
				attribute.String("herald.dead_letter.topic", e.topic),
				attribute.String("herald.dead_letter.reason", e.err.Error()),
				semconv.ErrorTypeKey.String(telemetry.ErrorType(e.err))))
		}
		o.tel.count(ctx, deadLettered)
		o.logger.LogAttrs(ctx, slog.LevelWarn, "herald: dead-lettered", append(attrs,
			slog.String("dead_letter_topic", e.topic), slog.Any("reason", e.err))...)
	case eventBreaker:
		o.breakerChanged(ctx, span, e, attrs)
	case eventRetryLater:
		if recording {
			span.AddEvent("herald.retry_later", trace.WithAttributes(
				attribute.Int("herald.retry.round", e.attempt),
				attribute.String("herald.retry.due", e.due.UTC().Format(time.RFC3339Nano)),
				semconv.ErrorTypeKey.String(telemetry.ErrorType(e.err)),
				attribute.String("herald.previous_error", e.err.Error())))
		}
		o.tel.count(ctx, retriedLater)
		o.logger.LogAttrs(ctx, slog.LevelInfo, "herald: retrying later", append(attrs,
			slog.Int("round", e.attempt), slog.Time("due", e.due), slog.Any("error", e.err))...)
	}
}

// startSpan starts the consumer span of a delivery. Without a tracer it
// only passes the sender's span context on (span is nil); t may be nil
// (telemetry off).
func (t *subscriptionTelemetry) startSpan(ctx context.Context, m *Message) (context.Context, trace.Span) {
	if t == nil {
		return ctx, nil
	}
	ctx, remote := t.Extract(ctx, m.Headers)
	tracer := t.Tracer()
	if tracer == nil {
		return ctx, nil
	}
	dst := t.sets().dst
	opts := dst.Start
	if remote.IsValid() {
		opts = append(opts[:len(opts):len(opts)], trace.WithLinks(trace.Link{SpanContext: remote}))
	}
	ctx, span := tracer.Start(ctx, dst.SpanName, opts...)
	if span.IsRecording() {
		t.describe(span, ctx, m)
	}
	return ctx, span
}

// instruments returns the instruments to record a delivery with, nil
// when not measuring; t may be nil.
func (t *subscriptionTelemetry) instruments() *consumerInstruments {
	if t == nil {
		return nil
	}
	in, _ := t.metrics.Get()
	return in
}

// settle ends a delivery's span and records its duration and outcome with
// in (nil: not measuring). A delivery skipped as not for the group counts
// as "skipped", without a duration. t may be nil.
func (t *subscriptionTelemetry) settle(ctx context.Context, span trace.Span, in *consumerInstruments, took time.Duration, err error, skipped bool) {
	if t == nil {
		return
	}
	measuring := in != nil
	if skipped {
		if measuring {
			in.processed.Add(ctx, 1, t.sets().skipped.Add...)
		}
		if span != nil {
			span.SetAttributes(telemetry.OutcomeKey.String("skipped"))
			span.End()
		}
		return
	}
	if measuring {
		sets := t.sets()
		dst, outcome := sets.dst.OK, sets.ok
		if err != nil {
			dst, outcome = sets.dst.Failed, sets.failed
		}
		in.duration.Record(ctx, took.Seconds(), dst.Record...)
		in.processed.Add(ctx, 1, outcome.Add...)
	}
	telemetry.EndSpan(span, err)
}

// describe sets the attributes of a recording consumer span that vary by
// message.
func (t *subscriptionTelemetry) describe(span trace.Span, ctx context.Context, m *Message) {
	span.SetAttributes(semconv.MessagingMessageID(m.ID), semconv.MessagingMessageBodySize(len(m.Data)),
		telemetry.DeliveryCountKey.Int(DeliveryCount(ctx)))
	if e := m.Event(); e != "" {
		span.SetAttributes(telemetry.EventKey.String(e))
	}
	if id := m.Headers.Get(HeaderCorrelationID); id != "" {
		span.SetAttributes(semconv.MessagingMessageConversationID(id))
	}
}

// count adds one to the counter which picks, when measuring. t may be
// nil.
func (t *subscriptionTelemetry) count(ctx context.Context, which func(*consumerInstruments) metric.Int64Counter) {
	if t == nil {
		return
	}
	if in, ok := t.metrics.Get(); ok {
		which(in).Add(ctx, 1, t.sets().plain.Add...)
	}
}

func retried(in *consumerInstruments) metric.Int64Counter      { return in.retried }
func deduplicated(in *consumerInstruments) metric.Int64Counter { return in.deduplicated }
func deadLettered(in *consumerInstruments) metric.Int64Counter { return in.deadLettered }
func retriedLater(in *consumerInstruments) metric.Int64Counter { return in.retriedLater }
