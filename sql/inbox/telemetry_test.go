package inbox_test

import (
	"context"
	"database/sql"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/inbox"
	"github.com/heraldbus/herald/sql/internal/sqltest"
)

// TestDuplicateCounted checks that a delivery the inbox skips counts as
// a duplicate in the subscription's metrics (herald.ReportDuplicate), as
// one the dedup middleware skips does.
func TestDuplicateCounted(t *testing.T) {
	tdb := sqltest.New(t, inbox.SQLite)
	db := tdb.Open(t)
	ib := newInbox(t, tdb, db)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	bus := newMemBus(t, herald.WithMeterProvider(mp))
	var runs atomic.Int32
	if err := ib.Handle(bus, "orders", "billing", func(context.Context, *sql.Tx, *herald.Message) error {
		runs.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	m := &herald.Message{ID: "d-1", Topic: "orders"}
	if err := bus.PublishMessages(ctx, m, m.Clone()); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 10*time.Second, "two deliveries settled", func() bool {
		return sum(t, reader, "herald.messages.processed") == 2
	})
	if got := sum(t, reader, "herald.messages.deduplicated"); got != 1 {
		t.Errorf("herald.messages.deduplicated = %d, want 1", got)
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// sum adds up the points of the counter name.
func sum(t *testing.T, reader *sdkmetric.ManualReader, name string) int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, p := range s.DataPoints {
					n += p.Value
				}
			}
		}
	}
	return n
}
