package herald_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdedup"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// otelHarness is a Bus option set that records spans and metrics with the
// OpenTelemetry SDK's in-memory exporter and manual reader.
type otelHarness struct {
	spans  *tracetest.InMemoryExporter
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newOTelHarness(t *testing.T) *otelHarness {
	h := &otelHarness{spans: tracetest.NewInMemoryExporter(), reader: sdkmetric.NewManualReader()}
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSyncer(h.spans))
	h.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	t.Cleanup(func() {
		_ = h.tp.Shutdown(context.Background())
		_ = h.mp.Shutdown(context.Background())
	})
	return h
}

func (h *otelHarness) options() []herald.Option {
	return []herald.Option{herald.WithTracerProvider(h.tp), herald.WithMeterProvider(h.mp)}
}

func (h *otelHarness) span(t *testing.T, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range h.spans.GetSpans() {
		if s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one span %q, have %d among %v", name, len(found), spanNames(h.spans.GetSpans()))
	}
	return found[0]
}

// exemplarTraces returns the trace IDs of the exemplars of the counter
// name: the traces whose context its measurements were made in.
func (h *otelHarness) exemplarTraces(t *testing.T, name string) []trace.TraceID {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var ids []trace.TraceID
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if data, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range data.DataPoints {
					for _, e := range dp.Exemplars {
						ids = append(ids, trace.TraceID(e.TraceID))
					}
				}
			}
		}
	}
	return ids
}

func spanNames(spans tracetest.SpanStubs) []string {
	var names []string
	for _, s := range spans {
		names = append(names, s.Name)
	}
	return names
}

// sum returns the value of the counter name at the data point whose
// attributes include every one of want (0 when there is none).
func (h *otelHarness) sum(t *testing.T, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range data.DataPoints {
					if hasAll(dp.Attributes, want) {
						total += dp.Value
					}
				}
			case metricdata.Gauge[int64]:
				for _, dp := range data.DataPoints {
					if hasAll(dp.Attributes, want) {
						total += dp.Value
					}
				}
			case metricdata.Histogram[float64]:
				for _, dp := range data.DataPoints {
					if hasAll(dp.Attributes, want) {
						total += int64(dp.Count)
					}
				}
			default:
				t.Fatalf("metric %s has unexpected type %T", name, m.Data)
			}
		}
	}
	return total
}

func hasAll(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

func attr(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t *testing.T, s tracetest.SpanStub, key, want string) {
	t.Helper()
	if v, ok := attr(s, key); !ok || v.String() != want {
		t.Errorf("span %q: %s = %q (present %v), want %q", s.Name, key, v.String(), ok, want)
	}
}

func TestTelemetryTraceFromPublishToHandler(t *testing.T) {
	h := newOTelHarness(t)
	bus, _ := newTestBus(t, h.options()...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	var calls atomic.Int32
	handled := make(chan trace.SpanContext, 1)
	must(t, herald.Subscribe(bus, "billing", func(ctx context.Context, _ OrderPlaced, m *herald.Message) error {
		if calls.Add(1) == 1 {
			return errors.New("flaky")
		}
		handled <- trace.SpanContextFromContext(ctx)
		return nil
	}, herald.WithRetry(herald.RetryConfig{InitialBackoff: time.Millisecond})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))

	// The publisher's caller has a span of its own: everything below is in
	// its trace.
	root, rootSpan := h.tp.Tracer("test").Start(ctx, "place order")
	must(t, bus.Publish(herald.WithCorrelationID(root, "corr-1"), OrderPlaced{ID: "1"}))
	rootSpan.End()
	var inHandler trace.SpanContext
	select {
	case inHandler = <-handled:
	case <-ctx.Done():
		t.Fatal("not handled")
	}
	must(t, bus.Shutdown(ctx))

	send := h.span(t, "send orders")
	process := h.span(t, "process orders")
	parent := h.span(t, "place order")
	if send.Parent.SpanID() != parent.SpanContext.SpanID() || send.SpanKind != trace.SpanKindProducer {
		t.Errorf("send span: parent %v kind %v, want child of the caller's span, producer", send.Parent.SpanID(), send.SpanKind)
	}
	if process.Parent.SpanID() != send.SpanContext.SpanID() || process.SpanKind != trace.SpanKindConsumer {
		t.Errorf("process span: parent %v kind %v, want child of the send span, consumer", process.Parent.SpanID(), process.SpanKind)
	}
	if process.SpanContext.TraceID() != parent.SpanContext.TraceID() {
		t.Error("process span is not in the publisher's trace")
	}
	if len(process.Links) != 1 || process.Links[0].SpanContext.SpanID() != send.SpanContext.SpanID() {
		t.Errorf("process span links %v, want the send span", process.Links)
	}
	if inHandler.SpanID() != process.SpanContext.SpanID() {
		t.Error("the handler's context does not carry the process span")
	}
	wantAttr(t, send, "messaging.operation.name", "send")
	wantAttr(t, send, "messaging.operation.type", "send")
	wantAttr(t, send, "messaging.destination.name", "orders")
	wantAttr(t, send, "messaging.message.conversation_id", "corr-1")
	wantAttr(t, process, "messaging.operation.type", "process")
	wantAttr(t, process, "messaging.consumer.group.name", "billing")
	wantAttr(t, process, "messaging.system", "herald.memory")
	if v, _ := attr(process, "messaging.message.id"); v.AsString() == "" {
		t.Error("process span has no message id")
	}
	var retries int
	for _, e := range process.Events {
		if e.Name == "herald.retry" {
			retries++
		}
	}
	if retries != 1 {
		t.Errorf("process span has %d herald.retry events, want 1: %v", retries, process.Events)
	}

	system := attribute.String("messaging.system", "herald.memory")
	topic := attribute.String("messaging.destination.name", "orders")
	group := attribute.String("messaging.consumer.group.name", "billing")
	for _, c := range []struct {
		name string
		want int64
		with []attribute.KeyValue
	}{
		{"messaging.client.sent.messages", 1, []attribute.KeyValue{system, topic}},
		{"herald.messages.processed", 1, []attribute.KeyValue{topic, group, attribute.String("herald.outcome", "ok")}},
		{"herald.messages.processed", 0, []attribute.KeyValue{attribute.String("herald.outcome", "error")}},
		{"herald.messages.retried", 1, []attribute.KeyValue{topic, group}},
		{"messaging.process.duration", 1, []attribute.KeyValue{topic, group}},
		{"herald.messages.dead_lettered", 0, nil},
	} {
		if got := h.sum(t, c.name, c.with...); got != c.want {
			t.Errorf("%s%v = %d, want %d", c.name, c.with, got, c.want)
		}
	}
}

func TestTelemetryDeadLetterAndDuplicate(t *testing.T) {
	h := newOTelHarness(t)
	bus, _ := newTestBus(t, h.options()...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	store, err := memdedup.New(testContext(t))
	must(t, err)
	var calls atomic.Int32
	must(t, herald.Subscribe(bus, "billing", func(_ context.Context, e OrderPlaced, _ *herald.Message) error {
		calls.Add(1)
		if e.ID == "bad" {
			return herald.Permanent(errors.New("no such customer"))
		}
		return nil
	}, herald.WithDeadLetter(), herald.WithDedup(store)))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	good, err := bus.Publisher().Encode(ctx, OrderPlaced{ID: "good"})
	must(t, err)
	must(t, bus.PublishMessages(ctx, good[0]))
	must(t, bus.PublishMessages(ctx, good[0].Clone())) // same ID: a duplicate
	must(t, bus.Publish(ctx, OrderPlaced{ID: "bad"}))
	eventually(t, "three deliveries settled", func() bool {
		return h.sum(t, "herald.messages.processed") == 3
	})
	must(t, bus.Shutdown(ctx))
	if calls.Load() != 2 {
		t.Errorf("handler ran %d times, want 2 (the duplicate skipped)", calls.Load())
	}
	var dups, dead int
	for _, s := range h.spans.GetSpans() {
		for _, e := range s.Events {
			switch e.Name {
			case "herald.duplicate":
				dups++
			case "herald.dead_letter":
				dead++
				for _, kv := range e.Attributes {
					if kv.Key == "herald.dead_letter.topic" && kv.Value.AsString() != "orders.dlq" {
						t.Errorf("dead-letter event names topic %q", kv.Value.AsString())
					}
				}
			}
		}
	}
	if dups != 1 || dead != 1 {
		t.Errorf("%d herald.duplicate and %d herald.dead_letter events, want 1 and 1", dups, dead)
	}
	if got := h.sum(t, "herald.messages.deduplicated"); got != 1 {
		t.Errorf("deduplicated = %d, want 1", got)
	}
	if got := h.sum(t, "herald.messages.dead_lettered", attribute.String("messaging.destination.name", "orders")); got != 1 {
		t.Errorf("dead_lettered = %d, want 1", got)
	}
	if got := h.sum(t, "herald.messages.processed", attribute.String("herald.outcome", "ok")); got != 3 {
		t.Errorf("processed ok = %d, want 3", got)
	}
	// The counters are recorded in the delivery's context: their
	// exemplars point at the process spans' traces.
	traces := map[trace.TraceID]bool{}
	for _, s := range h.spans.GetSpans() {
		traces[s.SpanContext.TraceID()] = true
	}
	for _, name := range []string{"herald.messages.deduplicated", "herald.messages.dead_lettered"} {
		ids := h.exemplarTraces(t, name)
		if len(ids) == 0 {
			t.Errorf("%s has no exemplar: recorded outside the delivery's trace", name)
		}
		for _, id := range ids {
			if !traces[id] {
				t.Errorf("%s exemplar in trace %s, which no recorded span has", name, id)
			}
		}
	}
}

func TestTelemetryFailedPublishAndHandler(t *testing.T) {
	h := newOTelHarness(t)
	failing := &recordingWriter{failures: 1}
	bus, _ := newTestBus(t, append(h.options(), herald.WithPublishWriter(failing))...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	if err := bus.Publish(context.Background(), OrderPlaced{ID: "1"}); err == nil {
		t.Fatal("publish through a failing writer succeeded")
	}
	send := h.span(t, "send orders")
	if send.Status.Code.String() != "Error" {
		t.Errorf("send span status %v, want Error", send.Status)
	}
	if got := h.sum(t, "messaging.client.sent.messages", attribute.String("error.type", "_OTHER")); got != 1 {
		t.Errorf("failed sends = %d, want 1", got)
	}
}

func TestWithoutTelemetryCarriesNoTraceHeaders(t *testing.T) {
	h := newOTelHarness(t)
	w := &recordingWriter{}
	bus, _ := newTestBus(t, append(h.options(), herald.WithoutTelemetry(), herald.WithPublishWriter(w))...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	ctx, span := h.tp.Tracer("test").Start(context.Background(), "caller")
	must(t, bus.Publish(ctx, OrderPlaced{ID: "1"}))
	span.End()
	if got := w.all()[0].Headers.Get("traceparent"); got != "" {
		t.Errorf("traceparent %q without telemetry", got)
	}
	if names := spanNames(h.spans.GetSpans()); len(names) != 1 {
		t.Errorf("spans %v, want only the caller's", names)
	}
	// With telemetry, the header is there.
	bus2, _ := newTestBus(t, append(h.options(), herald.WithPublishWriter(w))...)
	herald.MustRegister[OrderPlaced](bus2, "orders")
	must(t, bus2.Publish(ctx, OrderPlaced{ID: "2"}))
	if got := w.all()[1].Headers.Get("traceparent"); got == "" {
		t.Error("no traceparent with telemetry on")
	}
}

// TestTelemetryFollowsGlobalProviders checks the default: a Bus made before
// the application installs its providers records nothing and carries only
// the trace context it is given, and starts recording once they are
// installed.
func TestTelemetryFollowsGlobalProviders(t *testing.T) {
	w := &recordingWriter{}
	bus, _ := newTestBus(t, herald.WithPublishWriter(w))
	herald.MustRegister[OrderPlaced](bus, "orders")
	must(t, bus.Publish(context.Background(), OrderPlaced{ID: "1"}))
	if got := w.all()[0].Headers.Get("traceparent"); got != "" {
		t.Errorf("traceparent %q with no provider and no span in the context", got)
	}
	// A span context from elsewhere (another service's request) travels
	// on even with no provider installed.
	remote := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true})
	must(t, bus.Publish(trace.ContextWithRemoteSpanContext(context.Background(), remote), OrderPlaced{ID: "2"}))
	if got, want := w.all()[1].Headers.Get("traceparent"), "00-01000000000000000000000000000000-0200000000000000-01"; got != want {
		t.Errorf("traceparent %q, want the caller's %q", got, want)
	}

	h := newOTelHarness(t)
	otel.SetTracerProvider(h.tp)
	otel.SetMeterProvider(h.mp)
	t.Cleanup(func() {
		otel.SetTracerProvider(tracenoop.NewTracerProvider())
		otel.SetMeterProvider(metricnoop.NewMeterProvider())
	})
	must(t, bus.Publish(context.Background(), OrderPlaced{ID: "3"}))
	h.span(t, "send orders")
	if got := h.sum(t, "messaging.client.sent.messages"); got != 1 {
		t.Errorf("sent = %d after installing a meter provider, want 1", got)
	}
	if got := w.all()[2].Headers.Get("traceparent"); got == "" {
		t.Error("no traceparent once a provider is installed")
	}
	// An application that replaces its providers: the Bus follows the
	// new ones too (the test's cleanup, and a second run of it, does this).
	next := newOTelHarness(t)
	otel.SetTracerProvider(next.tp)
	otel.SetMeterProvider(next.mp)
	must(t, bus.Publish(context.Background(), OrderPlaced{ID: "4"}))
	next.span(t, "send orders")
	if got := next.sum(t, "messaging.client.sent.messages"); got != 1 {
		t.Errorf("sent = %d with the second provider installed, want 1", got)
	}
}

func TestTelemetryAsyncPublisher(t *testing.T) {
	h := newOTelHarness(t)
	w := &recordingWriter{}
	p, err := herald.NewPublisher(w, herald.WithTracerProvider(h.tp), herald.WithMeterProvider(h.mp))
	if err != nil {
		t.Fatal(err)
	}
	herald.MustRegister[OrderPlaced](p, "orders")
	ap, err := herald.NewAsyncPublisher(p, herald.AsyncConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	must(t, ap.Publish(ctx, OrderPlaced{ID: "1"}))
	must(t, ap.Close(ctx))
	create := h.span(t, "create orders")
	wantAttr(t, create, "messaging.operation.type", "create")
	if got := w.all()[0].Headers.Get("traceparent"); !strings.Contains(got, create.SpanContext.SpanID().String()) {
		t.Errorf("traceparent %q does not name the create span", got)
	}
	if got := h.sum(t, "messaging.client.sent.messages"); got != 1 {
		t.Errorf("sent = %d, want 1", got)
	}
}

// A group that handles one of a shared topic's event types acknowledges
// the others without running a handler: they are counted and seen by the
// handle hook with outcome skipped, so an operator can see a producer
// sending types nobody consumes.
func TestSkippedEventTypesAreCounted(t *testing.T) {
	h := newOTelHarness(t)
	var mu sync.Mutex
	var results []herald.HandleResult
	bus, _ := newTestBus(t, append(h.options(), herald.WithHandleHook(func(r herald.HandleResult) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}))...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	herald.MustRegister[OrderShipped](bus, "orders")
	var shipped atomic.Int32
	must(t, herald.Subscribe(bus, "tracking", func(context.Context, OrderShipped, *herald.Message) error {
		shipped.Add(1)
		return nil
	}))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "1"}, OrderShipped{ID: "1"}, OrderPlaced{ID: "2"}))
	eventually(t, "three deliveries settled", func() bool {
		return h.sum(t, "herald.messages.processed") == 3
	})
	if got := h.sum(t, "herald.messages.processed", attribute.String("herald.outcome", "skipped")); got != 2 {
		t.Errorf("processed skipped = %d, want 2 (the OrderPlaced events)", got)
	}
	if got := h.sum(t, "herald.messages.processed", attribute.String("herald.outcome", "ok")); got != 1 {
		t.Errorf("processed ok = %d, want 1", got)
	}
	mu.Lock()
	defer mu.Unlock()
	skipped := 0
	for _, r := range results {
		if r.Skipped {
			skipped++
			if r.Err != nil || !strings.HasSuffix(r.Message.Event(), "OrderPlaced") {
				t.Errorf("skipped result %+v, want an OrderPlaced without error", r)
			}
		}
	}
	if len(results) != 3 || skipped != 2 || shipped.Load() != 1 {
		t.Errorf("%d hook results, %d skipped, %d handled; want 3, 2 and 1", len(results), skipped, shipped.Load())
	}
}

// TestTelemetryReportDuplicate checks that a handler that deduplicates on
// its own (sql/inbox) reports its duplicates like the dedup middleware:
// a span event and the deduplicated counter; outside a handler
// ReportDuplicate does nothing.
func TestTelemetryReportDuplicate(t *testing.T) {
	h := newOTelHarness(t)
	bus, _ := newTestBus(t, h.options()...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	seen := map[string]bool{}
	var mu sync.Mutex
	must(t, herald.Subscribe(bus, "billing", func(ctx context.Context, _ OrderPlaced, m *herald.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if seen[m.ID] {
			herald.ReportDuplicate(ctx, m)
			return nil
		}
		seen[m.ID] = true
		return nil
	}))
	ctx := testContext(t)
	herald.ReportDuplicate(ctx, &herald.Message{ID: "x"}) // not a handler's context: nothing
	must(t, bus.Start(ctx))
	good, err := bus.Publisher().Encode(ctx, OrderPlaced{ID: "good"})
	must(t, err)
	must(t, bus.PublishMessages(ctx, good[0], good[0].Clone()))
	eventually(t, "two deliveries settled", func() bool {
		return h.sum(t, "herald.messages.processed") == 2
	})
	must(t, bus.Shutdown(ctx))
	if got := h.sum(t, "herald.messages.deduplicated"); got != 1 {
		t.Errorf("deduplicated = %d, want 1", got)
	}
	dups := 0
	for _, s := range h.spans.GetSpans() {
		for _, e := range s.Events {
			if e.Name == "herald.duplicate" {
				dups++
			}
		}
	}
	if dups != 1 {
		t.Errorf("%d herald.duplicate span events, want 1", dups)
	}
}

func TestTelemetryRetryLater(t *testing.T) {
	h := newOTelHarness(t)
	bus, _ := newTestBus(t, h.options()...)
	herald.MustRegister[OrderPlaced](bus, "orders")
	var rounds []int
	var mu sync.Mutex
	must(t, herald.Subscribe(bus, "billing", func(ctx context.Context, _ OrderPlaced, _ *herald.Message) error {
		mu.Lock()
		defer mu.Unlock()
		rounds = append(rounds, herald.RetryRound(ctx))
		if herald.RetryRound(ctx) == 0 {
			return errors.New("later, please")
		}
		return nil
	}, herald.WithRetryLater(herald.RetryLaterConfig{Backoff: 200 * time.Millisecond}), herald.WithDeadLetter()))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "o-1"}))
	eventually(t, "round 1 handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(rounds) == 2
	})
	must(t, bus.Shutdown(ctx))
	if got := h.sum(t, "herald.messages.retried_later", attribute.String("messaging.destination.name", "orders")); got != 1 {
		t.Errorf("retried_later = %d, want 1", got)
	}
	var later int
	for _, s := range h.spans.GetSpans() {
		for _, e := range s.Events {
			if e.Name == "herald.retry_later" {
				later++
			}
		}
	}
	if later != 1 {
		t.Errorf("%d herald.retry_later span events, want 1", later)
	}
	if got := h.sum(t, "herald.messages.processed", attribute.String("herald.outcome", "ok")); got != 2 {
		t.Errorf("processed ok = %d, want 2 (the failed delivery is acknowledged)", got)
	}
}
