package herald_test

import (
	"context"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// The per-message overhead of the breaker (closed) and the throttle (a
// rate it never reaches, so no run waits): each against the bare no-op
// handler, serially and from parallel workers sharing one breaker or
// bucket, as a subscription's workers do.

func noop(context.Context, *herald.Message) error { return nil }

func benchHandler(b *testing.B, h herald.HandlerFunc) {
	m := &herald.Message{ID: "x", Topic: "orders", Data: payload256}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := h(ctx, m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := h(ctx, m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkGuardsBaseline is the no-op handler alone.
func BenchmarkGuardsBaseline(b *testing.B) { benchHandler(b, noop) }

// BenchmarkBreakerClosed is a closed breaker as the Bus installs it: the
// wait before dedup and the layer around the attempt.
func BenchmarkBreakerClosed(b *testing.B) {
	c, attempts := herald.NewCircuit(herald.BreakerConfig{CoolDown: time.Second}, nil)
	benchHandler(b, herald.Chain(noop, c.Gate(), attempts))
}

// BenchmarkThrottle is a throttle whose rate is never reached.
func BenchmarkThrottle(b *testing.B) {
	bucket := herald.NewTokenBucket(1e12, 1<<30, nil)
	benchHandler(b, bucket.Throttle()(noop))
}
