package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/ksuid"

	"github.com/heraldbus/herald/nats/natsdriver"
)

// defaultNATSURL is the server of the nats scenario when HERALD_NATS_URL
// is unset, as in the driver's tests.
const defaultNATSURL = "nats://127.0.0.1:4222"

// The nats scenario's fixed settings.
const (
	// natsFetchBatch is the pull size of the bare consumer.
	natsFetchBatch = 500
	// natsFetchWait bounds one pull request of the bare consumer, as
	// herald's driver bounds its own (natsdriver.DefaultFetchWait).
	natsFetchWait = natsdriver.DefaultFetchWait
	// natsStreamPrefix and natsSubjectPrefix start the names of every
	// stream and subject herald's driver creates in the scenario, and of
	// its release bucket, so that they are told apart from an
	// application's; the bare client's and Watermill's streams are named
	// after the run's topic.
	natsStreamPrefix  = "HERALDBENCH_"
	natsSubjectPrefix = "heraldbench"
)

// natsScenario compares JetStream clients on the server at
// HERALD_NATS_URL: herald's natsdriver behind its Bus, nats.go's jetstream
// package used by hand (the reference), and Watermill's watermill-nats in
// JetStream mode. Every stream is a file-storage stream with one subject,
// one replica and the server's 2-minute duplicate window, created before
// the clock starts; every message carries a message ID the server
// deduplicates by (herald's Nats-Msg-Id; the bare client's the same;
// Watermill's TrackMsgId).
func natsScenario() scenario {
	return scenario{
		name:   "nats",
		about:  "NATS JetStream: herald natsdriver vs nats.go jetstream by hand vs Watermill watermill-nats (JetStream)",
		cases:  natsCases,
		server: natsServer,
	}
}

func natsCases(cfg config) []benchCase {
	hd := heraldNATS(cfg)
	b, k := cfg.batch, cfg.keys
	c16, c64, slow := brokerConsumeConcurrency, brokerSlowConcurrency, brokerSlowWork
	wm := watermillNATS(cfg, natsWatermillOptions{})
	backlog := brokerBacklogShare

	// Shares of -n picked for about 1-3 s per run at the rates of a
	// 2-core machine.
	cases := []benchCase{
		heraldCase("herald-publish", "Writer via Bus.PublishMessages, 1 per call",
			hd, heraldVariant{mode: publishOnly}).in(brokerTablePublish).scaled(0.25),
		natsPublishCase("nats-publish", "JetStream PublishMsg by hand, 1 per call, the headers herald writes", cfg, false).
			in(brokerTablePublish).scaled(0.25),
		watermillCase("watermill-publish", "nats Publisher (JetStream, TrackMsgId), 1 per call",
			wm, watermillVariant{mode: publishOnly}, true).in(brokerTablePublish).scaled(0.25),

		heraldCase("herald-publish-batch", fmt.Sprintf("Writer via Bus.PublishMessages, %d per call (async publishes, acks awaited)", b),
			hd, heraldVariant{mode: publishOnly, batched: true}).in(brokerTablePublishBatch),
		natsPublishCase("nats-publish-batch",
			fmt.Sprintf("JetStream PublishMsgAsync by hand, %d per call, acks awaited, the headers herald writes", b), cfg, true).
			in(brokerTablePublishBatch),
		watermillCase("watermill-publish-batch", fmt.Sprintf("nats Publisher (JetStream, TrackMsgId), %d per call (one PublishMsg after another)", b),
			wm, watermillVariant{mode: publishOnly, batched: true}, true).in(brokerTablePublishBatch).scaled(0.25),

		heraldCase("herald-consume", "Bus.Handle, concurrency 1",
			hd, heraldVariant{mode: consumeOnly}).in(brokerTableConsume).scaled(backlog),
		heraldCase("herald-consume-c16", fmt.Sprintf("Bus.Handle, concurrency %d, %d keys", c16, k),
			hd, heraldVariant{mode: consumeOnly, concurrency: c16, keyed: true}).in(brokerTableConsume).scaled(backlog),
		natsConsumeCase("nats-consume", fmt.Sprintf("pull consumer by hand, Fetch %d, Ack per message (not awaited)", natsFetchBatch),
			cfg, natsAck, true).in(brokerTableConsume).scaled(backlog),
		natsConsumeCase("nats-consume-doubleack",
			fmt.Sprintf("pull consumer by hand, Fetch %d, DoubleAck per message (each awaited before the next message)", natsFetchBatch),
			cfg, natsDoubleAck, false).in(brokerTableConsume).scaled(backlog),
		watermillCase("watermill-consume", "nats Subscriber (JetStream push consumer, AckSync) + Router",
			wm, watermillVariant{mode: consumeOnly}, true).in(brokerTableConsume).scaled(backlog),
		watermillCase("watermill-consume-ackasync", "nats Subscriber (JetStream push consumer, AckAsync) + Router",
			watermillNATS(cfg, natsWatermillOptions{ackAsync: true}), watermillVariant{mode: consumeOnly}, false).
			in(brokerTableConsume).scaled(backlog),
	}
	slowRows := []benchCase{
		heraldCase("herald-slow-c64", fmt.Sprintf("Bus.Handle, concurrency %d, %d keys", c64, k),
			hd, heraldVariant{mode: consumeOnly, concurrency: c64, keyed: true, work: slow}).in(brokerTableSlow).scaled(0.25),
		workersReference("nats-slow-c64", "nats.go",
			fmt.Sprintf("pull consumer by hand, Fetch %d, %d worker goroutines, Ack after the sleep", c64, c64),
			c64, slow, func(ctx context.Context, p runParams) (*pipeline, error) {
				return setupNATSConsumer(ctx, p, natsAck, c64)
			}).in(brokerTableSlow).scaled(0.25),
		watermillCase("watermill-slow", fmt.Sprintf("nats Subscriber (JetStream push consumer, AckSync, SubscribersCount %d) + Router", c64),
			watermillNATS(cfg, natsWatermillOptions{subscribers: c64}),
			watermillVariant{mode: consumeOnly, work: slow, concurrency: c64}, true).in(brokerTableSlow).scaled(0.25),
	}
	return slices.Concat(cases, slowRows, sleeperCeilings(slowRows))
}

// natsServer checks that the server answers with JetStream on and names
// its version.
func natsServer(ctx context.Context, cfg config) (string, error) {
	c, err := dialNATS(cfg)
	if err != nil {
		return "", err
	}
	defer c.close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.js.AccountInfo(ctx); err != nil {
		return "", fmt.Errorf("nats at %s (HERALD_NATS_URL) has no JetStream: %w", cfg.natsURL, err)
	}
	return fmt.Sprintf("NATS %s with JetStream at %s", c.nc.ConnectedServerVersion(), cfg.natsURL), nil
}

// natsConn is one connection and its JetStream context.
type natsConn struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// dialNATS connects to the scenario's server.
func dialNATS(cfg config) (*natsConn, error) {
	nc, err := nats.Connect(cfg.natsURL, nats.Name("herald bench"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("nats at %s (HERALD_NATS_URL): %w", cfg.natsURL, err)
	}
	// The fill of a consume case has -publishers of 1000 messages in
	// flight, beyond nats.go's default of 4000 pending asynchronous
	// publishes: on a busy machine the stall it imposes then ends in an
	// error. The timed publish cases keep 100 per publisher in flight, so the
	// limit does not bear on them.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*fillBatch*max(cfg.publishers, 1)))
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &natsConn{nc: nc, js: js}, nil
}

func (c *natsConn) close() { c.nc.Close() }

// createStream creates the stream name taking subject, with the settings
// herald's driver gives the streams it creates.
func (c *natsConn) createStream(ctx context.Context, name, subject string) error {
	_, err := c.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{subject},
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		Duplicates: natsdriver.DefaultDuplicateWindow,
	})
	if err != nil {
		return fmt.Errorf("create stream %s: %w", name, err)
	}
	return nil
}

// streamLen counts the messages the stream name holds.
func (c *natsConn) streamLen(name string) func(ctx context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		s, err := c.js.Stream(ctx, name)
		if err != nil {
			return 0, err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return 0, err
		}
		return int(info.State.Msgs), nil
	}
}

// deleteStream deletes the stream name, and with it its consumers; a
// stream that was never created is no error.
func (c *natsConn) deleteStream(ctx context.Context, name string) error {
	if err := c.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream %s: %w", name, err)
	}
	return nil
}

// deleteBucket deletes the key-value bucket name, if it exists.
func (c *natsConn) deleteBucket(ctx context.Context, name string) error {
	if err := c.js.DeleteKeyValue(ctx, name); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("delete bucket %s: %w", name, err)
	}
	return nil
}

// heraldNATS gives each herald run a connection and a driver of its own
// with the driver's defaults, but names that start with natsStreamPrefix
// and a release bucket of the run's own (the driver creates it on the
// first Subscribe), deleted with the stream.
func heraldNATS(cfg config) heraldDriverFunc {
	return func(ctx context.Context, topic string, report func(error)) (heraldBackend, error) {
		c, err := dialNATS(cfg)
		if err != nil {
			return heraldBackend{}, err
		}
		bucket := natsStreamPrefix + "REL_" + natsdriver.Token(topic)
		d, err := natsdriver.New(c.js,
			natsdriver.WithStreamPrefix(natsStreamPrefix),
			natsdriver.WithSubjectPrefix(natsSubjectPrefix),
			natsdriver.WithReleaseBucket(bucket),
			natsdriver.WithErrorHandler(report),
		)
		if err != nil {
			c.close()
			return heraldBackend{}, err
		}
		stream := d.StreamName(topic)
		return heraldBackend{
			driver: d,
			stored: c.streamLen(stream),
			release: func(ctx context.Context) error {
				defer c.close()
				return errors.Join(d.Close(), c.deleteStream(ctx, stream), c.deleteBucket(ctx, bucket))
			},
		}, nil
	}
}

// natsBare is nats.go's jetstream package used by hand on a run's stream
// of its own, created in set-up.
type natsBare struct {
	conn    *natsConn
	stream  string
	subject string
	data    []byte
}

func newNATSBare(ctx context.Context, cfg config, topic string) (*natsBare, error) {
	c, err := dialNATS(cfg)
	if err != nil {
		return nil, err
	}
	b := &natsBare{conn: c, stream: natsdriver.Token(topic), subject: natsdriver.Token(topic), data: payload(cfg.payloadBytes)}
	if err := c.createStream(ctx, b.stream, b.subject); err != nil {
		c.close()
		return nil, err
	}
	return b, nil
}

// message is what herald's driver publishes for a raw message without
// key or content type: the payload, the ID as Nats-Msg-Id and the time.
func (b *natsBare) message(id ksuid.KSUID, now string) *nats.Msg {
	h := make(nats.Header, 2)
	h[jetstream.MsgIDHeader] = []string{id.String()}
	h["Herald-Time"] = []string{now}
	return &nats.Msg{Subject: b.subject, Header: h, Data: b.data}
}

// publish sends count messages: one PublishMsg, which waits for its
// acknowledgment, or as many PublishMsgAsync calls and then a wait for
// every acknowledgment.
func (b *natsBare) publish(ctx context.Context, _, count int) error {
	ids := ksuid.Sequence{Seed: ksuid.New()}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	if count == 1 {
		id, err := ids.Next()
		if err != nil {
			return err
		}
		_, err = b.conn.js.PublishMsg(ctx, b.message(id, now))
		return err
	}
	futures := make([]jetstream.PubAckFuture, count)
	for i := range futures {
		id, err := ids.Next()
		if err != nil {
			return err
		}
		if futures[i], err = b.conn.js.PublishMsgAsync(b.message(id, now)); err != nil {
			return err
		}
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (b *natsBare) warmUp(ctx context.Context) error {
	_, err := b.conn.js.PublishMsg(ctx, &nats.Msg{Subject: b.subject})
	return err
}

func (b *natsBare) release(ctx context.Context) error {
	defer b.conn.close()
	return b.conn.deleteStream(ctx, b.stream)
}

// natsPublishCase is the publish reference: PublishMsg per call of one
// message, PublishMsgAsync and a wait for the acknowledgments per call of
// more, on one connection shared by the publishers as herald's driver
// shares its own.
func natsPublishCase(id, label string, cfg config, batched bool) benchCase {
	return referenceCase(id, "nats.go", label, publishOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		b, err := newNATSBare(ctx, cfg, p.topic)
		if err != nil {
			return nil, err
		}
		return assemble(ctx, p, stages{
			mode:     publishOnly,
			batch:    cfg.perCall(batched),
			counter:  newCounter(p.n, 0),
			publish:  b.publish,
			warmUp:   b.warmUp,
			stored:   b.conn.streamLen(b.stream),
			teardown: b.release,
		})
	})
}

// natsAckFunc acknowledges one message of the bare consumer.
type natsAckFunc func(ctx context.Context, msg jetstream.Msg) error

// natsAck sends the acknowledgment and does not wait for the server.
func natsAck(_ context.Context, msg jetstream.Msg) error { return msg.Ack() }

// natsDoubleAck sends the acknowledgment and waits for the server to
// confirm it.
func natsDoubleAck(ctx context.Context, msg jetstream.Msg) error { return msg.DoubleAck(ctx) }

// natsConsumeCase is a bare consumer row, the consume reference when
// reference is set: a durable pull consumer created when the clock starts
// (as herald's is), Fetch in a loop and an acknowledgment per message.
func natsConsumeCase(id, label string, cfg config, ack natsAckFunc, reference bool) benchCase {
	c := referenceCase(id, "nats.go", label, consumeOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		return setupNATSConsumer(ctx, p, ack, 1)
	})
	c.reference = reference
	return c
}

// setupNATSConsumer builds a run of the bare consumer with workers
// handlers: one handles each fetched message in turn; more take the
// messages from a channel, Fetch asking for as many as there are workers.
func setupNATSConsumer(ctx context.Context, p runParams, ack natsAckFunc, workers int) (*pipeline, error) {
	cfg := p.cfg
	b, err := newNATSBare(ctx, cfg, p.topic)
	if err != nil {
		return nil, err
	}
	cnt := newCounter(p.n, workOf(workers))
	var (
		stop context.CancelFunc = func() {}
		wg   sync.WaitGroup
	)
	return assemble(ctx, p, stages{
		mode:      consumeOnly,
		counter:   cnt,
		publish:   b.publish,
		subscribe: func() error { return nil },
		start: func(ctx context.Context) error {
			cons, err := b.conn.js.CreateOrUpdateConsumer(ctx, b.stream, jetstream.ConsumerConfig{
				Durable:       benchGroup,
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       natsdriver.DefaultAckWait,
				MaxDeliver:    -1,
				FilterSubject: b.subject,
			})
			if err != nil {
				return err
			}
			readCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			stop = cancel
			r := natsReader{cons: cons, cnt: cnt, ack: ack, size: cfg.payloadBytes}
			if workers == 1 {
				wg.Go(func() { r.readInline(readCtx) })
			} else {
				wg.Go(func() { r.readToWorkers(readCtx, workers) })
			}
			return nil
		},
		teardown: func(ctx context.Context) error {
			stop()
			wg.Wait()
			return b.release(ctx)
		},
	})
}

// natsReader is the bare consumer's loop.
type natsReader struct {
	cons jetstream.Consumer
	cnt  *counter
	ack  natsAckFunc
	size int
}

// fetch pulls up to n messages and hands each to f, until the stream
// has no more for one fetch wait; it reports whether to go on.
func (r natsReader) fetch(ctx context.Context, n int, f func(jetstream.Msg)) bool {
	batch, err := r.cons.Fetch(n, jetstream.FetchMaxWait(natsFetchWait))
	if err != nil {
		r.cnt.fail(fmt.Errorf("fetch: %w", err))
		return false
	}
	for msg := range batch.Messages() {
		f(msg)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
		r.cnt.fail(fmt.Errorf("fetch: %w", err))
		return false
	}
	return ctx.Err() == nil
}

// handle checks, acknowledges and counts one message.
func (r natsReader) handle(ctx context.Context, msg jetstream.Msg) {
	if len(msg.Data()) != r.size {
		r.cnt.fail(fmt.Errorf("consumer got a %d-byte payload, want %d", len(msg.Data()), r.size))
	}
	r.cnt.handleThen(func() {
		if err := r.ack(ctx, msg); err != nil && ctx.Err() == nil {
			r.cnt.fail(fmt.Errorf("ack: %w", err))
		}
	})
}

// readInline handles every message in the fetching goroutine.
func (r natsReader) readInline(ctx context.Context) {
	for r.cnt.handled.Load() < r.cnt.target {
		if !r.fetch(ctx, natsFetchBatch, func(msg jetstream.Msg) { r.handle(ctx, msg) }) {
			return
		}
	}
}

// readToWorkers hands the messages to workers goroutines, fetching as
// many at a time, until the run's count has been handed out.
func (r natsReader) readToWorkers(ctx context.Context, workers int) {
	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for msg := range msgs {
				r.handle(ctx, msg)
			}
		})
	}
	defer wg.Wait()
	defer close(msgs)
	var handed int64
	for handed < r.cnt.target {
		ok := r.fetch(ctx, workers, func(msg jetstream.Msg) {
			select {
			case msgs <- msg:
				handed++
			case <-ctx.Done():
			}
		})
		if !ok {
			return
		}
	}
}

// natsWatermillOptions are the Watermill subscriber settings of a row.
type natsWatermillOptions struct {
	subscribers int  // SubscribersCount: messages in flight (0 means 1)
	ackAsync    bool // JetStreamConfig.AckAsync: acknowledgments not awaited
}

// watermillNATS gives each Watermill run a publisher and a subscriber
// with a connection each, in JetStream mode, on a stream the set-up
// creates (named after the run's topic, which is also its subject) with
// the settings of herald's streams: AutoProvision would ask the server
// for the stream's info before every Publish. Messages carry their UUID
// as Nats-Msg-Id (TrackMsgId), as herald's and the bare client's carry an
// ID. The subscriber is a durable queue subscription (push consumer).
func watermillNATS(cfg config, o natsWatermillOptions) watermillPubSubFunc {
	return func(ctx context.Context, topic string) (watermillBackend, error) {
		c, err := dialNATS(cfg)
		if err != nil {
			return watermillBackend{}, err
		}
		name := natsdriver.Token(topic)
		if err := c.createStream(ctx, name, name); err != nil {
			c.close()
			return watermillBackend{}, err
		}
		abandon := func(err error) (watermillBackend, error) {
			defer c.close()
			return watermillBackend{}, errors.Join(err, c.deleteStream(ctx, name))
		}
		js := wmnats.JetStreamConfig{
			TrackMsgId:       true,
			AckAsync:         o.ackAsync,
			DurablePrefix:    benchGroup,
			SubscribeOptions: []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit()},
		}
		pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{URL: cfg.natsURL, JetStream: js}, watermill.NopLogger{})
		if err != nil {
			return abandon(err)
		}
		sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
			URL:              cfg.natsURL,
			QueueGroupPrefix: benchGroup,
			SubscribersCount: max(o.subscribers, 1),
			CloseTimeout:     cfg.shutdownTimeout,
			JetStream:        js,
		}, watermill.NopLogger{})
		if err != nil {
			return abandon(errors.Join(err, pub.Close()))
		}
		return watermillBackend{
			pub:    pub,
			sub:    sub,
			topic:  name,
			stored: c.streamLen(name),
			release: func(ctx context.Context) error {
				defer c.close()
				return errors.Join(pub.Close(), c.deleteStream(ctx, name))
			},
		}, nil
	}
}
