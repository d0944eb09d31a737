package outbox_test

import (
	"context"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memtest"
	"github.com/heraldbus/herald/sql/outbox"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

type orderPlaced struct {
	ID string `json:"id"`
}

func (orderPlaced) Topic() string { return "orders" }

// TestTraceThroughOutbox follows one event from the transaction that wrote
// it, through the outbox table and the relay, to a subscriber's handler:
// one trace, each hop a child of the one before.
func TestTraceThroughOutbox(t *testing.T) {
	forEachDialect(t, func(t *testing.T, tdb *testDB) {
		spans := tracetest.NewInMemoryExporter()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) }()
		ctx := context.Background()

		db := tdb.Open(t)
		table := migrateTable(t, tdb, db)
		broker := memtest.Broker(t)
		defer broker.Close()
		w := newWriter(t, tdb.D, table)
		bus, err := herald.NewBus(broker, herald.WithPublishWriter(w), herald.WithTracerProvider(tp), herald.WithMeterProvider(mp))
		if err != nil {
			t.Fatal(err)
		}
		herald.MustRegister[orderPlaced](bus, "orders")
		handled := make(chan struct{}, 1)
		if err := herald.Subscribe(bus, "billing", func(context.Context, orderPlaced, *herald.Message) error {
			handled <- struct{}{}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := bus.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = bus.Shutdown(ctx) }()

		txCtx, txSpan := tp.Tracer("test").Start(ctx, "checkout transaction")
		tx, err := db.BeginTx(txCtx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(outbox.WithTx(txCtx, tx), orderPlaced{ID: "o-1"}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		txSpan.End()

		rr := startRelay(t, db, tdb.D, table, broker, outbox.WithTracerProvider(tp), outbox.WithMeterProvider(mp))
		select {
		case <-handled:
		case <-waitCtx(t).Done():
			t.Fatal("event not handled")
		}
		eventually(t, "outbox drained", func() bool { return countRows(t, tdb, db, table) == 0 })

		// The metrics: the relay delivered one row and the table is empty.
		tableAttr := attribute.String("herald.outbox.table", table)
		collect := func() map[string]int64 {
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(ctx, &rm); err != nil {
				t.Fatal(err)
			}
			got := map[string]int64{}
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					switch data := m.Data.(type) {
					case metricdata.Sum[int64]:
						for _, dp := range data.DataPoints {
							if v, ok := dp.Attributes.Value(tableAttr.Key); ok && v == tableAttr.Value {
								got[m.Name] += dp.Value
							}
						}
					case metricdata.Gauge[int64]:
						for _, dp := range data.DataPoints {
							if v, ok := dp.Attributes.Value(tableAttr.Key); ok && v == tableAttr.Value {
								got[m.Name] += dp.Value
							}
						}
					}
				}
			}
			return got
		}
		var got map[string]int64
		eventually(t, "relay metrics", func() bool {
			got = collect()
			_, hasBacklog := got["herald.outbox.backlog"]
			return got["herald.outbox.relayed"] == 1 && hasBacklog && got["herald.outbox.backlog"] == 0
		})
		rr.shutdown(t)

		byName := map[string]tracetest.SpanStub{}
		for _, s := range spans.GetSpans() {
			byName[s.Name] = s
		}
		chain := []string{"checkout transaction", "send orders", "relay orders", "process orders"}
		kinds := []trace.SpanKind{trace.SpanKindInternal, trace.SpanKindProducer, trace.SpanKindProducer, trace.SpanKindConsumer}
		for i, name := range chain {
			s, ok := byName[name]
			if !ok {
				t.Fatalf("no span %q among %v", name, spans.GetSpans())
			}
			if s.SpanKind != kinds[i] {
				t.Errorf("%s: kind %v, want %v", name, s.SpanKind, kinds[i])
			}
			if s.SpanContext.TraceID() != byName[chain[0]].SpanContext.TraceID() {
				t.Errorf("%s is in another trace", name)
			}
			if i > 0 && s.Parent.SpanID() != byName[chain[i-1]].SpanContext.SpanID() {
				t.Errorf("%s: parent %s, want %s", name, s.Parent.SpanID(), chain[i-1])
			}
		}
	})
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	t.Cleanup(cancel)
	return ctx
}
