// Package telemetry holds what herald's packages share for OpenTelemetry:
// resolving the providers, the header carrier, attribute and span-name
// caches, and the names of spans, metrics and attributes. It uses the
// OpenTelemetry API only; the application brings the SDK.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of herald's tracers and meters.
const ScopeName = "github.com/heraldbus/herald"

// Attribute keys herald adds to the messaging semantic conventions.
const (
	OutcomeKey       = attribute.Key("herald.outcome")
	DeliveryCountKey = attribute.Key("herald.delivery.count")
	AttemptKey       = attribute.Key("herald.attempt")
	EventKey         = attribute.Key("herald.event")
)

// Config says which providers to use. A nil provider means the global one
// (otel.GetTracerProvider, otel.GetMeterProvider), which forwards to
// whatever the application installs, even later; a nil propagator means
// W3C trace context. Disabled turns every instrument off.
type Config struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
	Disabled       bool
}

// Providers are resolved providers with herald's tracer and meter.
//
// The global providers are followed at each use, so an application may
// install its SDK after creating a Bus. Until it installs one, and with an
// explicit no-op provider, Tracer returns nil and Measuring false: herald
// then starts no span and takes no measurement, which is what makes
// telemetry free on the hot path of an application that does not use it.
// Trace context in messages still travels (see Inject and Extract).
type Providers struct {
	Propagator propagation.TextMapPropagator
	fields     []string // the headers Propagator reads (Fields)

	tracer      trace.Tracer // an explicit provider's tracer; nil when no-op
	globalTrace bool         // follow otel.GetTracerProvider
	cached      atomic.Pointer[globalTracer]
	meter       metric.MeterProvider // an explicit provider that is not a no-op
	globalMeter bool                 // follow otel.GetMeterProvider
}

type globalTracer struct {
	tp     trace.TracerProvider
	tracer trace.Tracer
}

// uninstalledTP and uninstalledMP are the global providers as OpenTelemetry
// starts: delegates that record nothing until the application installs a
// provider, when otel.Get*Provider starts returning that provider instead.
// If an application installed one before this package was initialized,
// they are nil and every global provider counts as installed.
var (
	uninstalledTP = uninstalled(otel.GetTracerProvider())
	uninstalledMP = uninstalled(otel.GetMeterProvider())
)

func uninstalled[P any](p P) any {
	if fmt.Sprintf("%T", p) == "*global.tracerProvider" || fmt.Sprintf("%T", p) == "*global.meterProvider" {
		return p
	}
	return nil
}

// Resolve returns the providers of c, or nil when telemetry is disabled.
func (c Config) Resolve() *Providers {
	if c.Disabled {
		return nil
	}
	p := &Providers{Propagator: c.Propagator}
	if p.Propagator == nil {
		p.Propagator = propagation.TraceContext{}
	}
	p.fields = p.Propagator.Fields()
	switch tp := c.TracerProvider.(type) {
	case nil:
		p.globalTrace = true
	case tracenoop.TracerProvider:
	default:
		p.tracer = tp.Tracer(ScopeName)
	}
	switch mp := c.MeterProvider.(type) {
	case nil:
		p.globalMeter = true
	case metricnoop.MeterProvider:
	default:
		p.meter = mp
	}
	return p
}

// Tracer returns the tracer to start spans with, or nil when spans would
// record nothing.
func (p *Providers) Tracer() trace.Tracer {
	if !p.globalTrace {
		return p.tracer
	}
	tp := otel.GetTracerProvider()
	if tp == uninstalledTP {
		return nil
	}
	if _, noop := tp.(tracenoop.TracerProvider); noop {
		return nil
	}
	if c := p.cached.Load(); c != nil && c.tp == tp {
		return c.tracer
	}
	c := &globalTracer{tp: tp, tracer: tp.Tracer(ScopeName)}
	p.cached.Store(c)
	return c.tracer
}

// meterProvider returns the provider measurements go to now: the explicit
// one, or the global one as installed at this moment; nil when nothing
// would record (no provider installed, or a no-op one).
func (p *Providers) meterProvider() metric.MeterProvider {
	if !p.globalMeter {
		return p.meter
	}
	mp := otel.GetMeterProvider()
	if _, noop := mp.(metricnoop.MeterProvider); noop || mp == uninstalledMP {
		return nil
	}
	return mp
}

// Measuring reports whether measurements reach a meter provider.
func (p *Providers) Measuring() bool { return p.meterProvider() != nil }

// Instruments are a component's metric instruments, T, made with the meter
// provider its measurements go to. With the global provider they follow
// it like the tracer does: when the application installs another, Get
// makes them again with that one (and registers their callbacks there,
// dropping the old registrations). Safe for concurrent use.
type Instruments[T any] struct {
	p     *Providers
	build func(m metric.Meter) (*T, []metric.Registration)

	cur    atomic.Pointer[made[T]]
	mu     sync.Mutex // held while making
	closed bool
}

type made[T any] struct {
	mp   metric.MeterProvider
	v    *T
	regs []metric.Registration
}

// NewInstruments returns instruments that build makes with a meter of
// herald's scope; build also registers the callbacks of observable
// instruments and returns their registrations.
func NewInstruments[T any](p *Providers, build func(m metric.Meter) (*T, []metric.Registration)) *Instruments[T] {
	return &Instruments[T]{p: p, build: build}
}

// Get returns the instruments to measure with now, or false when nothing
// would record. It is one atomic load while the provider stays the same.
func (in *Instruments[T]) Get() (*T, bool) {
	mp := in.p.meterProvider()
	if mp == nil {
		return nil, false
	}
	if m := in.cur.Load(); m != nil && m.mp == mp {
		return m.v, true
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if m := in.cur.Load(); m != nil && m.mp == mp {
		return m.v, true
	}
	if in.closed {
		return nil, false
	}
	if old := in.cur.Load(); old != nil {
		unregister(old.regs)
	}
	v, regs := in.build(mp.Meter(ScopeName))
	in.cur.Store(&made[T]{mp: mp, v: v, regs: regs})
	return v, true
}

// Close drops the callbacks' registrations; Get reports false afterwards.
func (in *Instruments[T]) Close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closed = true
	if m := in.cur.Swap(nil); m != nil {
		unregister(m.regs)
	}
}

func unregister(regs []metric.Registration) {
	for _, r := range regs {
		if r != nil {
			Handle(r.Unregister())
		}
	}
}

// Carrier adapts message headers to a propagation.TextMapCarrier.
type Carrier map[string]string

// Get returns the value of key.
func (c Carrier) Get(key string) string { return c[key] }

// Set sets key to value.
func (c Carrier) Set(key, value string) { c[key] = value }

// Keys lists the keys.
func (c Carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the span context of ctx into headers, which it creates when
// nil, and returns them. It does nothing when ctx carries no valid span
// context, so an untraced message carries no trace headers.
func (p *Providers) Inject(ctx context.Context, headers map[string]string) map[string]string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return headers
	}
	if headers == nil {
		headers = make(map[string]string, 2)
	}
	p.Propagator.Inject(ctx, Carrier(headers))
	return headers
}

// Extract returns ctx with the remote span context carried in headers, if
// any, and that span context. Headers with none of the propagator's
// fields (an untraced message) return ctx as it is, without the
// propagator's work and a lookup of ctx.
func (p *Providers) Extract(ctx context.Context, headers map[string]string) (context.Context, trace.SpanContext) {
	if !p.carried(headers) {
		return ctx, trace.SpanContext{}
	}
	ctx = p.Propagator.Extract(ctx, Carrier(headers))
	return ctx, trace.SpanContextFromContext(ctx)
}

// carried reports whether headers hold any of the propagator's fields.
func (p *Providers) carried(headers map[string]string) bool {
	for _, f := range p.fields {
		if _, ok := headers[f]; ok {
			return true
		}
	}
	return false
}

// System returns the messaging.system attribute of a writer or reader that
// names its broker (see herald.MessagingSystem), or "herald".
func System(v any) attribute.KeyValue {
	if s, ok := v.(interface{ MessagingSystem() string }); ok {
		if name := s.MessagingSystem(); name != "" {
			return semconv.MessagingSystemKey.String(name)
		}
	}
	return semconv.MessagingSystemKey.String("herald")
}

// Operation is a messaging operation: its name in span names and
// messaging.operation.name, and its messaging.operation.type.
type Operation struct {
	Name string
	Type attribute.KeyValue
	Kind trace.SpanKind
}

// The operations herald traces.
var (
	Send    = Operation{"send", semconv.MessagingOperationTypeSend, trace.SpanKindProducer}
	Create  = Operation{"create", semconv.MessagingOperationTypeCreate, trace.SpanKindProducer}
	Relay   = Operation{"relay", semconv.MessagingOperationTypeSend, trace.SpanKindProducer}
	Process = Operation{"process", semconv.MessagingOperationTypeProcess, trace.SpanKindConsumer}
)

// Destination is what a span of one operation on one topic (and group)
// starts with, computed once: the span name, the start options and the
// metric attribute options for success and failure.
type Destination struct {
	SpanName string
	Start    []trace.SpanStartOption
	Attrs    []attribute.KeyValue
	// MetricAttrs are the attributes of its measurements: Attrs without
	// messaging.operation.type.
	MetricAttrs []attribute.KeyValue
	OK          Attrs // attributes of a successful operation
	Failed      Attrs // the same with error.type = "_OTHER"
}

// Attrs are one attribute set as ready-made measurement options: passing
// a prepared slice to a variadic interface method allocates nothing.
type Attrs struct {
	Add     []metric.AddOption
	Record  []metric.RecordOption
	Observe []metric.ObserveOption
}

// NewAttrs returns the options of the set of attrs.
func NewAttrs(attrs ...attribute.KeyValue) Attrs {
	o := metric.WithAttributeSet(attribute.NewSet(attrs...))
	return Attrs{Add: []metric.AddOption{o}, Record: []metric.RecordOption{o}, Observe: []metric.ObserveOption{o}}
}

// NewDestination returns the destination of op on topic for group ("" for
// a producer) in system.
func NewDestination(op Operation, system attribute.KeyValue, topic, group string) *Destination {
	attrs := []attribute.KeyValue{system, semconv.MessagingOperationName(op.Name), op.Type}
	name := op.Name
	if topic != "" {
		attrs = append(attrs, semconv.MessagingDestinationName(topic))
		name += " " + topic
	}
	if group != "" {
		attrs = append(attrs, semconv.MessagingConsumerGroupName(group))
	}
	metricAttrs := []attribute.KeyValue{system, semconv.MessagingOperationName(op.Name)}
	if topic != "" {
		metricAttrs = append(metricAttrs, semconv.MessagingDestinationName(topic))
	}
	if group != "" {
		metricAttrs = append(metricAttrs, semconv.MessagingConsumerGroupName(group))
	}
	return &Destination{
		SpanName:    name,
		Start:       []trace.SpanStartOption{trace.WithSpanKind(op.Kind), trace.WithAttributes(attrs...)},
		Attrs:       attrs,
		MetricAttrs: metricAttrs,
		OK:          NewAttrs(metricAttrs...),
		Failed:      NewAttrs(append(metricAttrs[:len(metricAttrs):len(metricAttrs)], semconv.ErrorTypeOther)...),
	}
}

// With returns the destination's metric attributes plus extra.
func (d *Destination) With(extra ...attribute.KeyValue) Attrs {
	return NewAttrs(append(d.MetricAttrs[:len(d.MetricAttrs):len(d.MetricAttrs)], extra...)...)
}

// Destinations caches destinations by topic for one operation and group.
// It holds at most maxCached topics; past that it computes them each time.
type Destinations struct {
	op     Operation
	system attribute.KeyValue
	group  string
	m      sync.Map // topic -> *Destination
	n      int      // guarded by mu
	mu     sync.Mutex
}

const maxCached = 4096

// NewDestinations returns an empty cache.
func NewDestinations(op Operation, system attribute.KeyValue, group string) *Destinations {
	return &Destinations{op: op, system: system, group: group}
}

// Get returns the destination of topic.
func (d *Destinations) Get(topic string) *Destination {
	if v, ok := d.m.Load(topic); ok {
		return v.(*Destination)
	}
	dst := NewDestination(d.op, d.system, topic, d.group)
	d.mu.Lock()
	if d.n < maxCached {
		d.n++
		d.m.Store(topic, dst)
	}
	d.mu.Unlock()
	return dst
}

// Handle passes an instrument-creation error to OpenTelemetry's error
// handler; a nil error is ignored.
func Handle(err error) {
	if err != nil {
		otel.Handle(err)
	}
}

// EndSpan sets the span's status from err and ends it; a nil span is
// ignored.
func EndSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(ErrorType(err)))
	}
	span.End()
}

// ErrorType names err for the error.type attribute: its Go type, which
// has bounded cardinality, unlike its text. Wrapping by fmt.Errorf says
// nothing, so it names what %w wrapped.
func ErrorType(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	for {
		t := fmt.Sprintf("%T", err)
		next := errors.Unwrap(err)
		if t != "*fmt.wrapError" || next == nil {
			return t
		}
		err = next
	}
}
