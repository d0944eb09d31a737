// Observability follows one event through herald with OpenTelemetry and
// prints what a tracing backend would show: the checkout transaction that
// writes an order and its event to an SQLite outbox, the relay that
// forwards the row to the in-memory bus, and the subscriber that handles
// it after one retry, as one trace tree; then the metrics and the
// readiness report of the bus and the relay. The SDK's in-memory span
// exporter and manual metric reader stand in for a collector.
//
//	go run ./examples/observability
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/shopdb"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/outbox"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// OrderPlaced is the event the checkout publishes.
type OrderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// Topic places the event.
func (OrderPlaced) Topic() string { return "orders" }

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "observability:", err)
		os.Exit(1)
	}
}

func run(out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The application's OpenTelemetry SDK: in a service these export to a
	// collector; here they keep everything in memory.
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) }()
	quiet := slog.New(slog.DiscardHandler)

	db, closeDB, err := shopdb.Open(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := outbox.Migrate(ctx, db, outbox.SQLite, "outbox"); err != nil {
		return err
	}
	ow, err := outbox.NewWriter(outbox.SQLite, "outbox")
	if err != nil {
		return err
	}

	// Service B's side: a bus on the broker with a handler that fails
	// once and succeeds on the retry.
	broker, err := memdriver.New()
	if err != nil {
		return err
	}
	defer broker.Close()
	telemetry := []herald.Option{herald.WithTracerProvider(tp), herald.WithMeterProvider(mp), herald.WithLogger(quiet)}
	bus, err := herald.NewBus(broker, append(telemetry, herald.WithPublishWriter(ow))...)
	if err != nil {
		return err
	}
	herald.MustRegister[OrderPlaced](bus, "orders")
	handled := make(chan struct{})
	err = herald.Subscribe(bus, "billing", charge(tp, handled),
		herald.WithRetry(herald.RetryConfig{InitialBackoff: 10 * time.Millisecond}), herald.WithDeadLetter())
	if err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}
	defer bus.Shutdown(context.Background())

	// Service A's side.
	if err := checkout(ctx, tp, db, bus, OrderPlaced{ID: "o-1", Amount: 42}); err != nil {
		return err
	}

	// The relay, as it would run next to service A or as `herald relay`.
	relay, err := outbox.NewRelay(db, outbox.SQLite, "outbox", broker,
		outbox.WithTracerProvider(tp), outbox.WithMeterProvider(mp), outbox.WithLogger(quiet),
		outbox.WithPollInterval(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		return err
	}
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(ctx) }()

	select {
	case <-handled:
	case <-ctx.Done():
		return errors.New("the event was not handled in time")
	}

	// Readiness, as a /ready endpoint (herald.HealthHandler) would report
	// it, before anything stops.
	for !relay.Active() {
		time.Sleep(5 * time.Millisecond)
	}
	printReadiness(ctx, out, bus, relay)

	// Collect the metrics while everything runs: the gauges (lag, outbox
	// backlog) are read at collection from running components.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return err
	}

	if err := bus.Shutdown(ctx); err != nil {
		return err
	}
	if err := relay.Shutdown(ctx); err != nil {
		return err
	}
	if err := <-relayDone; err != nil {
		return err
	}

	fmt.Fprintln(out, "\nTrace:")
	printTree(out, spans.GetSpans())
	fmt.Fprintln(out, "\nMetrics:")
	printMetrics(out, rm)
	return nil
}

// charge is service B's handler: it fails once and succeeds on the retry,
// then closes handled.
func charge(tp trace.TracerProvider, handled chan<- struct{}) func(context.Context, OrderPlaced, *herald.Message) error {
	return func(ctx context.Context, o OrderPlaced, m *herald.Message) error {
		if herald.Attempt(ctx) == 1 {
			return errors.New("payment service busy")
		}
		// The handler's context carries its span: its own calls join the
		// trace (a child span here).
		_, span := tp.Tracer("billing").Start(ctx, "charge card")
		span.SetAttributes(attribute.String("order.id", o.ID))
		span.End()
		close(handled)
		return nil
	}
}

// checkout is service A's side: it writes the order and its event in one
// transaction, inside a span of its own.
func checkout(ctx context.Context, tp trace.TracerProvider, db *sql.DB, bus *herald.Bus, o OrderPlaced) error {
	ctx, span := tp.Tracer("checkout").Start(ctx, "checkout transaction")
	defer span.End()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := shopdb.InsertOrder(ctx, tx, o.ID, o.Amount); err != nil {
		return err
	}
	if err := bus.Publish(outbox.WithTx(ctx, tx), o); err != nil {
		return err
	}
	return tx.Commit()
}

// printReadiness prints what a /ready endpoint (herald.HealthHandler)
// would report of each component.
func printReadiness(ctx context.Context, out io.Writer, components ...herald.HealthChecker) {
	fmt.Fprintln(out, "Readiness:")
	for _, c := range components {
		st := c.CheckHealth(ctx)
		fmt.Fprintf(out, "  %-22s ready=%v %s\n", st.Name, st.Ready, strings.Join(st.Problems, "; "))
	}
}

// printTree prints spans as trees, children under their parent in start
// order, with each span's kind, duration, key attributes and events.
func printTree(out io.Writer, spans tracetest.SpanStubs) {
	children := map[trace.SpanID][]tracetest.SpanStub{}
	known := map[trace.SpanID]bool{}
	for _, s := range spans {
		known[s.SpanContext.SpanID()] = true
	}
	var roots []tracetest.SpanStub
	for _, s := range spans {
		if p := s.Parent.SpanID(); s.Parent.IsValid() && known[p] {
			children[p] = append(children[p], s)
		} else {
			roots = append(roots, s)
		}
	}
	byStart := func(ss []tracetest.SpanStub) {
		sort.Slice(ss, func(i, j int) bool { return ss[i].StartTime.Before(ss[j].StartTime) })
	}
	var walk func(s tracetest.SpanStub, indent string)
	walk = func(s tracetest.SpanStub, indent string) {
		fmt.Fprintf(out, "%s%s [%s] %s%s\n", indent, s.Name, strings.TrimPrefix(s.SpanKind.String(), "SpanKind"),
			s.EndTime.Sub(s.StartTime).Round(time.Microsecond), describe(s))
		for _, e := range s.Events {
			fmt.Fprintf(out, "%s  · event %s%s\n", indent, e.Name, attrs(e.Attributes, "herald.attempt", "herald.previous_error"))
		}
		kids := children[s.SpanContext.SpanID()]
		byStart(kids)
		for _, k := range kids {
			walk(k, indent+"  ")
		}
	}
	byStart(roots)
	for _, r := range roots {
		fmt.Fprintf(out, "trace %s\n", r.SpanContext.TraceID())
		walk(r, "  ")
	}
}

func describe(s tracetest.SpanStub) string {
	d := attrs(s.Attributes, "messaging.system", "messaging.destination.name", "messaging.consumer.group.name", "order.id")
	if len(s.Links) > 0 {
		d += fmt.Sprintf(" (linked to %s)", s.Links[0].SpanContext.SpanID())
	}
	return d
}

func attrs(kvs []attribute.KeyValue, keys ...string) string {
	var parts []string
	for _, k := range keys {
		for _, kv := range kvs {
			if string(kv.Key) == k {
				parts = append(parts, fmt.Sprintf("%s=%s", k, kv.Value.String()))
			}
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " " + strings.Join(parts, " ")
}

// printMetrics prints each metric's data points with their attributes.
func printMetrics(out io.Writer, rm metricdata.ResourceMetrics) {
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range data.DataPoints {
					lines = append(lines, fmt.Sprintf("  %s %s = %d", m.Name, point(dp.Attributes), dp.Value))
				}
			case metricdata.Gauge[int64]:
				for _, dp := range data.DataPoints {
					lines = append(lines, fmt.Sprintf("  %s %s = %d", m.Name, point(dp.Attributes), dp.Value))
				}
			case metricdata.Gauge[float64]:
				for _, dp := range data.DataPoints {
					lines = append(lines, fmt.Sprintf("  %s %s = %.3f", m.Name, point(dp.Attributes), dp.Value))
				}
			case metricdata.Histogram[float64]:
				for _, dp := range data.DataPoints {
					lines = append(lines, fmt.Sprintf("  %s %s count=%d sum=%.3fs", m.Name, point(dp.Attributes), dp.Count, dp.Sum))
				}
			}
		}
	}
	sort.Strings(lines)
	fmt.Fprintln(out, strings.Join(lines, "\n"))
}

func point(set attribute.Set) string {
	m := map[string]string{}
	for _, kv := range set.ToSlice() {
		m[string(kv.Key)] = kv.Value.String()
	}
	b, _ := json.Marshal(m)
	return string(b)
}
