package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/ksuid"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/kafka/kafkadriver"
)

// The Kafka scenario's fixed settings.
const (
	// kafkaPartitions is the partition count of every topic the scenario
	// creates.
	kafkaPartitions = 4
	// kafkaBatchSize is the most messages per partition in one produce
	// request, for herald's driver and the kafka-go reference alike.
	kafkaBatchSize = 1000
	// kafkaGoLinger is the kafka-go Writer's BatchTimeout in the reference
	// row: kafka-go holds a batch until it is full or this passes (0 means
	// its default, 1 s), so the smallest practical value.
	kafkaGoLinger = time.Millisecond
	// kafkaReaderCommitEvery is how many messages the kafka-go reader
	// reference commits at once.
	kafkaReaderCommitEvery = 1000
	// kafkaSlowWork is the slow handler's sleep.
	kafkaSlowWork = time.Millisecond
)

// The Kafka scenario's tables.
const (
	kafkaTablePublish = "publish"
	kafkaTableConsume = "consume, no-op handler"
	kafkaTableSlow    = "consume, handler sleeps 1 ms, 4 partitions"
)

// kafkaScenario compares Kafka clients: herald's kafkadriver behind its
// Bus, kafka-go used by hand (the reference), and Watermill's
// watermill-kafka (Sarama), on the cluster at HERALD_KAFKA_BROKERS or, when
// that is unset, an in-process kfake cluster the parent process starts once
// and every run (child processes included) shares.
func kafkaScenario() scenario {
	return scenario{
		name:   "kafka",
		about:  "Kafka: herald kafkadriver vs kafka-go by hand vs Watermill watermill-kafka (Sarama)",
		cases:  kafkaCases,
		server: kafkaServer,
		local:  startKfake,
	}
}

func kafkaCases(cfg config) []benchCase {
	hd, wm := heraldKafka(cfg), watermillKafka(cfg)
	b, k := cfg.batch, cfg.keys
	slow := kafkaSlowWork

	// Shares of -n picked for about 1-3 s per run on a 2-core machine, so
	// that the default run stays within about three minutes.
	cases := []benchCase{
		heraldCase("herald-publish", "Writer via Bus.PublishMessages, 1 per call",
			hd, heraldVariant{mode: publishOnly}).in(kafkaTablePublish).scaled(0.25),
		heraldCase("herald-publish-batch", fmt.Sprintf("Writer via Bus.PublishMessages, %d per call", b),
			hd, heraldVariant{mode: publishOnly, batched: true}).in(kafkaTablePublish).scaled(2),
		kafkaGoWriterCase("kafka-go-writer",
			fmt.Sprintf("Writer by hand, %d per call, BatchSize %d, BatchTimeout %s", b, kafkaBatchSize, kafkaGoLinger), cfg).
			in(kafkaTablePublish).scaled(2),
		franzGoProduceCase("franz-go-produce",
			fmt.Sprintf("kgo client by hand, ProduceSync of %d records per call, no compression (the ceiling)", b), cfg).
			in(kafkaTablePublish).scaled(2),
		watermillCase("watermill-publish", "kafka Publisher (Sarama SyncProducer), 1 per call",
			wm, watermillVariant{mode: publishOnly}, true).in(kafkaTablePublish).scaled(0.25),
		watermillCase("watermill-publish-batch", fmt.Sprintf("kafka Publisher (Sarama SyncProducer), %d per call", b),
			wm, watermillVariant{mode: publishOnly, batched: true}, false).in(kafkaTablePublish).scaled(0.25),

		heraldCase("herald-consume", "Bus.Handle, concurrency 1",
			hd, heraldVariant{mode: consumeOnly}).in(kafkaTableConsume).scaled(2),
		kafkaGoReaderCase("kafka-go-reader",
			fmt.Sprintf("group Reader by hand, FetchMessage, CommitMessages every %d", kafkaReaderCommitEvery), cfg).
			in(kafkaTableConsume).scaled(2),
		franzGoConsumeCase("franz-go-consume", "kgo consumer group by hand, PollFetches, autocommit (the ceiling)", cfg).
			in(kafkaTableConsume).scaled(2),
		watermillCase("watermill-consume", "kafka Subscriber (Sarama consumer group) + Router",
			wm, watermillVariant{mode: consumeOnly}, true).in(kafkaTableConsume).scaled(0.5),
	}
	var slowRows []benchCase
	for _, c := range []struct {
		concurrency int
		share       float64
	}{{16, 0.1}, {64, 0.4}, {256, 1}} {
		slowRows = append(slowRows, heraldCase(fmt.Sprintf("herald-slow-c%d", c.concurrency),
			fmt.Sprintf("Bus.Handle, concurrency %d, %d keys", c.concurrency, k),
			hd, heraldVariant{mode: consumeOnly, concurrency: c.concurrency, keyed: true, work: slow}).
			in(kafkaTableSlow).scaled(c.share))
	}
	// Watermill's Kafka subscriber hands the Router one message per
	// partition and waits for its ack: kafkaPartitions at once.
	slowRows = append(slowRows, watermillCase("watermill-slow",
		fmt.Sprintf("kafka Subscriber (Sarama consumer group) + Router, one message in flight per partition (%d)", kafkaPartitions),
		wm, watermillVariant{mode: consumeOnly, work: slow, concurrency: kafkaPartitions}, true).in(kafkaTableSlow).scaled(0.02))
	// A bare-sleeper ceiling per concurrency of the slow table: herald's
	// 16, 64 and 256, Watermill's kafkaPartitions.
	return slices.Concat(cases, slowRows, sleeperCeilings(slowRows))
}

// startKfake starts an in-process kfake cluster of one broker when no
// cluster is configured, and records its address in cfg so that every run,
// in this process or a child, uses it. The cluster is the parent's: its CPU
// is not in a child's allocation figures, as a real broker's would not be.
func startKfake(cfg *config) (stop func(), err error) {
	if len(cfg.kafkaBrokers) > 0 {
		return func() {}, nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(kafkaPartitions))
	if err != nil {
		return nil, fmt.Errorf("start an in-process kfake cluster: %w", err)
	}
	cfg.kafkaBrokers = c.ListenAddrs()
	cfg.kafkaLocal = true
	return c.Close, nil
}

// kafkaServer checks that the cluster answers and describes it.
func kafkaServer(ctx context.Context, cfg config) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr := &kafkago.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafkago.Client{Addr: kafkago.TCP(cfg.kafkaBrokers...), Transport: tr}
	md, err := client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{}})
	if err != nil {
		return "", fmt.Errorf("kafka at %s (HERALD_KAFKA_BROKERS): %w", strings.Join(cfg.kafkaBrokers, ","), err)
	}
	where := "HERALD_KAFKA_BROKERS"
	if cfg.kafkaLocal {
		where = "in-process kfake (github.com/twmb/franz-go/pkg/kfake)"
	}
	return fmt.Sprintf("Kafka, %d broker(s) at %s (%s)", len(md.Brokers), strings.Join(cfg.kafkaBrokers, ","), where), nil
}

// kafkaAdmin creates, counts and deletes a run's topic over a transport of
// its own (the process-wide kafka-go transport may hold stale metadata).
type kafkaAdmin struct {
	tr     *kafkago.Transport
	client *kafkago.Client
	topic  string
}

// newKafkaTopic creates topic with kafkaPartitions partitions.
func newKafkaTopic(ctx context.Context, cfg config, topic string) (*kafkaAdmin, error) {
	tr := &kafkago.Transport{}
	a := &kafkaAdmin{tr: tr, client: &kafkago.Client{Addr: kafkago.TCP(cfg.kafkaBrokers...), Transport: tr}, topic: topic}
	resp, err := a.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{
		Topics: []kafkago.TopicConfig{{Topic: topic, NumPartitions: kafkaPartitions, ReplicationFactor: 1}},
	})
	if err == nil {
		err = resp.Errors[topic]
	}
	if err != nil {
		tr.CloseIdleConnections()
		return nil, fmt.Errorf("create topic %q: %w", topic, err)
	}
	return a, nil
}

// stored is the number of records the topic holds: the sum of its
// partitions' end offsets (the topic is new and nothing deletes records).
func (a *kafkaAdmin) stored(ctx context.Context) (int, error) {
	reqs := make([]kafkago.OffsetRequest, kafkaPartitions)
	for p := range reqs {
		reqs[p] = kafkago.LastOffsetOf(p)
	}
	resp, err := a.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{a.topic: reqs}})
	if err != nil {
		return 0, fmt.Errorf("list offsets of topic %q: %w", a.topic, err)
	}
	total := 0
	for _, po := range resp.Topics[a.topic] {
		if po.Error != nil {
			return 0, fmt.Errorf("offsets of topic %q partition %d: %w", a.topic, po.Partition, po.Error)
		}
		total += int(po.LastOffset)
	}
	return total, nil
}

// release deletes the topic and closes the connections.
func (a *kafkaAdmin) release(ctx context.Context) error {
	defer a.tr.CloseIdleConnections()
	resp, err := a.client.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: []string{a.topic}})
	if err == nil {
		err = resp.Errors[a.topic]
	}
	if err != nil {
		return fmt.Errorf("delete topic %q: %w", a.topic, err)
	}
	return nil
}

// heraldKafka gives each herald run a driver of its own, with its default
// settings except the batch size, which matches the kafka-go reference.
func heraldKafka(cfg config) heraldDriverFunc {
	return func(ctx context.Context, topic string, report func(error)) (heraldBackend, error) {
		admin, err := newKafkaTopic(ctx, cfg, topic)
		if err != nil {
			return heraldBackend{}, err
		}
		d, err := kafkadriver.New(cfg.kafkaBrokers,
			kafkadriver.WithBatchSize(kafkaBatchSize),
			kafkadriver.WithLogger(slog.New(reportingHandler{report: report})),
		)
		if err != nil {
			return heraldBackend{}, errors.Join(err, admin.release(ctx))
		}
		return heraldBackend{
			driver: d,
			stored: admin.stored,
			release: func(ctx context.Context) error {
				return errors.Join(d.Close(), admin.release(ctx))
			},
		}, nil
	}
}

// watermillKafka gives each Watermill run a publisher and a subscriber with
// the settings that make the comparison fair: the topic exists before the
// clock starts (otherwise the first publish waits on Sarama's 2 s metadata
// retry) and the consumer group starts at the oldest offset (Sarama's
// default, the newest, would skip the pre-filled topic).
func watermillKafka(cfg config) watermillPubSubFunc {
	return func(ctx context.Context, topic string) (watermillBackend, error) {
		admin, err := newKafkaTopic(ctx, cfg, topic)
		if err != nil {
			return watermillBackend{}, err
		}
		pub, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{
			Brokers:   cfg.kafkaBrokers,
			Marshaler: wmkafka.DefaultMarshaler{},
		}, watermill.NopLogger{})
		if err != nil {
			return watermillBackend{}, errors.Join(err, admin.release(ctx))
		}
		saramaCfg := wmkafka.DefaultSaramaSubscriberConfig()
		saramaCfg.Consumer.Offsets.Initial = sarama.OffsetOldest
		sub, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
			Brokers:               cfg.kafkaBrokers,
			Unmarshaler:           wmkafka.DefaultMarshaler{},
			ConsumerGroup:         benchGroup,
			OverwriteSaramaConfig: saramaCfg,
		}, watermill.NopLogger{})
		if err != nil {
			return watermillBackend{}, errors.Join(err, pub.Close(), admin.release(ctx))
		}
		return watermillBackend{
			pub:    pub,
			sub:    sub,
			stored: admin.stored,
			release: func(ctx context.Context) error {
				return errors.Join(pub.Close(), admin.release(ctx))
			},
		}, nil
	}
}

// kafkaGoProducer is kafka-go's Writer used by hand on a run's new topic,
// one WriteMessages call per publish call, with the batch settings
// herald's driver gets: at most kafkaBatchSize messages or
// DefaultBatchBytes per partition batch, acks from all in-sync replicas,
// keys placed by murmur2 as herald places them, on a transport of its own.
type kafkaGoProducer struct {
	admin *kafkaAdmin
	w     *kafkago.Writer
	tr    *kafkago.Transport
	data  []byte // the payload
}

// newKafkaGoProducer creates the run's topic and a Writer on it.
func newKafkaGoProducer(ctx context.Context, cfg config, topic string) (*kafkaGoProducer, error) {
	admin, err := newKafkaTopic(ctx, cfg, topic)
	if err != nil {
		return nil, err
	}
	tr := &kafkago.Transport{}
	w := &kafkago.Writer{
		Addr: kafkago.TCP(cfg.kafkaBrokers...), Topic: topic, Transport: tr,
		Balancer:  &kafkago.Murmur2Balancer{},
		BatchSize: kafkaBatchSize, BatchBytes: kafkadriver.DefaultBatchBytes, BatchTimeout: kafkaGoLinger,
		RequiredAcks: kafkago.RequireAll,
	}
	return &kafkaGoProducer{admin: admin, w: w, tr: tr, data: payload(cfg.payloadBytes)}, nil
}

// publish writes count messages in one WriteMessages call.
func (k *kafkaGoProducer) publish(ctx context.Context, _, count int) error {
	msgs, err := kafkaGoMessages(count, k.data)
	if err != nil {
		return err
	}
	return k.w.WriteMessages(ctx, msgs...)
}

// close closes the Writer and its connections and deletes the topic.
func (k *kafkaGoProducer) close(ctx context.Context) error {
	err := k.w.Close()
	k.tr.CloseIdleConnections()
	return errors.Join(err, k.admin.release(ctx))
}

// kafkaGoMessages builds count records carrying what herald's Writer
// writes for a raw message without key: the payload, the time, and the ID
// (a KSUID) in the herald-id header.
func kafkaGoMessages(count int, data []byte) ([]kafkago.Message, error) {
	ids := ksuid.Sequence{Seed: ksuid.New()}
	now := time.Now()
	msgs := make([]kafkago.Message, count)
	for i := range msgs {
		id, err := ids.Next()
		if err != nil {
			return nil, err
		}
		msgs[i] = kafkago.Message{
			Value: data, Time: now,
			Headers: []kafkago.Header{{Key: herald.HeaderID, Value: []byte(id.String())}},
		}
	}
	return msgs, nil
}

// kafkaGoWriterCase is the publish reference: kafka-go's Writer used by
// hand, one WriteMessages call per publish call.
func kafkaGoWriterCase(id, label string, cfg config) benchCase {
	return referenceCase(id, "kafka-go", label, publishOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		prod, err := newKafkaGoProducer(ctx, cfg, p.topic)
		if err != nil {
			return nil, err
		}
		return assemble(ctx, p, stages{
			mode:     publishOnly,
			batch:    cfg.batch,
			counter:  newCounter(p.n, 0),
			publish:  prod.publish,
			warmUp:   func(ctx context.Context) error { return prod.w.WriteMessages(ctx, kafkago.Message{}) },
			stored:   prod.admin.stored,
			teardown: prod.close,
		})
	})
}

// franzGoProduceCase is the publish ceiling: franz-go's kgo client by
// hand, one ProduceSync call of the batch's records per publish call, the
// records kafka-go's Writer row writes (the payload, the time, a herald-id
// header), acks from all in-sync replicas and no compression, as
// herald's Writer and kafka-go's by default. herald stays on kafka-go;
// this row shows what the fastest Go client does on the same broker.
func franzGoProduceCase(id, label string, cfg config) benchCase {
	c := benchCase{id: id, system: "franz-go", label: label, mode: publishOnly, concurrency: 1}
	c.setup = func(ctx context.Context, p runParams) (*pipeline, error) {
		admin, err := newKafkaTopic(ctx, cfg, p.topic)
		if err != nil {
			return nil, err
		}
		client, err := kgo.NewClient(kgo.SeedBrokers(cfg.kafkaBrokers...), kgo.DefaultProduceTopic(p.topic),
			kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerBatchCompression(kgo.NoCompression()),
			kgo.ProducerLinger(0), kgo.ProducerBatchMaxBytes(int32(kafkadriver.DefaultBatchBytes)))
		if err != nil {
			return nil, errors.Join(err, admin.release(ctx))
		}
		data := payload(cfg.payloadBytes)
		publish := func(ctx context.Context, _, count int) error {
			msgs, err := kafkaGoMessages(count, data)
			if err != nil {
				return err
			}
			recs := make([]*kgo.Record, count)
			for i, m := range msgs {
				recs[i] = &kgo.Record{Value: m.Value, Timestamp: m.Time,
					Headers: []kgo.RecordHeader{{Key: m.Headers[0].Key, Value: m.Headers[0].Value}}}
			}
			return client.ProduceSync(ctx, recs...).FirstErr()
		}
		return assemble(ctx, p, stages{
			mode:    publishOnly,
			batch:   cfg.batch,
			counter: newCounter(p.n, 0),
			publish: publish,
			warmUp: func(ctx context.Context) error {
				return client.ProduceSync(ctx, &kgo.Record{}).FirstErr()
			},
			stored: admin.stored,
			teardown: func(ctx context.Context) error {
				client.Close()
				return admin.release(ctx)
			},
		})
	}
	return c
}

// kafkaGoReaderCase is the consume reference: kafka-go's group Reader used
// by hand, FetchMessage in a loop and CommitMessages every
// kafkaReaderCommitEvery messages, with herald's fetch settings. The topic
// is filled by kafka-go's Writer.
func kafkaGoReaderCase(id, label string, cfg config) benchCase {
	return referenceCase(id, "kafka-go", label, consumeOnly, byHand(cfg,
		func(ctx context.Context, topic string, cnt *counter) (func() error, error) {
			reader := kafkago.NewReader(kafkago.ReaderConfig{
				Brokers: cfg.kafkaBrokers, GroupID: benchGroup, Topic: topic,
				StartOffset: kafkago.FirstOffset,
				MaxWait:     kafkadriver.DefaultFetchMaxWait, MaxBytes: kafkadriver.DefaultFetchMaxBytes,
			})
			readCtx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Go(func() { readAll(readCtx, reader, cnt, cfg.payloadBytes) })
			return func() error {
				cancel()
				wg.Wait()
				return reader.Close()
			}, nil
		}))
}

// franzGoConsumeCase is the consume ceiling: franz-go's kgo client in a
// consumer group, PollFetches in a loop with its default autocommit,
// over a topic kafka-go's Writer filled. herald stays on kafka-go; this
// row shows what the fastest Go client does on the same broker.
func franzGoConsumeCase(id, label string, cfg config) benchCase {
	c := benchCase{id: id, system: "franz-go", label: label, mode: consumeOnly, concurrency: 1}
	c.setup = byHand(cfg, func(ctx context.Context, topic string, cnt *counter) (func() error, error) {
		client, err := kgo.NewClient(kgo.SeedBrokers(cfg.kafkaBrokers...), kgo.ConsumerGroup(benchGroup),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.FetchMaxBytes(int32(kafkadriver.DefaultFetchMaxBytes)), kgo.FetchMaxWait(kafkadriver.DefaultFetchMaxWait))
		if err != nil {
			return nil, err
		}
		pollCtx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { pollAll(pollCtx, client, cnt, cfg.payloadBytes) })
		return func() error {
			cancel()
			wg.Wait()
			client.Close()
			return nil
		}, nil
	})
	return c
}

// byHand is the set-up of a consume row of a client used by hand, over a
// topic kafka-go's Writer fills: consume starts reading into the counter
// when the clock starts and returns what stops it.
func byHand(cfg config, consume func(ctx context.Context, topic string, cnt *counter) (stop func() error, err error)) func(context.Context, runParams) (*pipeline, error) {
	return func(ctx context.Context, p runParams) (*pipeline, error) {
		prod, err := newKafkaGoProducer(ctx, cfg, p.topic)
		if err != nil {
			return nil, err
		}
		cnt := newCounter(p.n, 0)
		stop := func() error { return nil }
		return assemble(ctx, p, stages{
			mode:      consumeOnly,
			counter:   cnt,
			publish:   prod.publish,
			subscribe: func() error { return nil },
			start: func(ctx context.Context) error {
				s, err := consume(context.WithoutCancel(ctx), p.topic, cnt)
				if err != nil {
					return err
				}
				stop = s
				return nil
			},
			teardown: func(ctx context.Context) error { return errors.Join(stop(), prod.close(ctx)) },
		})
	}
}

// pollAll polls until the counter reached its target or ctx ends.
func pollAll(ctx context.Context, client *kgo.Client, cnt *counter, size int) {
	for n := int64(0); n < cnt.target; {
		fs := client.PollFetches(ctx)
		if ctx.Err() != nil {
			return
		}
		if errs := fs.Errors(); len(errs) > 0 {
			cnt.fail(fmt.Errorf("poll: %w", errs[0].Err))
			return
		}
		fs.EachRecord(func(r *kgo.Record) {
			if len(r.Value) != size {
				cnt.fail(fmt.Errorf("client got a %d-byte value, want %d", len(r.Value), size))
			}
			n++
			cnt.handle()
		})
	}
}

// readAll fetches until the counter reached its target or ctx ends,
// committing every kafkaReaderCommitEvery messages and before counting the
// last one.
func readAll(ctx context.Context, r *kafkago.Reader, cnt *counter, size int) {
	pending := make([]kafkago.Message, 0, kafkaReaderCommitEvery)
	for i := range cnt.target {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() == nil {
				cnt.fail(fmt.Errorf("fetch: %w", err))
			}
			return
		}
		if len(m.Value) != size {
			cnt.fail(fmt.Errorf("reader got a %d-byte value, want %d", len(m.Value), size))
		}
		// The last commit comes before the last count, so that it is timed.
		if pending = append(pending, m); len(pending) == cap(pending) || i == cnt.target-1 {
			if err := r.CommitMessages(ctx, pending...); err != nil {
				cnt.fail(fmt.Errorf("commit: %w", err))
				return
			}
			pending = pending[:0]
		}
		cnt.handle()
	}
}

// reportingHandler is the Kafka driver's logger in a run: the driver
// reports problems it meets in the background (a failed commit, a fetch
// error) by logging them at level Error, and those fail the run; the rest
// is dropped.
type reportingHandler struct {
	report func(error)
	attrs  []slog.Attr
}

func (h reportingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }

func (h reportingHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s", a); return true })
	h.report(errors.New(b.String()))
	return nil
}

func (h reportingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return reportingHandler{report: h.report, attrs: append(slices.Clone(h.attrs), attrs...)}
}

func (h reportingHandler) WithGroup(string) slog.Handler { return h }
