package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/heraldbus/herald"
)

// heraldDriverFunc returns a fresh driver for one run and the function that
// releases it after the bus has shut down. Scenarios differ only in it.
type heraldDriverFunc func(ctx context.Context) (d herald.Driver, release func() error, err error)

// heraldVariant is how one herald row publishes and consumes.
type heraldVariant struct {
	// typed publishes a registered struct through Bus.Publish (JSON codec)
	// and subscribes with herald.Subscribe; otherwise raw messages go
	// through Bus.PublishMessages and Bus.Handle.
	typed bool
	// batched puts cfg.batch messages in each publish call instead of one.
	batched bool
	// parallel runs cfg.concurrency handlers at once instead of one.
	parallel bool
	// keyed gives message i the key i mod cfg.keys instead of no key.
	keyed bool
}

// benchEvent is the typed event: a Body of cfg.payloadBytes characters, so
// its JSON encoding is the raw payload plus a few bytes of framing.
type benchEvent struct {
	Key  string `json:"key,omitempty"`
	Body string `json:"body"`
}

// benchGroup is the consumer group of every herald subscriber.
const benchGroup = "bench"

// heraldCase measures herald's Bus over the driver newDriver returns.
func heraldCase(id, label string, newDriver heraldDriverFunc, v heraldVariant) benchCase {
	return benchCase{
		id:     id,
		system: "herald",
		label:  label,
		setup: func(ctx context.Context, p runParams) (*pipeline, error) {
			return setupHerald(ctx, p, newDriver, v)
		},
	}
}

func setupHerald(ctx context.Context, p runParams, newDriver heraldDriverFunc, v heraldVariant) (*pipeline, error) {
	cfg := p.cfg
	d, release, err := newDriver(ctx)
	if err != nil {
		return nil, err
	}
	cnt := newCounter(p.n)
	warm := newSignalOnce()
	bus := herald.NewBus(d,
		herald.WithLogger(slog.New(slog.DiscardHandler)),
		herald.WithErrorHandler(func(err error) { cnt.fail(fmt.Errorf("bus reported: %w", err)) }),
	)
	teardown := func(ctx context.Context) error {
		return errors.Join(bus.Shutdown(ctx), release())
	}

	concurrency := 1
	if v.parallel {
		concurrency = cfg.concurrency
	}
	keys := benchKeys(cfg, v.keyed)
	batch := 1
	if v.batched {
		batch = cfg.batch
	}

	var publish func(ctx context.Context, first, count int) error
	var sendWarmUp func(ctx context.Context) error
	if v.typed {
		body := string(payload(cfg.payloadBytes))
		err = errors.Join(
			herald.Register[benchEvent](bus, p.topic, herald.WithKey(func(e benchEvent) string { return e.Key })),
			herald.Subscribe(bus, benchGroup, func(_ context.Context, e benchEvent, _ *herald.Message) error {
				switch len(e.Body) {
				case 0:
					warm.fire()
					return nil
				case cfg.payloadBytes:
				default:
					cnt.fail(fmt.Errorf("handler got a %d-byte body, want %d", len(e.Body), cfg.payloadBytes))
				}
				cnt.add()
				return nil
			}, herald.WithConcurrency(concurrency)),
		)
		publish = func(ctx context.Context, first, count int) error {
			if count == 1 {
				return bus.Publish(ctx, benchEvent{Key: keys.of(first), Body: body})
			}
			events := make([]any, count)
			for i := range events {
				events[i] = benchEvent{Key: keys.of(first + i), Body: body}
			}
			return bus.Publish(ctx, events...)
		}
		sendWarmUp = func(ctx context.Context) error { return bus.Publish(ctx, benchEvent{}) }
	} else {
		data := payload(cfg.payloadBytes)
		err = bus.Handle(p.topic, benchGroup, func(_ context.Context, m *herald.Message) error {
			switch len(m.Data) {
			case 0:
				warm.fire()
				return nil
			case cfg.payloadBytes:
			default:
				cnt.fail(fmt.Errorf("handler got a %d-byte payload, want %d", len(m.Data), cfg.payloadBytes))
			}
			cnt.add()
			return nil
		}, herald.WithConcurrency(concurrency))
		topic := p.topic
		publish = func(ctx context.Context, first, count int) error {
			if count == 1 {
				return bus.PublishMessages(ctx, &herald.Message{Topic: topic, Key: keys.of(first), Data: data})
			}
			msgs := make([]*herald.Message, count)
			for i := range msgs {
				msgs[i] = &herald.Message{Topic: topic, Key: keys.of(first + i), Data: data}
			}
			return bus.PublishMessages(ctx, msgs...)
		}
		sendWarmUp = func(ctx context.Context) error {
			return bus.PublishMessages(ctx, &herald.Message{Topic: topic})
		}
	}
	if err == nil {
		err = bus.Start(ctx)
	}
	if err == nil {
		err = warmUp(ctx, sendWarmUp, warm.ch)
	}
	if err != nil {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
		defer cancel()
		return nil, errors.Join(err, teardown(closeCtx))
	}

	return &pipeline{
		run: func(ctx context.Context) error {
			if err := publishAll(ctx, p.n, cfg.publishers, batch, publish); err != nil {
				return err
			}
			return cnt.wait(ctx)
		},
		close: func(ctx context.Context) error {
			return errors.Join(teardown(ctx), cnt.check())
		},
	}, nil
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
