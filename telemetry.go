package herald

import (
	"context"
	"errors"
	"sync"

	"github.com/heraldbus/herald/internal/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry. herald traces and measures with the OpenTelemetry API only;
// the application installs the SDK. By default it uses the global tracer
// and meter providers (otel.SetTracerProvider, otel.SetMeterProvider), so
// nothing is recorded until the application installs one, and it carries
// trace context in W3C traceparent/tracestate headers.
//
// Spans follow the OpenTelemetry messaging conventions:
//
//   - "send <topic>" (producer): one per Publish or PublishMessages call;
//     every message of the call carries its context.
//   - "create <topic>" (producer): one per AsyncPublisher.Publish, ended
//     when the messages are queued.
//   - "relay <topic>" (producer): one per outbox row forwarded by a relay,
//     a child of the span that wrote the row.
//   - "process <topic>" (consumer): one per delivery a subscriber handles,
//     a child of, and linked to, the span that sent the message. Retry
//     attempts ("herald.retry"), skipped duplicates ("herald.duplicate"),
//     dead-letter writes ("herald.dead_letter"), retry copies written for a
//     later round ("herald.retry_later") and changes of the
//     circuit breaker's state ("herald.breaker") are events on it.
//
// Metrics (attributes: messaging.system, messaging.operation.name,
// messaging.destination.name, messaging.consumer.group.name, and
// error.type or herald.outcome; never a message ID or key):
//
//   - messaging.client.sent.messages {message}: messages published
//     (error.type set when the write failed).
//   - messaging.process.duration (s): one run of a subscription's handler
//     chain per delivery, retries included.
//   - herald.messages.processed {message}: deliveries handled, by
//     herald.outcome: "ok" (acknowledged: handled, skipped as a duplicate
//     or dead-lettered), "error" (left for redelivery) or "skipped"
//     (acknowledged without a handler: an event type the group does not
//     handle, or a redrive addressed to another group).
//   - herald.messages.retried {attempt}, herald.messages.deduplicated
//     {message}, herald.messages.dead_lettered {message},
//     herald.messages.retried_later {message} (copies written by
//     WithRetryLater).
//   - herald.breaker.transitions {transition}: changes of state of a
//     subscription's circuit breaker (WithBreaker), by herald.breaker.state,
//     the state entered: "open", "half-open" or "closed".
//   - herald.consumer.lag {message}: per topic and group, where the driver
//     knows it (see LagReporter).
//   - the outbox relay's herald.outbox.* metrics (see package outbox).

// WithTracerProvider traces with tp instead of the global provider.
func WithTracerProvider(tp trace.TracerProvider) PublisherOption {
	return pubSet("WithTracerProvider", tp, func(o *pubOptions) { o.telemetry.TracerProvider = tp })
}

// WithMeterProvider measures with mp instead of the global provider.
func WithMeterProvider(mp metric.MeterProvider) PublisherOption {
	return pubSet("WithMeterProvider", mp, func(o *pubOptions) { o.telemetry.MeterProvider = mp })
}

// WithPropagator carries trace context with p instead of W3C trace context
// alone (for example otel.GetTextMapPropagator() to follow the
// application's global choice, baggage included).
func WithPropagator(p propagation.TextMapPropagator) PublisherOption {
	return pubSet("WithPropagator", p, func(o *pubOptions) { o.telemetry.Propagator = p })
}

// WithoutTelemetry turns tracing, metrics and trace-context propagation
// off: messages pass through with the trace headers they already carry.
func WithoutTelemetry() PublisherOption {
	return pubOption(func(o *pubOptions) { o.telemetry.Disabled = true })
}

// producerTelemetry is a Publisher's instruments.
type producerTelemetry struct {
	*telemetry.Providers
	send, create *telemetry.Destinations
	mixed        *telemetry.Destination // a call with several topics
	metrics      *telemetry.Instruments[producerInstruments]
}

type producerInstruments struct{ sent metric.Int64Counter }

func newProducerTelemetry(cfg telemetry.Config, w Writer) *producerTelemetry {
	p := cfg.Resolve()
	if p == nil {
		return nil
	}
	system := telemetry.System(w)
	return &producerTelemetry{
		Providers: p,
		send:      telemetry.NewDestinations(telemetry.Send, system, ""),
		create:    telemetry.NewDestinations(telemetry.Create, system, ""),
		mixed:     telemetry.NewDestination(telemetry.Send, system, "", ""),
		metrics: telemetry.NewInstruments(p, func(m metric.Meter) (*producerInstruments, []metric.Registration) {
			sent, err := m.Int64Counter("messaging.client.sent.messages",
				metric.WithUnit("{message}"), metric.WithDescription("Messages published."))
			telemetry.Handle(err)
			return &producerInstruments{sent: sent}, nil
		}),
	}
}

// start starts the producer span of one call that writes msgs and puts its
// context in their headers. Without a tracer it starts nothing (span is
// nil) but still passes on the span context ctx carries, if any.
func (t *producerTelemetry) start(ctx context.Context, dsts *telemetry.Destinations, msgs []*Message) (context.Context, trace.Span) {
	var span trace.Span
	if tracer := t.Tracer(); tracer != nil {
		dst := t.destination(dsts, msgs)
		ctx, span = tracer.Start(ctx, dst.SpanName, dst.Start...)
	}
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, span
	}
	for _, m := range msgs {
		m.Headers = t.Inject(ctx, m.Headers)
	}
	if span != nil && span.IsRecording() {
		if len(msgs) == 1 {
			m := msgs[0]
			span.SetAttributes(semconv.MessagingMessageID(m.ID), semconv.MessagingMessageBodySize(len(m.Data)))
		} else {
			span.SetAttributes(semconv.MessagingBatchMessageCount(len(msgs)))
		}
		if id := msgs[0].Headers.Get(HeaderCorrelationID); id != "" {
			span.SetAttributes(semconv.MessagingMessageConversationID(id))
		}
	}
	return ctx, span
}

// destination is the send or create destination of msgs: their topic, or
// none when they go to several.
func (t *producerTelemetry) destination(dsts *telemetry.Destinations, msgs []*Message) *telemetry.Destination {
	topic := msgs[0].Topic
	for _, m := range msgs[1:] {
		if m.Topic != topic {
			return t.mixed
		}
	}
	return dsts.Get(topic)
}

// count adds msgs to the sent counter.
func (t *producerTelemetry) count(ctx context.Context, msgs []*Message, err error) {
	in, ok := t.metrics.Get()
	if !ok {
		return
	}
	for i := 0; i < len(msgs); {
		j := i + 1
		for j < len(msgs) && msgs[j].Topic == msgs[i].Topic {
			j++
		}
		dst := t.send.Get(msgs[i].Topic)
		attrs := dst.OK
		if err != nil {
			attrs = dst.Failed
		}
		in.sent.Add(ctx, int64(j-i), attrs.Add...)
		i = j
	}
}

// write writes msgs with w inside a send span.
func (t *producerTelemetry) write(ctx context.Context, w Writer, msgs []*Message) error {
	ctx, span := t.start(ctx, t.send, msgs)
	err := w.Write(ctx, msgs)
	telemetry.EndSpan(span, err)
	t.count(ctx, msgs, err)
	return err
}

// consumerTelemetry is a Bus's subscriber instruments.
type consumerTelemetry struct {
	*telemetry.Providers
	system  attribute.KeyValue
	metrics *telemetry.Instruments[consumerInstruments]
}

type consumerInstruments struct {
	duration     metric.Float64Histogram
	processed    metric.Int64Counter
	retried      metric.Int64Counter
	deduplicated metric.Int64Counter
	deadLettered metric.Int64Counter
	retriedLater metric.Int64Counter
	breaker      metric.Int64Counter
}

// newConsumerTelemetry returns the instruments of a Bus reading r; the lag
// gauge asks scheds for the running subscriptions at each collection.
func newConsumerTelemetry(cfg telemetry.Config, r Reader, scheds func() []*scheduler) *consumerTelemetry {
	p := cfg.Resolve()
	if p == nil {
		return nil
	}
	t := &consumerTelemetry{Providers: p, system: telemetry.System(r)}
	t.metrics = telemetry.NewInstruments(p, func(m metric.Meter) (*consumerInstruments, []metric.Registration) {
		in := &consumerInstruments{}
		var errs [8]error
		in.duration, errs[0] = m.Float64Histogram("messaging.process.duration", metric.WithUnit("s"),
			metric.WithDescription("Duration of one run of a subscription's handler chain for a delivery, retries included."),
			metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
		in.processed, errs[1] = m.Int64Counter("herald.messages.processed", metric.WithUnit("{message}"),
			metric.WithDescription("Deliveries handled, by outcome: ok (acknowledged), error (left for redelivery) or skipped (not for this group)."))
		in.retried, errs[2] = m.Int64Counter("herald.messages.retried", metric.WithUnit("{attempt}"),
			metric.WithDescription("Handler attempts run again by the retry middleware."))
		in.deduplicated, errs[3] = m.Int64Counter("herald.messages.deduplicated", metric.WithUnit("{message}"),
			metric.WithDescription("Deliveries skipped because the group had already handled the message."))
		in.deadLettered, errs[4] = m.Int64Counter("herald.messages.dead_lettered", metric.WithUnit("{message}"),
			metric.WithDescription("Messages written to a dead-letter topic."))
		in.retriedLater, errs[7] = m.Int64Counter("herald.messages.retried_later", metric.WithUnit("{message}"),
			metric.WithDescription("Failed deliveries re-published as a delayed copy for a later round (WithRetryLater)."))
		in.breaker, errs[6] = m.Int64Counter("herald.breaker.transitions", metric.WithUnit("{transition}"),
			metric.WithDescription("Changes of state of subscriptions' circuit breakers, by the state entered (herald.breaker.state)."))
		var lag metric.Int64ObservableGauge
		lag, errs[5] = m.Int64ObservableGauge("herald.consumer.lag", metric.WithUnit("{message}"),
			metric.WithDescription("Messages of the topic the group has not acknowledged, where the driver knows it."))
		telemetry.Handle(errors.Join(errs[:]...))
		return in, []metric.Registration{t.observeLag(m, lag, scheds)}
	})
	// Register the lag gauge now if a provider is there already; with the
	// global provider, the first measurement after one is installed does.
	t.metrics.Get()
	return t
}

// subscription is the telemetry of one (topic, group). Its attribute
// sets are made at its first delivery: thousands of idle subscriptions
// carry none.
type subscriptionTelemetry struct {
	*consumerTelemetry
	topic, group string
	once         sync.Once
	attrs        *subscriptionAttrs
}

// subscriptionAttrs are the span and metric attributes of a subscription.
type subscriptionAttrs struct {
	dst                 *telemetry.Destination
	ok, failed, skipped telemetry.Attrs // herald.outcome
	plain               telemetry.Attrs // no outcome
}

func (t *consumerTelemetry) subscription(topic, group string) *subscriptionTelemetry {
	return &subscriptionTelemetry{consumerTelemetry: t, topic: topic, group: group}
}

// sets returns the subscription's attributes, making them on first use.
func (t *subscriptionTelemetry) sets() *subscriptionAttrs {
	t.once.Do(func() {
		dst := telemetry.NewDestination(telemetry.Process, t.system, t.topic, t.group)
		t.attrs = &subscriptionAttrs{
			dst:     dst,
			ok:      dst.With(telemetry.OutcomeKey.String("ok")),
			failed:  dst.With(telemetry.OutcomeKey.String("error")),
			skipped: dst.With(telemetry.OutcomeKey.String("skipped")),
			plain:   dst.With(),
		}
	})
	return t.attrs
}

// observeLag registers the callback of the lag gauge: at each collection
// it asks the running subscriptions whose driver knows its lag.
func (t *consumerTelemetry) observeLag(m metric.Meter, lag metric.Int64ObservableGauge, scheds func() []*scheduler) metric.Registration {
	reg, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		var errs []error
		for _, s := range scheds() {
			n, ok, err := s.Lag(ctx)
			switch {
			case err != nil:
				errs = append(errs, err)
			case ok:
				dst := telemetry.NewDestination(telemetry.Process, t.system, s.topic, s.group)
				o.ObserveInt64(lag, n, dst.With().Observe...)
			}
		}
		return errors.Join(errs...)
	}, lag)
	telemetry.Handle(err)
	return reg
}
