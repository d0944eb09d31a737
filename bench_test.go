package herald_test

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdedup"
	"github.com/heraldbus/herald/memory/memdriver"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

var payload256 = make([]byte, 256)

// discardWriter accepts every batch: it isolates the publisher's own cost.
type discardWriter struct{}

func (discardWriter) Write(context.Context, []*herald.Message) error { return nil }

func BenchmarkPublishTyped(b *testing.B) {
	p, err := herald.NewPublisher(discardWriter{})
	if err != nil {
		b.Fatal(err)
	}
	herald.MustRegister[OrderPlaced](p, "orders")
	ctx := context.Background()
	e := OrderPlaced{ID: "o-1", Amount: 42}
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Publish(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishRaw publishes with a bare context and with one six
// layers deep, as a service's request contexts are (cancel, values,
// deadline): every context lookup of a publish walks them.
func BenchmarkPublishRaw(b *testing.B) {
	p, err := herald.NewPublisher(discardWriter{})
	if err != nil {
		b.Fatal(err)
	}
	type layer struct{ n int }
	deep, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 4 {
		deep = context.WithValue(deep, layer{i}, i)
	}
	deep, cancelDeadline := context.WithTimeout(deep, time.Hour)
	defer cancelDeadline()
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"background", context.Background()}, {"deep", deep}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := p.PublishMessages(c.ctx, &herald.Message{Topic: "orders", Data: payload256}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkChainSuccess is the success path of the full built-in chain:
// dedup (memory) + dead-letter + retry + recover around a no-op handler.
// The dedup cache is sized for the run, as a service sizes it for its
// rate times its window (memdedup.WithExpectedEntries).
func BenchmarkChainSuccess(b *testing.B) {
	store, err := memdedup.New(context.Background(), memdedup.WithExpectedEntries(1<<21))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	h := herald.Chain(func(context.Context, *herald.Message) error { return nil },
		herald.Deduplicate(herald.DedupConfig{Storage: store}, "g"),
		herald.DeadLetterMiddleware(herald.DeadLetterConfig{Writer: discardWriter{}}, "g", nil, false),
		herald.Retry(herald.RetryConfig{}),
		herald.Recover(),
	)
	// Fresh IDs, made before the timer: every message is claimed and
	// committed, none is a duplicate.
	ids := make([]string, 1<<21)
	for i := range ids {
		ids[i] = "msg-" + strconv.Itoa(i)
	}
	m := &herald.Message{Topic: "orders", Key: "k", Data: payload256}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.ID = ids[i&(len(ids)-1)]
		if err := h(ctx, m); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkChainSuccessNoDedup is the chain without dedup: what retry,
// dead-letter and recover cost on the success path.
func BenchmarkChainSuccessNoDedup(b *testing.B) {
	h := herald.Chain(func(context.Context, *herald.Message) error { return nil },
		herald.DeadLetterMiddleware(herald.DeadLetterConfig{Writer: discardWriter{}}, "g", nil, false),
		herald.Retry(herald.RetryConfig{}),
		herald.Recover(),
	)
	m := &herald.Message{ID: "x", Topic: "orders", Data: payload256}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := h(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEndToEndMemory publishes raw 256-byte messages from parallel
// goroutines through the memory driver to a subscriber and waits until the
// handler has seen them all. ns/op is per message end to end.
func BenchmarkEndToEndMemory(b *testing.B) {
	for _, c := range []int{1, 4} {
		b.Run("concurrency="+strconv.Itoa(c), func(b *testing.B) { benchEndToEnd(b, c) })
	}
}

// telemetryModes are the telemetry set-ups the benchmark pairs compare:
// off, the default with no provider installed, explicit no-op providers.
var telemetryModes = []struct {
	name string
	opts []herald.PublisherOption
}{
	{"off", []herald.PublisherOption{herald.WithoutTelemetry()}},
	{"global-uninstalled", nil},
	{"noop", []herald.PublisherOption{herald.WithTracerProvider(tracenoop.NewTracerProvider()), herald.WithMeterProvider(metricnoop.NewMeterProvider())}},
}

// BenchmarkTelemetryPublish is the publisher's cost per raw message with
// each telemetry set-up: the pair that shows what instrumentation costs
// when the application installs no provider.
func BenchmarkTelemetryPublish(b *testing.B) {
	for _, m := range telemetryModes {
		b.Run(m.name, func(b *testing.B) {
			p, err := herald.NewPublisher(discardWriter{}, m.opts...)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := p.PublishMessages(ctx, &herald.Message{Topic: "orders", Data: payload256}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTelemetryEndToEnd is BenchmarkEndToEndMemory (concurrency 1)
// with each telemetry set-up.
func BenchmarkTelemetryEndToEnd(b *testing.B) {
	for _, m := range telemetryModes {
		b.Run(m.name, func(b *testing.B) { benchEndToEnd(b, 1, m.opts...) })
	}
}

func benchEndToEnd(b *testing.B, concurrency int, pubOpts ...herald.PublisherOption) {
	broker, err := memdriver.New()
	if err != nil {
		b.Fatal(err)
	}
	defer broker.Close()
	opts := []herald.Option{herald.WithLogger(quiet)}
	for _, o := range pubOpts {
		opts = append(opts, o)
	}
	bus, err := herald.NewBus(broker, opts...)
	if err != nil {
		b.Fatal(err)
	}
	var seen atomic.Int64
	err = bus.Handle("bench", "g", func(context.Context, *herald.Message) error {
		seen.Add(1)
		return nil
	}, herald.WithConcurrency(concurrency))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := bus.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer bus.Shutdown(ctx)
	var key atomic.Int64
	var failed atomic.Bool
	b.ReportAllocs()
	b.SetParallelism(8) // with GOMAXPROCS 2: 16 publishing goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := strconv.Itoa(int(key.Add(1) % 1000))
			if err := bus.PublishMessages(ctx, &herald.Message{Topic: "bench", Key: k, Data: payload256}); err != nil {
				b.Error(err)
				failed.Store(true)
				return
			}
		}
	})
	for seen.Load() < int64(b.N) && !failed.Load() {
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkIdleSubscribedTopics subscribes b.N topics on one Bus over the
// memory driver (one handler each, the default options), starts it and
// reports what each topic costs while nothing is published: heap bytes,
// goroutine stack bytes and goroutines (the scheduler's and the
// driver's).
func BenchmarkIdleSubscribedTopics(b *testing.B) {
	broker, err := memdriver.New()
	if err != nil {
		b.Fatal(err)
	}
	defer broker.Close()
	bus, err := herald.NewBus(broker, herald.WithLogger(quiet))
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	b.ResetTimer()
	for i := range b.N {
		err := bus.Handle("topic-"+strconv.Itoa(i), "g", func(context.Context, *herald.Message) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := bus.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	time.Sleep(100 * time.Millisecond) // the schedulers reach their first Fetch
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(b.N), "heap-B/topic")
	b.ReportMetric(float64(int64(after.StackInuse)-int64(before.StackInuse))/float64(b.N), "stack-B/topic")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/float64(b.N), "goroutines/topic")
	if err := bus.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}
}
