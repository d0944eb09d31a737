package main

import (
	"context"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
)

// memoryScenario compares the in-process brokers: herald's memory driver
// (default settings: 8 partitions, 4096 messages per partition before Write
// blocks) and Watermill's GoChannel, each behind its library's subscriber
// machinery (herald's Bus and scheduler, Watermill's Router).
func memoryScenario() scenario {
	return scenario{
		name:  "memory",
		about: "in-process brokers: herald memdriver vs Watermill GoChannel, end to end",
		cases: memoryCases,
	}
}

func memoryCases(cfg config) []benchCase {
	blocking := goChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true})
	c, b, k := cfg.concurrency, cfg.batch, cfg.keys

	unbounded := watermillCase("watermill-default", "GoChannel default config (no backpressure), 1 msg per call",
		goChannel(gochannel.Config{}), watermillVariant{}, false)
	unbounded.maxMessages = cfg.unboundedMax

	return []benchCase{
		heraldCase("herald-raw", "raw messages, 1 per call, concurrency 1",
			memoryDriver, heraldVariant{}),
		heraldCase("herald-raw-keyed", fmt.Sprintf("raw messages, 1 per call, concurrency %d, %d keys", c, k),
			memoryDriver, heraldVariant{concurrency: c, keyed: true}),
		heraldCase("herald-raw-unkeyed", fmt.Sprintf("raw messages, 1 per call, concurrency %d, no key", c),
			memoryDriver, heraldVariant{concurrency: c}),
		heraldCase("herald-raw-topics", "raw messages, 1 per call, concurrency 1, over 1000 topics (a subscription each)",
			memoryDriver, heraldVariant{topics: 1000}),
		heraldCase("herald-batch", fmt.Sprintf("raw messages, %d per call, concurrency 1", b),
			memoryDriver, heraldVariant{batched: true}),
		heraldCase("herald-batch-keyed", fmt.Sprintf("raw messages, %d per call, concurrency %d, %d keys", b, c, k),
			memoryDriver, heraldVariant{batched: true, concurrency: c, keyed: true}),
		heraldCase("herald-typed", "typed event (JSON), 1 per call, concurrency 1",
			memoryDriver, heraldVariant{typed: true}),
		heraldCase("herald-typed-keyed", fmt.Sprintf("typed event (JSON), 1 per call, concurrency %d, %d keys", c, k),
			memoryDriver, heraldVariant{typed: true, concurrency: c, keyed: true}),
		watermillCase("watermill", "GoChannel BlockPublishUntilSubscriberAck, 1 msg per call",
			blocking, watermillVariant{}, true),
		watermillCase("watermill-batch", fmt.Sprintf("GoChannel BlockPublishUntilSubscriberAck, %d msgs per call", b),
			blocking, watermillVariant{batched: true}, false),
		watermillCase("watermill-json", "GoChannel BlockPublishUntilSubscriberAck, JSON struct (encoding/json), 1 per call",
			blocking, watermillVariant{json: true}, false),
		unbounded,
		goChannelCase(cfg),
	}
}

// goChannelCase is the table's ceiling, measured in the same process: the
// same messages (a *herald.Message with the payload, allocated per send)
// handed from the publishers to one receiving goroutine through a
// buffered Go channel and nothing else: no ID, no acknowledgment, no
// per-key order beyond the channel's FIFO.
func goChannelCase(cfg config) benchCase {
	return referenceCase("go-channel", "Go", "buffered channel (4096) of *Message, 1 per send, 1 receiving goroutine", endToEnd,
		func(ctx context.Context, p runParams) (*pipeline, error) {
			size := cfg.payloadBytes
			cnt := newCounter(p.n, 0)
			data := payload(size)
			ch := make(chan *herald.Message, 4096)
			var wg sync.WaitGroup
			return assemble(ctx, p, stages{
				mode:    endToEnd,
				batch:   cfg.perCall(false),
				counter: cnt,
				publish: func(ctx context.Context, _, count int) error {
					for range count {
						select {
						case ch <- &herald.Message{Topic: p.topic, Data: data}:
						case <-ctx.Done():
							return ctx.Err()
						}
					}
					return nil
				},
				subscribe: func() error { return nil },
				start: func(context.Context) error {
					wg.Go(func() {
						for m := range ch {
							cnt.receive(len(m.Data), size)
						}
					})
					return nil
				},
				warmUp: func(ctx context.Context) error {
					select {
					case ch <- &herald.Message{Topic: p.topic}:
						return nil
					case <-ctx.Done():
						return ctx.Err()
					}
				},
				teardown: func(context.Context) error {
					close(ch)
					wg.Wait()
					return nil
				},
			})
		})
}

// memoryDriver gives each herald run a fresh memory driver, with its
// default settings.
func memoryDriver(context.Context, string, func(error)) (heraldBackend, error) {
	b, err := memdriver.New()
	if err != nil {
		return heraldBackend{}, err
	}
	return heraldBackend{driver: b, release: func(context.Context) error { return b.Close() }}, nil
}

// goChannel returns a fresh GoChannel per run; it is both the publisher and
// the subscriber.
func goChannel(cfg gochannel.Config) watermillPubSubFunc {
	return func(context.Context, string) (watermillBackend, error) {
		ps := gochannel.NewGoChannel(cfg, watermill.NopLogger{})
		return watermillBackend{pub: ps, sub: ps, release: func(context.Context) error { return ps.Close() }}, nil
	}
}
