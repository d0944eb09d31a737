package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/segmentio/ksuid"

	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// defaultAMQPURL is the broker of the rabbitmq scenario when
// HERALD_AMQP_URL is unset, as in the driver's tests.
const defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// The rabbitmq scenario's fixed settings.
const (
	// amqpBarePrefetch is the bare consumer's basic.qos prefetch count.
	amqpBarePrefetch = 1000
	// amqpWatermillPrefetch is Watermill's prefetch count in the rows
	// that raise it from its default, 1.
	amqpWatermillPrefetch = 100
	// amqpQueueType is the queue type of every side: herald's default,
	// quorum queues, which RabbitMQ recommends for data that must not be
	// lost.
	amqpQueueType = amqpdriver.QueueQuorum
)

// rabbitmqScenario compares AMQP 0-9-1 clients on the broker at
// HERALD_AMQP_URL: herald's amqpdriver behind its Bus, amqp091-go used by
// hand (the reference), and Watermill's watermill-amqp. Every side
// publishes persistent messages with publisher confirms to a durable
// exchange of the run's own and consumes with manual acknowledgments from
// a durable quorum queue bound to it, declared before the clock starts
// (RabbitMQ drops what reaches an exchange no queue is bound to).
func rabbitmqScenario() scenario {
	return scenario{
		name:   "rabbitmq",
		about:  "RabbitMQ: herald amqpdriver vs amqp091-go by hand vs Watermill watermill-amqp (quorum queues, publisher confirms)",
		cases:  rabbitmqCases,
		server: rabbitmqServer,
	}
}

func rabbitmqCases(cfg config) []benchCase {
	hd := heraldRabbitMQ(cfg)
	b, k, pubs := cfg.batch, cfg.keys, cfg.publishers
	c16, c64, slow := brokerConsumeConcurrency, brokerSlowConcurrency, brokerSlowWork
	wm := watermillAMQP(cfg, amqpWatermillPrefetch)
	backlog := brokerBacklogShare
	pool := fmt.Sprintf("ConfirmDelivery, ChannelPoolSize %d", pubs)

	// Shares of -n picked for about 2-4 s per run at the rates of a
	// 2-core machine, where the broker's own CPU is the limit.
	cases := []benchCase{
		heraldCase("herald-publish", "Writer via Bus.PublishMessages, 1 per call (confirm awaited)",
			hd, heraldVariant{mode: publishOnly}).in(brokerTablePublish).scaled(0.05),
		amqpPublishCase("amqp-publish",
			fmt.Sprintf("confirm-mode channel per publisher (%d) by hand, 1 per call, confirm awaited", pubs), cfg, false).
			in(brokerTablePublish).scaled(0.05),
		watermillCase("watermill-publish", fmt.Sprintf("amqp Publisher (%s), 1 per call", pool),
			wm, watermillVariant{mode: publishOnly}, true).in(brokerTablePublish).scaled(0.05),

		heraldCase("herald-publish-batch", fmt.Sprintf("Writer via Bus.PublishMessages, %d per call (confirms awaited)", b),
			hd, heraldVariant{mode: publishOnly, batched: true}).in(brokerTablePublishBatch).scaled(0.2),
		amqpPublishCase("amqp-publish-batch",
			fmt.Sprintf("confirm-mode channel per publisher (%d) by hand, %d per call, confirms awaited", pubs, b), cfg, true).
			in(brokerTablePublishBatch).scaled(0.2),
		watermillCase("watermill-publish-batch", fmt.Sprintf("amqp Publisher (%s), %d per call (one confirm after another)", pool, b),
			wm, watermillVariant{mode: publishOnly, batched: true}, true).in(brokerTablePublishBatch).scaled(0.05),

		heraldCase("herald-consume", fmt.Sprintf("Bus.Handle, concurrency 1, prefetch %d", amqpdriver.DefaultPrefetch),
			hd, heraldVariant{mode: consumeOnly}).in(brokerTableConsume).scaled(backlog),
		heraldCase("herald-consume-c16", fmt.Sprintf("Bus.Handle, concurrency %d, %d keys, prefetch %d", c16, k, amqpdriver.DefaultPrefetch),
			hd, heraldVariant{mode: consumeOnly, concurrency: c16, keyed: true}).in(brokerTableConsume).scaled(backlog),
		referenceCase("amqp-consume", "amqp091-go",
			fmt.Sprintf("Consume by hand, prefetch %d, Ack per message", amqpBarePrefetch), consumeOnly,
			func(ctx context.Context, p runParams) (*pipeline, error) { return setupAMQPConsumer(ctx, p, 1) }).
			in(brokerTableConsume).scaled(backlog),
		watermillCase("watermill-consume", fmt.Sprintf("amqp Subscriber + Router, prefetch %d", amqpWatermillPrefetch),
			wm, watermillVariant{mode: consumeOnly}, true).in(brokerTableConsume).scaled(backlog),
		watermillCase("watermill-consume-prefetch1", "amqp Subscriber + Router, prefetch 1 (its default)",
			watermillAMQP(cfg, 1), watermillVariant{mode: consumeOnly}, false).in(brokerTableConsume).scaled(0.1),
	}
	slowRows := []benchCase{
		heraldCase("herald-slow-c64", fmt.Sprintf("Bus.Handle, concurrency %d, %d keys, prefetch %d", c64, k, amqpdriver.DefaultPrefetch),
			hd, heraldVariant{mode: consumeOnly, concurrency: c64, keyed: true, work: slow}).in(brokerTableSlow).scaled(0.25),
		workersReference("amqp-slow-c64", "amqp091-go",
			fmt.Sprintf("Consume by hand, prefetch %d, %d worker goroutines, Ack after the sleep", amqpBarePrefetch, c64),
			c64, slow, func(ctx context.Context, p runParams) (*pipeline, error) {
				return setupAMQPConsumer(ctx, p, c64)
			}).in(brokerTableSlow).scaled(0.25),
		// Watermill's AMQP subscriber hands the Router one message per
		// Subscribe and waits for its ack: 64 handlers, each subscribing.
		watermillCase("watermill-slow",
			fmt.Sprintf("amqp Subscriber + Router, %d handlers on the queue, prefetch %d", c64, amqpWatermillPrefetch),
			wm, watermillVariant{mode: consumeOnly, work: slow, concurrency: c64, handlers: c64}, true).in(brokerTableSlow).scaled(0.25),
	}
	return slices.Concat(cases, slowRows, sleeperCeilings(slowRows))
}

// dialAMQP connects to the scenario's broker.
func dialAMQP(cfg config) (*amqp.Connection, error) {
	conn, err := amqp.DialConfig(cfg.amqpURL, amqp.Config{
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Properties: amqp.Table{"connection_name": "herald bench"},
	})
	if err != nil {
		return nil, fmt.Errorf("rabbitmq at %s (HERALD_AMQP_URL): %w", redactURL(cfg.amqpURL), err)
	}
	return conn, nil
}

// redactURL hides the password of an AMQP URL.
func redactURL(raw string) string {
	u, err := amqp.ParseURI(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.Password != "" {
		u.Password = "xxx"
	}
	return u.String()
}

// rabbitmqServer checks that the broker answers and names its version.
func rabbitmqServer(_ context.Context, cfg config) (string, error) {
	conn, err := dialAMQP(cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	product, _ := conn.Properties["product"].(string)
	version, _ := conn.Properties["version"].(string)
	if version == "" {
		version = "(version unknown)"
	}
	return fmt.Sprintf("%s %s at %s", product, version, redactURL(cfg.amqpURL)), nil
}

// amqpAdmin declares, counts and deletes a run's exchange and queue on a
// connection of its own.
type amqpAdmin struct {
	conn *amqp.Connection
}

func newAMQPAdmin(cfg config) (*amqpAdmin, error) {
	conn, err := dialAMQP(cfg)
	if err != nil {
		return nil, err
	}
	return &amqpAdmin{conn: conn}, nil
}

// do runs f on a channel of its own: a failed operation closes its channel.
func (a *amqpAdmin) do(f func(ch *amqp.Channel) error) error {
	ch, err := a.conn.Channel()
	if err != nil {
		return err
	}
	err = f(ch)
	if ch.IsClosed() {
		return err
	}
	return errors.Join(err, ch.Close())
}

// declare declares a durable topic exchange and a durable queue of
// amqpQueueType bound to it with "#", the topology herald's driver
// declares for a topic and a group.
func (a *amqpAdmin) declare(exchange, queue string) error {
	return a.do(func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s: %w", exchange, err)
		}
		if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": amqpQueueType.String()}); err != nil {
			return fmt.Errorf("declare queue %s: %w", queue, err)
		}
		if err := ch.QueueBind(queue, "#", exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %s: %w", queue, err)
		}
		return nil
	})
}

// queueLen counts the messages ready in queue.
func (a *amqpAdmin) queueLen(queue string) func(ctx context.Context) (int, error) {
	return func(context.Context) (int, error) {
		var n int
		err := a.do(func(ch *amqp.Channel) error {
			q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
			n = q.Messages
			return err
		})
		return n, err
	}
}

// remove deletes queue and exchange, and closes the connection.
func (a *amqpAdmin) remove(queue, exchange string) error {
	err := a.do(func(ch *amqp.Channel) error {
		if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
			return fmt.Errorf("delete queue %s: %w", queue, err)
		}
		if err := ch.ExchangeDelete(exchange, false, false); err != nil {
			return fmt.Errorf("delete exchange %s: %w", exchange, err)
		}
		return nil
	})
	return errors.Join(err, a.conn.Close())
}

// heraldRabbitMQ gives each herald run a driver of its own with its
// defaults (quorum queues, prefetch 256). The group's queue is declared
// in set-up by a Subscribe that is closed at once, the declaration
// herald's driver makes, so that a publish-only run's messages and a
// consume-only run's backlog are kept.
func heraldRabbitMQ(cfg config) heraldDriverFunc {
	return func(ctx context.Context, topic string, _ func(error)) (heraldBackend, error) {
		admin, err := newAMQPAdmin(cfg)
		if err != nil {
			return heraldBackend{}, err
		}
		d, err := amqpdriver.New(cfg.amqpURL, amqpdriver.WithConnectionName("herald bench"))
		if err != nil {
			return heraldBackend{}, errors.Join(err, admin.conn.Close())
		}
		queue, exchange := d.QueueName(topic, benchGroup), d.ExchangeName(topic)
		release := func(ctx context.Context) error { return errors.Join(d.Close(), admin.remove(queue, exchange)) }
		sub, err := d.Subscribe(ctx, topic, benchGroup)
		if err == nil {
			err = sub.Close(ctx)
		}
		if err != nil {
			return heraldBackend{}, errors.Join(err, release(ctx))
		}
		return heraldBackend{driver: d, stored: admin.queueLen(queue), release: release}, nil
	}
}

// confirmPool is a set of confirm-mode channels on one connection, one per
// publishing goroutine: a publish call takes one, publishes its messages,
// waits for their confirms and gives it back.
type confirmPool struct {
	conn     *amqp.Connection
	channels chan *amqp.Channel
}

func newConfirmPool(cfg config, size int) (*confirmPool, error) {
	conn, err := dialAMQP(cfg)
	if err != nil {
		return nil, err
	}
	p := &confirmPool{conn: conn, channels: make(chan *amqp.Channel, size)}
	for range size {
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Confirm(false)
		}
		if err != nil {
			return nil, errors.Join(err, conn.Close())
		}
		p.channels <- ch
	}
	return p, nil
}

// publish publishes msgs to exchange and waits for every confirm.
func (p *confirmPool) publish(ctx context.Context, exchange string, msgs []amqp.Publishing) error {
	var ch *amqp.Channel
	select {
	case ch = <-p.channels:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { p.channels <- ch }()
	confirms := make([]*amqp.DeferredConfirmation, len(msgs))
	for i, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, "", false, false, m)
		if err != nil {
			return err
		}
		confirms[i] = dc
	}
	for _, dc := range confirms {
		ack, err := dc.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ack {
			return errors.New("the broker refused a message (basic.nack)")
		}
	}
	return nil
}

func (p *confirmPool) close() error { return p.conn.Close() }

// amqpBare is amqp091-go used by hand on a run's exchange and queue of
// its own, declared in set-up as herald's driver declares its own.
type amqpBare struct {
	admin           *amqpAdmin
	pool            *confirmPool
	exchange, queue string
	data            []byte
}

func newAMQPBare(cfg config, topic string) (*amqpBare, error) {
	admin, err := newAMQPAdmin(cfg)
	if err != nil {
		return nil, err
	}
	b := &amqpBare{admin: admin, exchange: topic, queue: topic + "@" + benchGroup, data: payload(cfg.payloadBytes)}
	if err := admin.declare(b.exchange, b.queue); err != nil {
		return nil, errors.Join(err, admin.remove(b.queue, b.exchange))
	}
	if b.pool, err = newConfirmPool(cfg, cfg.publishers); err != nil {
		return nil, errors.Join(err, admin.remove(b.queue, b.exchange))
	}
	return b, nil
}

// publish sends count messages with what herald's driver sends for a raw
// message without key or content type: persistent, the ID as message-id,
// the time as timestamp and in nanoseconds in a header, the payload.
func (b *amqpBare) publish(ctx context.Context, _, count int) error {
	ids := ksuid.Sequence{Seed: ksuid.New()}
	now := time.Now()
	nanos := strconv.FormatInt(now.UnixNano(), 10)
	msgs := make([]amqp.Publishing, count)
	for i := range msgs {
		id, err := ids.Next()
		if err != nil {
			return err
		}
		msgs[i] = amqp.Publishing{
			Headers:      amqp.Table{amqpdriver.HeaderTimeNanos: nanos},
			DeliveryMode: amqp.Persistent,
			MessageId:    id.String(),
			Timestamp:    now,
			Body:         b.data,
		}
	}
	return b.pool.publish(ctx, b.exchange, msgs)
}

func (b *amqpBare) warmUp(ctx context.Context) error {
	return b.pool.publish(ctx, b.exchange, []amqp.Publishing{{DeliveryMode: amqp.Persistent}})
}

func (b *amqpBare) release(context.Context) error {
	return errors.Join(b.pool.close(), b.admin.remove(b.queue, b.exchange))
}

// amqpPublishCase is a publish reference: a confirm-mode channel per
// publishing goroutine, each call's messages published and then their
// confirms awaited.
func amqpPublishCase(id, label string, cfg config, batched bool) benchCase {
	return referenceCase(id, "amqp091-go", label, publishOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		b, err := newAMQPBare(cfg, p.topic)
		if err != nil {
			return nil, err
		}
		return assemble(ctx, p, stages{
			mode:     publishOnly,
			batch:    cfg.perCall(batched),
			counter:  newCounter(p.n, 0),
			publish:  b.publish,
			warmUp:   b.warmUp,
			stored:   b.admin.queueLen(b.queue),
			teardown: b.release,
		})
	})
}

// setupAMQPConsumer builds a run of the bare consumer: a channel on a
// connection of its own, prefetch amqpBarePrefetch, consuming from the
// clock's start with manual acknowledgments, and workers goroutines
// reading its deliveries (with more than one, each sleeps the slow
// table's 1 ms before it acknowledges).
func setupAMQPConsumer(ctx context.Context, p runParams, workers int) (*pipeline, error) {
	cfg := p.cfg
	b, err := newAMQPBare(cfg, p.topic)
	if err != nil {
		return nil, err
	}
	cnt := newCounter(p.n, workOf(workers))
	var (
		conn *amqp.Connection
		wg   sync.WaitGroup
	)
	return assemble(ctx, p, stages{
		mode:      consumeOnly,
		counter:   cnt,
		publish:   b.publish,
		subscribe: func() error { return nil },
		start: func(context.Context) error {
			if conn, err = dialAMQP(cfg); err != nil {
				return err
			}
			deliveries, err := consumeQueue(conn, b.queue)
			if err != nil {
				return err
			}
			for range workers {
				wg.Go(func() { handleDeliveries(deliveries, cnt, cfg.payloadBytes) })
			}
			return nil
		},
		teardown: func(ctx context.Context) error {
			var errs []error
			if conn != nil {
				// Closing the connection ends the deliveries, and so the
				// workers.
				errs = append(errs, conn.Close())
				wg.Wait()
			}
			return errors.Join(append(errs, b.release(ctx))...)
		},
	})
}

// consumeQueue opens a channel with prefetch amqpBarePrefetch and consumes
// queue with manual acknowledgments.
func consumeQueue(conn *amqp.Connection, queue string) (<-chan amqp.Delivery, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Qos(amqpBarePrefetch, 0, false); err != nil {
		return nil, err
	}
	return ch.Consume(queue, "", false, false, false, false, nil)
}

// handleDeliveries checks, handles (the counter's work), acknowledges and
// counts deliveries until the channel closes.
func handleDeliveries(deliveries <-chan amqp.Delivery, cnt *counter, size int) {
	for d := range deliveries {
		if len(d.Body) != size {
			cnt.fail(fmt.Errorf("consumer got a %d-byte body, want %d", len(d.Body), size))
		}
		cnt.handleThen(func() {
			if err := d.Ack(false); err != nil {
				cnt.fail(fmt.Errorf("ack: %w", err))
			}
		})
	}
}

// watermillAMQP gives each Watermill run a publisher and a subscriber on
// NewDurablePubSubConfig (a durable fanout exchange named after the topic,
// a durable queue per consumer group) with the settings that make it
// fair: quorum queues as on the other sides, publisher confirms
// (ConfirmDelivery) on a pool of one channel per publishing goroutine (its
// default opens a channel per Publish), and prefetch as given (its
// default is 1). The queue is declared in set-up (SubscribeInitialize), so
// that a publish-only run's messages are kept; a consume-only run's
// backlog is published with Watermill's marshaler through a confirm pool
// of the set-up's own, which does not wait for each confirm in turn.
func watermillAMQP(cfg config, prefetch int) watermillPubSubFunc {
	return func(ctx context.Context, topic string) (watermillBackend, error) {
		conf := wmamqp.NewDurablePubSubConfig(cfg.amqpURL, wmamqp.GenerateQueueNameTopicNameWithSuffix(benchGroup))
		conf.Queue.Arguments = amqp.Table{"x-queue-type": amqpQueueType.String()}
		conf.Publish.ConfirmDelivery = true
		conf.Publish.ChannelPoolSize = cfg.publishers
		conf.Consume.Qos.PrefetchCount = prefetch
		queue, exchange := conf.Queue.GenerateName(topic), conf.Exchange.GenerateName(topic)

		admin, err := newAMQPAdmin(cfg)
		if err != nil {
			return watermillBackend{}, err
		}
		var closers []func() error
		release := func(context.Context) error {
			var errs []error
			for i := len(closers) - 1; i >= 0; i-- {
				errs = append(errs, closers[i]())
			}
			return errors.Join(append(errs, admin.remove(queue, exchange))...)
		}
		abandon := func(err error) (watermillBackend, error) {
			return watermillBackend{}, errors.Join(err, release(ctx))
		}
		pub, err := wmamqp.NewPublisher(conf, watermill.NopLogger{})
		if err != nil {
			return abandon(err)
		}
		closers = append(closers, pub.Close)
		sub, err := wmamqp.NewSubscriber(conf, watermill.NopLogger{})
		if err != nil {
			return abandon(err)
		}
		if err := sub.SubscribeInitialize(topic); err != nil {
			return abandon(errors.Join(err, sub.Close()))
		}
		fill, err := newConfirmPool(cfg, cfg.publishers)
		if err != nil {
			return abandon(errors.Join(err, sub.Close()))
		}
		closers = append(closers, fill.close)
		data := payload(cfg.payloadBytes)
		return watermillBackend{
			pub:     pub,
			sub:     sub,
			stored:  admin.queueLen(queue),
			release: release,
			fill: func(ctx context.Context, _, count int) error {
				msgs := make([]amqp.Publishing, count)
				for i := range msgs {
					m, err := wmamqp.DefaultMarshaler{}.Marshal(message.NewMessage(watermill.NewUUID(), data))
					if err != nil {
						return err
					}
					msgs[i] = m
				}
				return fill.publish(ctx, exchange, msgs)
			},
		}, nil
	}
}
