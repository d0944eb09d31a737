package drivertest

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/testenv"
)

// BenchTables measures what a group table costs on a driver: b.N events
// over 1,000 or 100,000 keys written first, then handled by one member
// with concurrency 4, with a table (SubscribeSums: read, add, write per
// message) and without one (the same events, counted only). It reports
// msgs/s and CPU µs per message beside them; the ratio of each pair is
// the table's overhead. newDriver gives each run a driver that holds
// b.N unacknowledged messages without blocking the writer.
func BenchTables(b *testing.B, newDriver func(b *testing.B) herald.Driver) {
	for _, keys := range []int{1000, 100_000} {
		for _, withTable := range []bool{false, true} {
			name := map[bool]string{false: "plain", true: "table"}[withTable]
			b.Run(fmt.Sprintf("keys_%d/%s", keys, name), func(b *testing.B) { // sub-names become topic names (Name)
				benchTable(b, newDriver(b), keys, withTable)
			})
		}
	}
}

func benchTable(b *testing.B, d herald.Driver, keys int, withTable bool) {
	ctx := context.Background()
	topic, group := Name(b, "in"), Name(b, "g")
	bus, err := herald.NewBus(d, herald.WithLogger(slog.New(slog.DiscardHandler)))
	must(b, err)
	var handled atomic.Int64
	if withTable {
		table, err := herald.NewTable[Sum](Name(b, "sums"))
		must(b, err)
		must(b, SubscribeSums(bus, topic, group, table, &handled, herald.WithConcurrency(4)))
	} else {
		must(b, herald.Register[Event](bus, topic, herald.WithKey(func(e Event) string { return e.Key })))
		must(b, herald.Subscribe(bus, group, func(context.Context, Event, *herald.Message) error {
			handled.Add(1)
			return nil
		}, herald.WithConcurrency(4)))
	}
	events := make([]any, b.N)
	for i := range events {
		events[i] = Event{Key: "k" + strconv.Itoa(i%keys), Seq: 1}
	}
	for i := 0; i < len(events); i += 1000 {
		must(b, bus.Publish(ctx, events[i:min(i+1000, len(events))]...))
	}
	b.ReportAllocs()
	cpu0 := testenv.ProcessCPU()
	b.ResetTimer()
	must(b, bus.Start(ctx))
	for handled.Load() < int64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	cpu := testenv.ProcessCPU() - cpu0
	must(b, bus.Shutdown(ctx))
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
}
