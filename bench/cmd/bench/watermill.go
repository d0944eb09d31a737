package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// watermillBackend is a scenario's broker as Watermill sees it in one run.
type watermillBackend struct {
	pub message.Publisher
	sub message.Subscriber
	// topic is the name to publish and subscribe under; empty means the
	// run's topic. (Watermill's Redis Streams use it as the stream key, so
	// a scenario may prefix it.)
	topic string
	// stored counts the messages the topic holds (the publish-only check);
	// nil skips the check.
	stored func(ctx context.Context) (int, error)
	// release frees what the run used once the router has stopped: it
	// closes the publisher and the subscriber and deletes the run's topic
	// where the broker outlives the run.
	release func(ctx context.Context) error
}

// watermillPubSubFunc returns a fresh backend for one run on topic.
// Scenarios differ only in it.
type watermillPubSubFunc func(ctx context.Context, topic string) (watermillBackend, error)

// watermillVariant is how one Watermill row publishes and consumes.
type watermillVariant struct {
	// mode is what the clock measures (end to end by default).
	mode mode
	// batched puts cfg.batch messages in each Publish call instead of one.
	batched bool
	// json publishes benchEvent encoded with encoding/json and decodes it in
	// the handler: what herald's typed row does for the user.
	json bool
	// work is how long the handler sleeps per message.
	work time.Duration
	// concurrency is how many messages the subscriber hands the Router
	// before the first is acknowledged (0 means 1); it sets the ceiling
	// columns. The Kafka subscriber keeps one in flight per partition.
	concurrency int
	// rate is the messages per second of a paced row; its messages carry
	// their index as UUID, which the handler reports for the latency.
	rate float64
}

// watermillCase measures a Watermill Router with one consumer handler over
// the publisher and subscriber newPubSub returns. The Router runs one
// handler per message it receives; with a subscriber that waits for the
// ack before sending the next message (GoChannel with blocking publish,
// Redis Streams), that is one message at a time.
func watermillCase(id, label string, newPubSub watermillPubSubFunc, v watermillVariant, baseline bool) benchCase {
	return benchCase{
		id:          id,
		system:      "Watermill",
		label:       label,
		mode:        v.mode,
		baseline:    baseline,
		concurrency: max(v.concurrency, 1),
		work:        v.work,
		setup: func(ctx context.Context, p runParams) (*pipeline, error) {
			return setupWatermill(ctx, p, newPubSub, v)
		},
	}
}

func setupWatermill(ctx context.Context, p runParams, newPubSub watermillPubSubFunc, v watermillVariant) (*pipeline, error) {
	cfg := p.cfg
	be, err := newPubSub(ctx, p.topic)
	if err != nil {
		return nil, err
	}
	topic := be.topic
	if topic == "" {
		topic = p.topic
	}
	cnt := newCounter(p.n, v.work)
	size := cfg.payloadBytes

	// The router exists once subscribe ran (a publish-only run has none)
	// and runs once start launched it. Set-up, run and teardown follow one
	// another, so plain variables do.
	var (
		router   *message.Router
		launched bool
		runDone  = make(chan error, 1)
	)
	s := stages{
		mode:    v.mode,
		batch:   cfg.perCall(v.batched),
		rate:    v.rate,
		counter: cnt,
		stored:  be.stored,
	}
	s.subscribe = func() error {
		r, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.shutdownTimeout}, watermill.NopLogger{})
		if err != nil {
			return err
		}
		router = r
		router.AddConsumerHandler(benchGroup, topic, be.sub, func(msg *message.Message) error {
			got := len(msg.Payload)
			if v.json {
				var e benchEvent
				if err := json.Unmarshal(msg.Payload, &e); err != nil {
					cnt.fail(fmt.Errorf("decode message %s: %w", msg.UUID, err))
					return nil
				}
				got = len(e.Body)
			}
			cnt.seenID(msg.UUID)
			cnt.receive(got, size)
			return nil
		})
		return nil
	}
	s.start = func(ctx context.Context) error {
		launched = true
		go func() { runDone <- router.Run(context.WithoutCancel(ctx)) }()
		select {
		case <-router.Running():
			return nil
		case err := <-runDone:
			runDone <- err // for the teardown
			return fmt.Errorf("router stopped before running: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("router did not start: %w", ctx.Err())
		}
	}
	s.teardown = func(ctx context.Context) error {
		var stopErr error
		if router != nil {
			stopErr = router.Close()
		}
		if launched {
			select {
			case err := <-runDone:
				stopErr = errors.Join(stopErr, err)
			case <-ctx.Done():
				stopErr = errors.Join(stopErr, fmt.Errorf("router did not stop: %w", ctx.Err()))
			}
		}
		return errors.Join(stopErr, be.release(ctx))
	}

	data := payload(size)
	encode := func() ([]byte, error) { return data, nil }
	if v.json {
		body := string(data)
		encode = func() ([]byte, error) { return json.Marshal(benchEvent{Body: body}) }
	}
	s.publish = func(_ context.Context, first, count int) error {
		if count == 1 {
			b, err := encode()
			if err != nil {
				return err
			}
			id := watermill.NewUUID()
			if v.mode == paced {
				id = strconv.Itoa(first)
			}
			return be.pub.Publish(topic, message.NewMessage(id, b))
		}
		msgs := make([]*message.Message, count)
		for i := range msgs {
			b, err := encode()
			if err != nil {
				return err
			}
			msgs[i] = message.NewMessage(watermill.NewUUID(), b)
		}
		return be.pub.Publish(topic, msgs...)
	}
	s.warmUp = func(context.Context) error {
		var empty []byte
		if v.json {
			var err error
			if empty, err = json.Marshal(benchEvent{}); err != nil {
				return err
			}
		}
		return be.pub.Publish(topic, message.NewMessage(watermill.NewUUID(), empty))
	}
	return assemble(ctx, p, s)
}

// closeOnce makes a Watermill subscriber's Close run once, however many
// callers close it: the Router closes its handlers' subscribers from a
// goroutine of its own that can outlive Run, and the run's release closes
// them too, and some subscribers (watermill-sql's) are not safe to close
// concurrently. The sync.Once also orders the two calls for the race
// detector.
type closeOnce struct {
	message.Subscriber
	once sync.Once
	err  error
}

// Close closes the wrapped subscriber the first time it is called and
// returns that result every time.
func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Subscriber.Close() })
	return c.err
}
