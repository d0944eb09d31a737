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
	// sub is the subscriber; the run closes it (see closeOnce) before it
	// calls release.
	sub message.Subscriber
	// topic is the name to publish and subscribe under; empty means the
	// run's topic. (Watermill's Redis Streams use it as the stream key, so
	// a scenario may prefix it.)
	topic string
	// stored counts the messages the topic holds (the publish-only check);
	// nil skips the check.
	stored func(ctx context.Context) (int, error)
	// release frees what the run used once the router has stopped and the
	// subscriber is closed: it closes the publisher and deletes the run's
	// topic where the broker outlives the run.
	release func(ctx context.Context) error
	// statements, when set, counts the statements the subscriber's pool
	// has sent (see openCounted), for the idle rate.
	statements func() int64
	// fill, when set, fills the topic of a consume-only run in place of
	// the publisher (untimed): messages first..first+count-1 as the
	// publisher would encode them, sent faster than its Publish, which
	// waits for each message's confirm in turn.
	fill func(ctx context.Context, first, count int) error
}

// commitMarker is a publisher that publishes in a transaction of its own
// per call and can call a function just before each COMMIT, with the
// messages it carries: a paced row marked beforeCommit starts its latency
// there.
type commitMarker interface {
	markBeforeCommit(f func(msgs []*message.Message))
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
	// beforeCommit starts a paced row's latency just before the COMMIT of
	// each publishing transaction (the publisher must be a commitMarker).
	beforeCommit bool
	// handlers is how many consumer handlers the Router runs on the
	// topic, each subscribing once (0 means 1): the way to more than one
	// message in flight with a subscriber that hands over one message at
	// a time and waits for its ack (AMQP).
	handlers int
	// backlog, when above the run's message count, is how many rows a
	// consume-only run's topic holds: the rows past the counted ones are
	// published after them with empty payloads, which the handler ignores
	// (the subscriber reads the first n of a larger backlog).
	backlog int
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
	sub := &closeOnce{Subscriber: be.sub}
	cnt := newCounter(p.n, v.work)
	rt := &watermillRouter{closeTimeout: cfg.shutdownTimeout}
	send := newWatermillSender(be.pub, topic, v, payload(cfg.payloadBytes))
	if v.beforeCommit {
		m, ok := be.pub.(commitMarker)
		if !ok {
			return nil, errors.Join(fmt.Errorf("publisher %T cannot mark its commits", be.pub), sub.Close(), be.release(ctx))
		}
		m.markBeforeCommit(func(msgs []*message.Message) {
			for _, msg := range msgs {
				if i, err := strconv.Atoi(msg.UUID); err == nil {
					cnt.published(i)
				}
			}
		})
	}
	var afterFill func(ctx context.Context) error
	if extra := v.backlog - p.n; extra > 0 {
		afterFill = func(ctx context.Context) error {
			return publishBounded(ctx, extra, cfg.publishers, fillBatch, send.padding)
		}
	}
	publish := send.publish
	if v.mode == consumeOnly && be.fill != nil {
		publish = be.fill
	}
	return assemble(ctx, p, stages{
		mode:       v.mode,
		batch:      cfg.perCall(v.batched),
		rate:       v.rate,
		counter:    cnt,
		stored:     be.stored,
		afterFill:  afterFill,
		statements: be.statements,
		subscribe: func() error {
			return rt.subscribe(topic, sub, watermillHandler(cnt, cfg.payloadBytes, v.json), max(v.handlers, 1))
		},
		start: rt.start,
		teardown: func(ctx context.Context) error {
			return errors.Join(rt.stop(ctx), sub.Close(), be.release(ctx))
		},
		publish: publish,
		warmUp:  send.warmUp,
	})
}

// watermillHandler is the consumer handler of a run whose payloads have
// size bytes, encoded as benchEvent when asJSON is set. A paced run's
// messages carry their index as UUID, for the latency.
func watermillHandler(cnt *counter, size int, asJSON bool) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		got := len(msg.Payload)
		if asJSON {
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
	}
}

// watermillRouter is the Router of one run. It exists once subscribe ran
// (a publish-only run has none) and runs once start launched it. Set-up,
// run and teardown follow one another, so plain fields do.
type watermillRouter struct {
	closeTimeout time.Duration
	router       *message.Router
	launched     bool
	runDone      chan error
}

// subscribe makes the Router with handlers consumer handlers on topic,
// each subscribing once.
func (r *watermillRouter) subscribe(topic string, sub message.Subscriber, handler message.NoPublishHandlerFunc, handlers int) error {
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: r.closeTimeout}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	r.router = router
	r.runDone = make(chan error, 1)
	if handlers == 1 {
		router.AddConsumerHandler(benchGroup, topic, sub, handler)
		return nil
	}
	for i := range handlers {
		router.AddConsumerHandler(fmt.Sprintf("%s-%d", benchGroup, i), topic, sub, handler)
	}
	return nil
}

// start runs the Router, past the end of ctx (the teardown stops it), and
// returns once it is running.
func (r *watermillRouter) start(ctx context.Context) error {
	r.launched = true
	go func() { r.runDone <- r.router.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-r.router.Running():
		return nil
	case err := <-r.runDone:
		r.runDone <- err // for stop
		return fmt.Errorf("router stopped before running: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("router did not start: %w", ctx.Err())
	}
}

// stop closes the Router, if there is one, and waits for Run to return,
// if it was launched.
func (r *watermillRouter) stop(ctx context.Context) error {
	var err error
	if r.router != nil {
		err = r.router.Close()
	}
	if r.launched {
		select {
		case runErr := <-r.runDone:
			err = errors.Join(err, runErr)
		case <-ctx.Done():
			err = errors.Join(err, fmt.Errorf("router did not stop: %w", ctx.Err()))
		}
	}
	return err
}

// watermillSender publishes a run's messages: the payload, or for a JSON
// row a benchEvent whose Body it is, encoded per message as a user's code
// would.
type watermillSender struct {
	pub    message.Publisher
	topic  string
	asJSON bool
	paced  bool // a paced run: a single message carries its index as UUID
	encode func() ([]byte, error)
}

func newWatermillSender(pub message.Publisher, topic string, v watermillVariant, data []byte) watermillSender {
	s := watermillSender{pub: pub, topic: topic, asJSON: v.json, paced: v.mode == paced}
	s.encode = func() ([]byte, error) { return data, nil }
	if v.json {
		body := string(data)
		s.encode = func() ([]byte, error) { return json.Marshal(benchEvent{Body: body}) }
	}
	return s
}

// publish publishes messages first..first+count-1 in one Publish call.
func (s watermillSender) publish(_ context.Context, first, count int) error {
	if count == 1 {
		b, err := s.encode()
		if err != nil {
			return err
		}
		id := watermill.NewUUID()
		if s.paced {
			id = strconv.Itoa(first)
		}
		return s.pub.Publish(s.topic, message.NewMessage(id, b))
	}
	msgs := make([]*message.Message, count)
	for i := range msgs {
		b, err := s.encode()
		if err != nil {
			return err
		}
		msgs[i] = message.NewMessage(watermill.NewUUID(), b)
	}
	return s.pub.Publish(s.topic, msgs...)
}

// padding publishes count messages with empty payloads in one call: rows
// of a backlog the handler does not count.
func (s watermillSender) padding(_ context.Context, _, count int) error {
	msgs := make([]*message.Message, count)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), nil)
	}
	return s.pub.Publish(s.topic, msgs...)
}

// warmUp publishes one warm-up message: an empty payload, or an empty
// benchEvent for a JSON row.
func (s watermillSender) warmUp(context.Context) error {
	var empty []byte
	if s.asJSON {
		var err error
		if empty, err = json.Marshal(benchEvent{}); err != nil {
			return err
		}
	}
	return s.pub.Publish(s.topic, message.NewMessage(watermill.NewUUID(), empty))
}

// closeOnce makes a Watermill subscriber's Close run once, however many
// callers close it: the Router closes its handlers' subscribers from a
// goroutine of its own that can outlive Run, the run's teardown closes
// them too (a run without a Router has only that), and some subscribers
// (watermill-sql's) are not safe to close concurrently. The sync.Once also orders the two calls for the race
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
