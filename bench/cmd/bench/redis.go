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
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	goredis "github.com/redis/go-redis/v9"
	"github.com/segmentio/ksuid"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// The Redis scenario's fixed settings, from the Redis driver issue's
// performance targets.
const (
	// redisConsumeConcurrency is the parallel row of the no-op consume table.
	redisConsumeConcurrency = 16
	// redisSlowConcurrency and redisSlowWork make the slow-handler table:
	// 64 handlers that sleep 1 ms each, a nominal ceiling of 64,000 msgs/s.
	redisSlowConcurrency = 64
	redisSlowWork        = time.Millisecond
	// redisStreamTTL bounds the life of a run's stream should the run die
	// before its teardown deletes it: the server is shared and outlives us.
	redisStreamTTL = time.Hour
)

// The Redis scenario's tables.
const (
	redisTablePublish = "publish"
	redisTableConsume = "consume, no-op handler"
	redisTableSlow    = "consume, handler sleeps 1 ms"
)

// redisScenario compares Redis Streams clients on the server at
// HERALD_REDIS_ADDR: herald's redisdriver behind its Bus, go-redis used by
// hand (pipelined XADD, the publish reference), and Watermill's
// watermill-redisstream. Every client is a go-redis v9 client with its
// default options (a pool of 10 connections per GOMAXPROCS).
func redisScenario() scenario {
	return scenario{
		name:   "redis",
		about:  "Redis Streams: herald redisdriver vs go-redis by hand vs Watermill watermill-redisstream",
		cases:  redisCases,
		server: redisServer,
	}
}

func redisCases(cfg config) []benchCase {
	hd, wm := heraldRedis(cfg), watermillRedis(cfg)
	b, k := cfg.batch, cfg.keys
	c16, c64 := redisConsumeConcurrency, redisSlowConcurrency
	slow := redisSlowWork

	// Each row runs a share of -n picked for about 1-3 s per run at the
	// rates of a 2-core machine: fast rows more (short runs are at the
	// mercy of a burst of load elsewhere), slow rows fewer, so that the
	// default run of the scenario stays within about two minutes.
	cases := []benchCase{
		heraldCase("herald-publish", "Writer via Bus.PublishMessages, 1 per call (one XADD)",
			hd, heraldVariant{mode: publishOnly}).in(redisTablePublish).scaled(0.5),
		heraldCase("herald-publish-batch", fmt.Sprintf("Writer via Bus.PublishMessages, %d per call (pipelined XADD)", b),
			hd, heraldVariant{mode: publishOnly, batched: true}).in(redisTablePublish).scaled(2),
		goRedisPipelineCase("go-redis-pipeline",
			fmt.Sprintf("pipelined XADD by hand, %d per call, the fields herald writes", b), cfg).in(redisTablePublish).scaled(2),
		watermillCase("watermill-publish", "redisstream Publisher, 1 per call",
			wm, watermillVariant{mode: publishOnly}, true).in(redisTablePublish).scaled(0.25),
		watermillCase("watermill-publish-batch", fmt.Sprintf("redisstream Publisher, %d per call (one XADD after another)", b),
			wm, watermillVariant{mode: publishOnly, batched: true}, false).in(redisTablePublish).scaled(0.25),

		heraldCase("herald-consume", "Bus.Handle, concurrency 1",
			hd, heraldVariant{mode: consumeOnly}).in(redisTableConsume),
		heraldCase("herald-consume-c16", fmt.Sprintf("Bus.Handle, concurrency %d, %d keys", c16, k),
			hd, heraldVariant{mode: consumeOnly, concurrency: c16, keyed: true}).in(redisTableConsume),
		goRedisConsumeCase("go-redis-consume",
			fmt.Sprintf("XREADGROUP loop by hand, COUNT %d (herald's fetch batch), one XACK per batch", redisRawConsumeCount), cfg).
			in(redisTableConsume),
		watermillCase("watermill-consume", "redisstream Subscriber (consumer group) + Router",
			wm, watermillVariant{mode: consumeOnly}, true).in(redisTableConsume).scaled(0.1),
	}
	slowRows := []benchCase{
		heraldCase("herald-slow-c64", fmt.Sprintf("Bus.Handle, concurrency %d, %d keys", c64, k),
			hd, heraldVariant{mode: consumeOnly, concurrency: c64, keyed: true, work: slow}).in(redisTableSlow).scaled(0.5),
		watermillCase("watermill-slow", "redisstream Subscriber (consumer group) + Router",
			wm, watermillVariant{mode: consumeOnly, work: slow}, true).in(redisTableSlow).scaled(0.01),
	}
	// The bare-sleeper ceilings of the slow table, at herald's 64 and
	// Watermill's 1.
	return slices.Concat(cases, slowRows, sleeperCeilings(slowRows))
}

// newRedisClient returns a go-redis client with default options, as a
// user would start with.
func newRedisClient(cfg config) *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: cfg.redisAddr})
}

// redisServer checks that Redis answers and names its version.
func redisServer(ctx context.Context, cfg config) (string, error) {
	client := newRedisClient(cfg)
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := client.InfoMap(ctx, "server").Result()
	if err != nil {
		return "", fmt.Errorf("redis at %s (HERALD_REDIS_ADDR): %w", cfg.redisAddr, err)
	}
	version := info["Server"]["redis_version"]
	if version == "" {
		version = "(version unknown)"
	}
	return fmt.Sprintf("Redis %s at %s", version, cfg.redisAddr), nil
}

// prepareStream creates the run's stream, empty, with a time to live: a
// run killed before its teardown leaves nothing on the shared server for
// long. (XADD ... MAXLEN 0 adds an entry and trims it at once; later XADDs
// keep the TTL.)
func prepareStream(ctx context.Context, client goredis.UniversalClient, key string) error {
	if err := client.Do(ctx, "XADD", key, "MAXLEN", "0", "*", "init", "1").Err(); err != nil {
		return fmt.Errorf("create stream %q: %w", key, err)
	}
	if err := client.Expire(ctx, key, redisStreamTTL).Err(); err != nil {
		return fmt.Errorf("set the TTL of stream %q: %w", key, err)
	}
	return nil
}

// deleteStream deletes a run's stream and its consumer groups.
func deleteStream(ctx context.Context, client goredis.UniversalClient, key string) error {
	if err := client.Del(ctx, key).Err(); err != nil {
		return fmt.Errorf("delete stream %q: %w", key, err)
	}
	return nil
}

// streamLen returns the stored-messages count of a stream.
func streamLen(client goredis.UniversalClient, key string) func(ctx context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		n, err := client.XLen(ctx, key).Result()
		return int(n), err
	}
}

// heraldRedis gives each herald run a client of its own and a driver whose
// stream keys start with cfg.redisPrefix.
func heraldRedis(cfg config) heraldDriverFunc {
	return func(ctx context.Context, topic string, report func(error)) (heraldBackend, error) {
		client := newRedisClient(cfg)
		d, err := redisdriver.New(client, redisdriver.WithKeyPrefix(cfg.redisPrefix), redisdriver.WithErrorHandler(report))
		if err != nil {
			return heraldBackend{}, errors.Join(err, client.Close())
		}
		key := d.StreamKey(topic)
		if err := prepareStream(ctx, client, key); err != nil {
			return heraldBackend{}, errors.Join(err, client.Close())
		}
		return heraldBackend{
			driver: d,
			stored: streamLen(client, key),
			release: func(ctx context.Context) error {
				return errors.Join(deleteStream(ctx, client, key), client.Close())
			},
		}, nil
	}
}

// watermillRedis gives each Watermill run a publisher and a subscriber
// with a client each (their Close closes the client they were given), on
// the stream cfg.redisPrefix + topic. The subscriber reads in a consumer
// group, as herald does; DisableIndefiniteInitialBlock keeps its first read
// from blocking forever on an empty stream (which would leak the goroutine
// at Close) and does not change how it reads a full one.
func watermillRedis(cfg config) watermillPubSubFunc {
	return func(ctx context.Context, topic string) (watermillBackend, error) {
		key := cfg.redisPrefix + topic
		pubClient, subClient := newRedisClient(cfg), newRedisClient(cfg)
		closeClients := func(err error) (watermillBackend, error) {
			return watermillBackend{}, errors.Join(err, pubClient.Close(), subClient.Close())
		}
		if err := prepareStream(ctx, pubClient, key); err != nil {
			return closeClients(err)
		}
		pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{Client: pubClient}, watermill.NopLogger{})
		if err != nil {
			return closeClients(errors.Join(err, deleteStream(ctx, pubClient, key)))
		}
		sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
			Client:                        subClient,
			ConsumerGroup:                 benchGroup,
			DisableIndefiniteInitialBlock: true,
		}, watermill.NopLogger{})
		if err != nil {
			return closeClients(errors.Join(err, deleteStream(ctx, pubClient, key)))
		}
		return watermillBackend{
			pub:    pub,
			sub:    sub,
			topic:  key,
			stored: streamLen(pubClient, key),
			release: func(ctx context.Context) error {
				// Delete first: closing the publisher closes its client.
				return errors.Join(deleteStream(ctx, pubClient, key), pub.Close())
			},
		}, nil
	}
}

// goRedisPipelineCase is the publish reference: go-redis used by hand,
// each publish call one pipeline of XADDs in one round trip, with the same
// fields herald's Writer writes for a message without key or headers (a
// KSUID, the time in Unix nanoseconds, the payload), so the two send the
// same bytes.
// redisRawConsumeCount is the COUNT of the raw consumer's reads: the
// most herald's scheduler fetches at once (its fetch batch, 256).
const redisRawConsumeCount = 256

// goRedisConsumeCase is the consume ceiling: one goroutine reading the
// group with XREADGROUP (COUNT redisRawConsumeCount), checking and
// counting each entry, then acknowledging the read's entries with one
// XACK, by hand on go-redis. The backlog is written as go-redis-pipeline
// writes it.
func goRedisConsumeCase(id, label string, cfg config) benchCase {
	return referenceCase(id, "go-redis", label, consumeOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		client := newRedisClient(cfg)
		key := cfg.redisPrefix + p.topic
		if err := prepareStream(ctx, client, key); err != nil {
			return nil, errors.Join(err, client.Close())
		}
		if err := client.XGroupCreate(ctx, key, benchGroup, "0").Err(); err != nil {
			return nil, errors.Join(err, deleteStream(ctx, client, key), client.Close())
		}
		cnt := newCounter(p.n, 0)
		data := payload(cfg.payloadBytes)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		return assemble(ctx, p, stages{
			mode:    consumeOnly,
			counter: cnt,
			publish: func(ctx context.Context, _, count int) error {
				pipe := client.Pipeline()
				for range count {
					pipe.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: []any{"id", herald.NewKSUID(), "data", data}})
				}
				_, err := pipe.Exec(ctx)
				return err
			},
			subscribe: func() error { return nil },
			start: func(context.Context) error {
				wg.Go(func() { readGroup(client, key, cnt, cfg.payloadBytes, stop) })
				return nil
			},
			teardown: func(ctx context.Context) error {
				close(stop)
				wg.Wait()
				return errors.Join(deleteStream(ctx, client, key), client.Close())
			},
		})
	})
}

// readGroup is the raw consumer's loop, until stop is closed.
func readGroup(client *goredis.Client, key string, cnt *counter, size int, stop <-chan struct{}) {
	ctx := context.Background()
	args := &goredis.XReadGroupArgs{Group: benchGroup, Consumer: "raw", Streams: []string{key, ">"},
		Count: redisRawConsumeCount, Block: 100 * time.Millisecond}
	ids := make([]string, 0, redisRawConsumeCount)
	for {
		select {
		case <-stop:
			return
		default:
		}
		streams, err := client.XReadGroup(ctx, args).Result()
		if errors.Is(err, goredis.Nil) {
			continue
		}
		if err != nil {
			cnt.fail(fmt.Errorf("xreadgroup: %w", err))
			return
		}
		ids = ids[:0]
		for _, m := range streams[0].Messages {
			if d, _ := m.Values["data"].(string); len(d) != size {
				cnt.fail(fmt.Errorf("entry %s has %d bytes of data, want %d", m.ID, len(d), size))
			}
			cnt.handleThen(nil)
			ids = append(ids, m.ID)
		}
		if err := client.XAck(ctx, key, benchGroup, ids...).Err(); err != nil {
			cnt.fail(fmt.Errorf("xack: %w", err))
			return
		}
	}
}

func goRedisPipelineCase(id, label string, cfg config) benchCase {
	return referenceCase(id, "go-redis", label, publishOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		client := newRedisClient(cfg)
		key := cfg.redisPrefix + p.topic
		if err := prepareStream(ctx, client, key); err != nil {
			return nil, errors.Join(err, client.Close())
		}
		data := payload(cfg.payloadBytes)
		return assemble(ctx, p, stages{
			mode:    publishOnly,
			batch:   cfg.batch,
			counter: newCounter(p.n, 0),
			publish: func(ctx context.Context, _, count int) error {
				// One seed per call: a KSUID sequence hands out the
				// call's IDs without a random read each.
				ids := ksuid.Sequence{Seed: ksuid.New()}
				now := strconv.FormatInt(time.Now().UnixNano(), 10)
				pipe := client.Pipeline()
				for range count {
					id, err := ids.Next()
					if err != nil {
						return err
					}
					pipe.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: []any{"id", id.String(), "time", now, "data", data}})
				}
				_, err := pipe.Exec(ctx)
				return err
			},
			warmUp: func(ctx context.Context) error {
				return client.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: []any{"data", ""}}).Err()
			},
			stored: streamLen(client, key),
			teardown: func(ctx context.Context) error {
				return errors.Join(deleteStream(ctx, client, key), client.Close())
			},
		})
	})
}
