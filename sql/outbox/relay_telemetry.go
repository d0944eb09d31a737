package outbox

import (
	"context"
	"errors"
	"time"

	"github.com/heraldbus/herald/internal/telemetry"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Telemetry. A relay traces and measures with the OpenTelemetry API, with
// the global providers unless an option names others, like the Bus.
//
// Each row that carries trace context (the traceparent header a Publisher
// wrote into it) is forwarded inside a "relay <topic>" producer span, a
// child of the span that wrote the row, and the message leaves with that
// span's context: one trace runs from the writing transaction through the
// relay to the subscriber's "process" span. Rows without trace context are
// forwarded without a span, so an untraced producer does not turn the
// relay into a source of root spans.
//
// Metrics (attribute herald.outbox.table):
//
//   - herald.outbox.relayed {message}: rows delivered to the target by
//     this relay.
//   - herald.outbox.failures {write}: failed target writes.
//   - herald.outbox.quarantined {message}: rows moved to quarantine.
//   - herald.outbox.backlog {row}: rows waiting in the outbox table.
//   - herald.outbox.oldest_age (s): age of the oldest waiting row.
//   - herald.outbox.quarantine {row}: rows in the quarantine table.
//   - herald.outbox.active {relay}: 1 while this relay delivers, 0 on
//     standby.
//
// The last three come from Relay.Stats: two queries per collection, made
// by whichever relay (active or standby) is collected.

// WithTracerProvider traces with tp instead of the global provider.
func WithTracerProvider(tp trace.TracerProvider) RelayOption {
	return func(c *relayConfig) { c.Telemetry.TracerProvider = tp }
}

// WithMeterProvider measures with mp instead of the global provider.
func WithMeterProvider(mp metric.MeterProvider) RelayOption {
	return func(c *relayConfig) { c.Telemetry.MeterProvider = mp }
}

// WithPropagator reads and writes trace context with p instead of W3C
// trace context.
func WithPropagator(p propagation.TextMapPropagator) RelayOption {
	return func(c *relayConfig) { c.Telemetry.Propagator = p }
}

// WithoutTelemetry turns the relay's spans and metrics off; rows keep the
// trace headers they were written with.
func WithoutTelemetry() RelayOption {
	return func(c *relayConfig) { c.Telemetry.Disabled = true }
}

// relayTelemetry is a relay's tracer and instruments.
type relayTelemetry struct {
	*telemetry.Providers
	relay   *telemetry.Destinations
	attrs   []metric.ObserveOption
	metrics *telemetry.Instruments[struct{}] // the callback's registration
}

// newRelayTelemetry returns the telemetry of r; its observable
// instruments report r's counters and stats once follow has registered
// them with a provider.
func newRelayTelemetry(cfg telemetry.Config, r *Relay) *relayTelemetry {
	p := cfg.Resolve()
	if p == nil {
		return nil
	}
	t := &relayTelemetry{
		Providers: p,
		relay:     telemetry.NewDestinations(telemetry.Relay, telemetry.System(r.target), ""),
		attrs:     telemetry.NewAttrs(attribute.String("herald.outbox.table", r.t.name)).Observe,
	}
	t.metrics = telemetry.NewInstruments(p, func(m metric.Meter) (*struct{}, []metric.Registration) {
		return &struct{}{}, []metric.Registration{t.observe(m, r)}
	})
	return t
}

// follow registers the relay's instruments with the meter provider in use
// now, again when the application has installed another global one. The
// relay calls it as it goes, at least every poll interval.
func (t *relayTelemetry) follow() {
	if t != nil {
		t.metrics.Get()
	}
}

// stop drops the registration.
func (t *relayTelemetry) stop() {
	if t != nil {
		t.metrics.Close()
	}
}

// observe makes the relay's instruments with m and registers the callback
// that reports r's counters and stats.
func (t *relayTelemetry) observe(m metric.Meter, r *Relay) metric.Registration {
	var errs [8]error
	var relayed, failures, quarantined metric.Int64ObservableCounter
	var backlog, quarantine, active metric.Int64ObservableGauge
	var oldestAge metric.Float64ObservableGauge
	relayed, errs[0] = m.Int64ObservableCounter("herald.outbox.relayed", metric.WithUnit("{message}"),
		metric.WithDescription("Outbox rows delivered to the target by this relay."))
	failures, errs[1] = m.Int64ObservableCounter("herald.outbox.failures", metric.WithUnit("{write}"),
		metric.WithDescription("Failed target writes of this relay."))
	quarantined, errs[2] = m.Int64ObservableCounter("herald.outbox.quarantined", metric.WithUnit("{message}"),
		metric.WithDescription("Outbox rows this relay moved to the quarantine table."))
	backlog, errs[3] = m.Int64ObservableGauge("herald.outbox.backlog", metric.WithUnit("{row}"),
		metric.WithDescription("Rows waiting in the outbox table."))
	quarantine, errs[4] = m.Int64ObservableGauge("herald.outbox.quarantine", metric.WithUnit("{row}"),
		metric.WithDescription("Rows in the outbox's quarantine table."))
	oldestAge, errs[5] = m.Float64ObservableGauge("herald.outbox.oldest_age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest row waiting in the outbox table."))
	active, errs[7] = m.Int64ObservableGauge("herald.outbox.active", metric.WithUnit("{relay}"),
		metric.WithDescription("1 while this relay holds the table's lock and delivers, 0 on standby."))
	var reg metric.Registration
	reg, errs[6] = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		var isActive int64
		if r.active.Load() {
			isActive = 1
		}
		o.ObserveInt64(active, isActive, t.attrs...)
		o.ObserveInt64(relayed, int64(r.sent.Load()), t.attrs...)
		o.ObserveInt64(failures, int64(r.failures.Load()), t.attrs...)
		o.ObserveInt64(quarantined, int64(r.quarantined.Load()), t.attrs...)
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := r.Stats(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(backlog, st.Backlog, t.attrs...)
		o.ObserveInt64(quarantine, st.Quarantine, t.attrs...)
		o.ObserveFloat64(oldestAge, st.OldestAge.Seconds(), t.attrs...)
		return nil
	}, relayed, failures, quarantined, backlog, quarantine, oldestAge, active)
	telemetry.Handle(errors.Join(errs[:]...))
	return reg
}

// start starts the relay span of each row that carries trace context and
// puts the span's context in the row's headers; it returns the spans
// (nil where a row has none), or nil when no row has one.
func (t *relayTelemetry) start(ctx context.Context, rows []*row) []trace.Span {
	tracer := t.Tracer()
	if tracer == nil {
		return nil // rows keep the trace context they were written with
	}
	var spans []trace.Span
	for i, rw := range rows {
		if !rw.traceRead {
			// Read once: a retried row's headers carry the relay span of
			// the failed attempt, and its new span belongs under the
			// writer's span like the first one.
			_, rw.traceParent = t.Extract(ctx, rw.msg.Headers)
			rw.traceRead = true
		}
		if !rw.traceParent.IsValid() {
			continue
		}
		dst := t.relay.Get(rw.msg.Topic)
		parent := trace.ContextWithRemoteSpanContext(ctx, rw.traceParent)
		sctx, span := tracer.Start(parent, dst.SpanName, dst.Start...)
		t.Inject(sctx, rw.msg.Headers)
		if spans == nil {
			spans = make([]trace.Span, len(rows))
		}
		spans[i] = span
	}
	return spans
}

// end ends spans with the write's outcome.
func endSpans(spans []trace.Span, err error) {
	for _, s := range spans {
		if s != nil {
			telemetry.EndSpan(s, err)
		}
	}
}
