package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// watermillPubSubFunc returns a fresh Watermill publisher and subscriber
// for one run, and the function that releases them after the router has
// stopped. Scenarios differ only in it.
type watermillPubSubFunc func(ctx context.Context) (pub message.Publisher, sub message.Subscriber, release func() error, err error)

// watermillVariant is how one Watermill row publishes and consumes.
type watermillVariant struct {
	// batched puts cfg.batch messages in each Publish call instead of one.
	batched bool
	// json publishes benchEvent encoded with encoding/json and decodes it in
	// the handler: what herald's typed row does for the user.
	json bool
}

// watermillCase measures a Watermill Router with one consumer handler over
// the publisher and subscriber newPubSub returns. The Router runs one
// handler per message it receives; with a subscriber that waits for the
// ack before sending the next message, that is one message at a time.
func watermillCase(id, label string, newPubSub watermillPubSubFunc, v watermillVariant, baseline bool) benchCase {
	return benchCase{
		id:       id,
		system:   "Watermill",
		label:    label,
		baseline: baseline,
		setup: func(ctx context.Context, p runParams) (*pipeline, error) {
			return setupWatermill(ctx, p, newPubSub, v)
		},
	}
}

func setupWatermill(ctx context.Context, p runParams, newPubSub watermillPubSubFunc, v watermillVariant) (*pipeline, error) {
	cfg := p.cfg
	pub, sub, release, err := newPubSub(ctx)
	if err != nil {
		return nil, err
	}
	cnt := newCounter(p.n)
	warm := newSignalOnce()

	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.shutdownTimeout}, watermill.NopLogger{})
	if err != nil {
		return nil, errors.Join(err, release())
	}
	size := cfg.payloadBytes
	router.AddConsumerHandler("bench", p.topic, sub, func(msg *message.Message) error {
		got := len(msg.Payload)
		if v.json {
			var e benchEvent
			if err := json.Unmarshal(msg.Payload, &e); err != nil {
				cnt.fail(fmt.Errorf("decode message %s: %w", msg.UUID, err))
				return nil
			}
			got = len(e.Body)
		}
		switch got {
		case 0:
			warm.fire()
			return nil
		case size:
		default:
			cnt.fail(fmt.Errorf("handler got a %d-byte payload, want %d", got, size))
		}
		cnt.add()
		return nil
	})

	runDone := make(chan error, 1)
	go func() { runDone <- router.Run(context.WithoutCancel(ctx)) }()
	teardown := func(ctx context.Context) error {
		closeErr := router.Close()
		var runErr error
		select {
		case runErr = <-runDone:
		case <-ctx.Done():
			runErr = fmt.Errorf("router did not stop: %w", ctx.Err())
		}
		return errors.Join(closeErr, runErr, release())
	}
	abandon := func(err error) (*pipeline, error) {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
		defer cancel()
		return nil, errors.Join(err, teardown(closeCtx))
	}
	select {
	case <-router.Running():
	case err := <-runDone:
		return nil, errors.Join(fmt.Errorf("router stopped before running: %w", err), release())
	case <-time.After(30 * time.Second):
		return abandon(errors.New("router did not start in 30 s"))
	}

	data := payload(size)
	encode := func() ([]byte, error) { return data, nil }
	if v.json {
		body := string(data)
		encode = func() ([]byte, error) { return json.Marshal(benchEvent{Body: body}) }
	}
	batch := 1
	if v.batched {
		batch = cfg.batch
	}
	topic := p.topic
	publish := func(_ context.Context, _, count int) error {
		if count == 1 {
			b, err := encode()
			if err != nil {
				return err
			}
			return pub.Publish(topic, message.NewMessage(watermill.NewUUID(), b))
		}
		msgs := make([]*message.Message, count)
		for i := range msgs {
			b, err := encode()
			if err != nil {
				return err
			}
			msgs[i] = message.NewMessage(watermill.NewUUID(), b)
		}
		return pub.Publish(topic, msgs...)
	}

	sendWarmUp := func(context.Context) error {
		var empty []byte
		if v.json {
			var err error
			if empty, err = json.Marshal(benchEvent{}); err != nil {
				return err
			}
		}
		return pub.Publish(topic, message.NewMessage(watermill.NewUUID(), empty))
	}
	if err := warmUp(ctx, sendWarmUp, warm.ch); err != nil {
		return abandon(err)
	}

	return &pipeline{
		run: func(ctx context.Context) error {
			// Watermill's Publish takes no context, so a stuck publish is
			// bounded here; the teardown (Close) unblocks it.
			published := make(chan error, 1)
			go func() { published <- publishAll(ctx, p.n, cfg.publishers, batch, publish) }()
			select {
			case err := <-published:
				if err != nil {
					return err
				}
			case <-ctx.Done():
				return fmt.Errorf("publishing did not finish: %w", ctx.Err())
			}
			return cnt.wait(ctx)
		},
		close: func(ctx context.Context) error {
			return errors.Join(teardown(ctx), cnt.check())
		},
	}, nil
}
