package redisdriver_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

// Benchmarks against the test Redis (HERALD_REDIS_ADDR). One op is one
// message; msgs/s is reported next to ns/op. For example:
//
//	go test -run '^$' -bench . -benchtime 200000x ./redis/redisdriver/

const (
	benchBatch   = 100
	benchPayload = 128 // bytes, about a small JSON event
	benchEvent   = "bench.event"
)

func benchMessages(topic string, n, keys int) []*herald.Message {
	payload := bytes.Repeat([]byte("x"), benchPayload)
	now := time.Now().UTC()
	msgs := make([]*herald.Message, n)
	for i := range msgs {
		key := ""
		if keys > 0 {
			key = "k" + strconv.Itoa(i%keys)
		}
		msgs[i] = &herald.Message{
			ID: fmt.Sprintf("%027d", i), Topic: topic, Key: key,
			Headers:     herald.Headers{herald.HeaderEvent: benchEvent},
			ContentType: "application/json", Data: payload, Time: now,
		}
	}
	return msgs
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkPublish compares herald's Writer (pipelined XADD, one round trip
// per batch of 100) with the same XADDs pipelined by hand with go-redis,
// and with Bus.Publish (which encodes the events to JSON first). The stream
// is emptied every 50,000 messages, off the clock, to spare the shared
// server's memory.
func BenchmarkPublish(b *testing.B) {
	ctx := context.Background()
	env := newEnv(b)
	drain := func(b *testing.B, i int, stream string) {
		if i > 0 && i%50_000 < benchBatch {
			b.StopTimer()
			if err := env.client.Del(ctx, stream).Err(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}

	b.Run("herald-writer", func(b *testing.B) {
		d := env.driver(b)
		topic := drivertest.Name(b, "t")
		msgs := benchMessages(topic, benchBatch, 1000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += benchBatch {
			drain(b, i, d.StreamKey(topic))
			if err := d.Write(ctx, msgs[:min(benchBatch, b.N-i)]); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})

	b.Run("go-redis-pipeline", func(b *testing.B) {
		stream := env.prefix + drivertest.Name(b, "t")
		msgs := benchMessages("unused", benchBatch, 1000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += benchBatch {
			drain(b, i, stream)
			pipe := env.client.Pipeline()
			for _, m := range msgs[:min(benchBatch, b.N-i)] {
				pipe.XAdd(ctx, &goredis.XAddArgs{Stream: stream, Values: []any{
					"id", m.ID, "key", m.Key, "content-type", m.ContentType,
					"time", strconv.FormatInt(m.Time.UnixNano(), 10), "data", m.Data,
					"h:" + herald.HeaderEvent, benchEvent,
				}})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})

	b.Run("bus-publish", func(b *testing.B) {
		d := env.driver(b)
		topic := drivertest.Name(b, "t")
		bus, err := herald.NewBus(d, herald.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			b.Fatal(err)
		}
		if err := herald.Register[drivertest.Event](bus, topic, herald.WithKey(func(e drivertest.Event) string { return e.Key })); err != nil {
			b.Fatal(err)
		}
		events := make([]any, benchBatch)
		for i := range events {
			events[i] = drivertest.Event{Key: "k" + strconv.Itoa(i), Seq: i}
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += benchBatch {
			drain(b, i, d.StreamKey(topic))
			if err := bus.Publish(ctx, events[:min(benchBatch, b.N-i)]...); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})
}

// BenchmarkConsume measures how fast a herald.Bus drains a backlog of b.N
// messages (written before the clock starts) through a raw handler: no-op
// with 1 and 16 workers, and a 1 ms handler over 1000 keys with 64 workers,
// whose nominal ceiling is 64 workers / 1 ms = 64,000 msgs/s.
//
// A handler that sleeps reports handler-ms, the mean time its handler
// really took, and ceiling-%, the rate as a share of workers / handler-ms.
// time.Sleep(time.Millisecond) takes longer than 1 ms in a process that
// does network I/O: the Go runtime then waits for timers in epoll_wait,
// whose timeout has a resolution of 1 ms.
func BenchmarkConsume(b *testing.B) {
	b.Run("noop-c1", func(b *testing.B) { benchConsume(b, 1, 0, 1000) })
	b.Run("noop-c16", func(b *testing.B) { benchConsume(b, 16, 0, 1000) })
	b.Run("1ms-1000keys-c64", func(b *testing.B) { benchConsume(b, 64, time.Millisecond, 1000) })
}

func benchConsume(b *testing.B, concurrency int, work time.Duration, keys int) {
	ctx := context.Background()
	env := newEnv(b)
	d := env.driver(b)
	topic, group := drivertest.Name(b, "t"), drivertest.Name(b, "g")
	msgs := benchMessages(topic, b.N, keys)
	for i := 0; i < len(msgs); i += 1000 {
		if err := d.Write(ctx, msgs[i:min(len(msgs), i+1000)]); err != nil {
			b.Fatal(err)
		}
	}
	bus, err := herald.NewBus(d, herald.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	var handled, worked atomic.Int64
	finished := make(chan struct{})
	err = bus.Handle(topic, group, func(ctx context.Context, m *herald.Message) error {
		if work > 0 {
			start := time.Now()
			time.Sleep(work)
			worked.Add(int64(time.Since(start)))
		}
		if handled.Add(1) == int64(b.N) {
			close(finished)
		}
		return nil
	}, herald.WithConcurrency(concurrency))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if err := bus.Start(ctx); err != nil {
		b.Fatal(err)
	}
	<-finished
	b.StopTimer()
	reportRate(b)
	if work > 0 {
		mean := time.Duration(worked.Load() / handled.Load())
		b.ReportMetric(float64(mean)/float64(time.Millisecond), "handler-ms")
		ceiling := float64(concurrency) / mean.Seconds()
		b.ReportMetric(100*float64(b.N)/b.Elapsed().Seconds()/ceiling, "ceiling-%")
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := bus.Shutdown(sctx); err != nil {
		b.Fatal(err)
	}
}
