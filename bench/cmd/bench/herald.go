package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/heraldbus/herald"
)

// heraldBackend is a scenario's broker as herald sees it in one run.
type heraldBackend struct {
	driver herald.Driver
	// stored counts the messages the run's topic holds (the publish-only
	// check); nil skips the check.
	stored func(ctx context.Context) (int, error)
	// release frees what the run used once the bus has shut down: it
	// deletes the run's topic where the broker outlives the run, and closes
	// the driver's connections.
	release func(ctx context.Context) error
}

// heraldDriverFunc returns a fresh backend for one run on topic. The driver
// hands errors it meets in the background to report, which fails the run.
// Scenarios differ only in it.
type heraldDriverFunc func(ctx context.Context, topic string, report func(error)) (heraldBackend, error)

// heraldVariant is how one herald row publishes and consumes.
type heraldVariant struct {
	// mode is what the clock measures (end to end by default).
	mode mode
	// typed publishes a registered struct through Bus.Publish (JSON codec)
	// and subscribes with herald.Subscribe; otherwise raw messages go
	// through Bus.PublishMessages and Bus.Handle.
	typed bool
	// batched puts cfg.batch messages in each publish call instead of one.
	batched bool
	// concurrency is the handler concurrency (WithConcurrency; 0 means 1).
	concurrency int
	// keyed gives message i the key i mod cfg.keys instead of no key.
	keyed bool
	// work is how long the handler sleeps per message.
	work time.Duration
	// topics spreads raw messages over this many topics (message i to
	// topic i mod topics), each with its own subscription; 0 means one.
	topics int
	// rate is the messages per second of a paced row.
	rate float64
	// telemetry returns Bus options that set up tracing and metrics and a
	// function that shuts what they started down; nil leaves the defaults
	// (the global providers, none installed here).
	telemetry func() ([]herald.Option, func(context.Context) error)
}

// benchEvent is the typed event: a Body of cfg.payloadBytes characters, so
// its JSON encoding is the raw payload plus a few bytes of framing.
type benchEvent struct {
	Key  string `json:"key,omitempty"`
	Body string `json:"body"`
}

// benchGroup is the consumer group of every subscriber.
const benchGroup = "bench"

// heraldCase measures herald's Bus over the driver newDriver returns.
func heraldCase(id, label string, newDriver heraldDriverFunc, v heraldVariant) benchCase {
	return benchCase{
		id:          id,
		system:      "herald",
		label:       label,
		mode:        v.mode,
		concurrency: max(v.concurrency, 1),
		work:        v.work,
		setup: func(ctx context.Context, p runParams) (*pipeline, error) {
			return setupHerald(ctx, p, newDriver, v)
		},
	}
}

func setupHerald(ctx context.Context, p runParams, newDriver heraldDriverFunc, v heraldVariant) (*pipeline, error) {
	cfg := p.cfg
	cnt := newCounter(p.n, v.work)
	be, err := newDriver(ctx, p.topic, func(err error) { cnt.fail(fmt.Errorf("driver reported: %w", err)) })
	if err != nil {
		return nil, err
	}
	busOpts := []herald.Option{
		herald.WithLogger(slog.New(slog.DiscardHandler)),
		herald.WithErrorHandler(func(err error) { cnt.fail(fmt.Errorf("bus reported: %w", err)) }),
	}
	stopTelemetry := func(context.Context) error { return nil }
	if v.telemetry != nil {
		var telOpts []herald.Option
		telOpts, stopTelemetry = v.telemetry()
		busOpts = append(busOpts, telOpts...)
	}
	bus, err := herald.NewBus(be.driver, busOpts...)
	if err != nil {
		return nil, errors.Join(err, stopTelemetry(ctx), be.release(ctx))
	}
	s := stages{
		mode:    v.mode,
		batch:   cfg.perCall(v.batched),
		counter: cnt,
		stored:  be.stored,
		// The subscriber outlives the timed part's context (a consume-only
		// run starts it there); the teardown stops it.
		start: func(ctx context.Context) error { return bus.Start(context.WithoutCancel(ctx)) },
		teardown: func(ctx context.Context) error {
			return errors.Join(bus.Shutdown(ctx), be.release(ctx), stopTelemetry(ctx))
		},
	}
	opts := []herald.SubscribeOption{herald.WithConcurrency(max(v.concurrency, 1))}
	keys := benchKeys(cfg, v.keyed)
	size := cfg.payloadBytes

	if v.typed {
		body := string(payload(size))
		if err := herald.Register[benchEvent](bus, p.topic, herald.WithKey(func(e benchEvent) string { return e.Key })); err != nil {
			return nil, errors.Join(err, be.release(ctx))
		}
		s.subscribe = func() error {
			return herald.Subscribe(bus, benchGroup, func(_ context.Context, e benchEvent, _ *herald.Message) error {
				cnt.receive(len(e.Body), size)
				return nil
			}, opts...)
		}
		s.publish = func(ctx context.Context, first, count int) error {
			if count == 1 {
				return bus.Publish(ctx, benchEvent{Key: keys.of(first), Body: body})
			}
			events := make([]any, count)
			for i := range events {
				events[i] = benchEvent{Key: keys.of(first + i), Body: body}
			}
			return bus.Publish(ctx, events...)
		}
		s.warmUp = func(ctx context.Context) error { return bus.Publish(ctx, benchEvent{}) }
		return assemble(ctx, p, s)
	}

	data := payload(size)
	topics := []string{p.topic}
	for i := 1; i < v.topics; i++ {
		topics = append(topics, fmt.Sprintf("%s.%d", p.topic, i))
	}
	topic := func(i int) string { return topics[i%len(topics)] }
	s.subscribe = func() error {
		for _, t := range topics {
			err := bus.Handle(t, benchGroup, func(_ context.Context, m *herald.Message) error {
				cnt.receive(len(m.Data), size)
				return nil
			}, opts...)
			if err != nil {
				return err
			}
		}
		return nil
	}
	s.publish = func(ctx context.Context, first, count int) error {
		if count == 1 {
			return bus.PublishMessages(ctx, &herald.Message{Topic: topic(first), Key: keys.of(first), Data: data})
		}
		msgs := make([]*herald.Message, count)
		for i := range msgs {
			msgs[i] = &herald.Message{Topic: topic(first + i), Key: keys.of(first + i), Data: data}
		}
		return bus.PublishMessages(ctx, msgs...)
	}
	s.warmUp = func(ctx context.Context) error {
		return bus.PublishMessages(ctx, &herald.Message{Topic: topics[0]})
	}
	return assemble(ctx, p, s)
}

// keySet hands out message keys: none, or cfg.keys distinct ones made
// before the clock starts so that building them is not measured.
type keySet []string

func benchKeys(cfg config, keyed bool) keySet {
	if !keyed {
		return nil
	}
	ks := make(keySet, cfg.keys)
	for i := range ks {
		ks[i] = fmt.Sprintf("key-%d", i)
	}
	return ks
}

func (ks keySet) of(i int) string {
	if len(ks) == 0 {
		return ""
	}
	return ks[i%len(ks)]
}

// payload returns n printable bytes, the same for both systems.
func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}
