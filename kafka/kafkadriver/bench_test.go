package kafkadriver_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	kafkago "github.com/segmentio/kafka-go"
)

// The benchmarks compare herald's driver with kafka-go used directly,
// against the same in-process kfake broker (or HERALD_KAFKA_BROKERS), with
// 256-byte payloads, 1000 keys and 4 partitions. They report msgs/s;
// compare figures taken in one run (the broker shares the machine).
//
//	go test ./kafka/kafkadriver -run '^$' -bench . -benchtime 20000x

const (
	benchPayload = 256
	benchKeys    = 1000
)

var payload = make([]byte, benchPayload)

func benchKey(i int) string { return "key-" + strconv.Itoa(i%benchKeys) }

func reportRate(b *testing.B, msgs int, elapsed time.Duration) {
	b.ReportMetric(float64(msgs)/elapsed.Seconds(), "msgs/s")
}

// rawWriter is kafka-go's Writer with the batch settings herald's driver
// gets in the same benchmark, on a transport of its own.
func rawWriter(b *testing.B, brokers []string, topic string, batchTimeout time.Duration) *kafkago.Writer {
	tr := &kafkago.Transport{}
	w := &kafkago.Writer{
		Addr: kafkago.TCP(brokers...), Topic: topic, Transport: tr,
		Balancer:  &kafkago.Murmur2Balancer{},
		BatchSize: 1000, BatchBytes: kafkadriver.DefaultBatchBytes, BatchTimeout: batchTimeout,
		RequiredAcks: kafkago.RequireAll,
	}
	b.Cleanup(func() {
		_ = w.Close()
		tr.CloseIdleConnections()
	})
	return w
}

// BenchmarkPublish: 16 goroutines publish, one message or 100 per call.
// herald sends a batch as soon as the partition is idle; kafka-go's Writer
// holds each batch for its BatchTimeout unless BatchSize fills it.
func BenchmarkPublish(b *testing.B) {
	brokers, real := cluster(b)
	for _, perCall := range []int{1, 100} {
		suffix := "/" + strconv.Itoa(perCall) + "-per-call"
		for _, linger := range []time.Duration{0, 5 * time.Millisecond} {
			b.Run("herald-linger-"+linger.String()+suffix, func(b *testing.B) {
				d := newDriver(b, brokers, real, kafkadriver.WithBatchSize(1000), kafkadriver.WithBatchTimeout(linger))
				topic := benchTopic(b, d)
				publishParallel(b, perCall, func(ctx context.Context, first, n int) error {
					msgs := make([]*herald.Message, n)
					for i := range msgs {
						msgs[i] = &herald.Message{
							ID: strconv.Itoa(first + i), Topic: topic, Key: benchKey(first + i),
							ContentType: "application/octet-stream", Data: payload, Time: time.Now(),
						}
					}
					return d.Write(ctx, msgs)
				})
			})
		}
		for _, linger := range []time.Duration{time.Millisecond, 5 * time.Millisecond} {
			b.Run("kafka-go-linger-"+linger.String()+suffix, func(b *testing.B) {
				d := newDriver(b, brokers, real)
				w := rawWriter(b, brokers, benchTopic(b, d), linger)
				publishParallel(b, perCall, func(ctx context.Context, first, n int) error {
					msgs := make([]kafkago.Message, n)
					for i := range msgs {
						id := strconv.Itoa(first + i)
						msgs[i] = kafkago.Message{
							Key: []byte(benchKey(first + i)), Value: payload, Time: time.Now(),
							Headers: []kafkago.Header{
								{Key: herald.HeaderID, Value: []byte(id)},
								{Key: herald.HeaderContentType, Value: []byte("application/octet-stream")},
							},
						}
					}
					return w.WriteMessages(ctx, msgs...)
				})
			})
		}
	}
}

func benchTopic(b *testing.B, d *kafkadriver.Driver) string {
	topic := drivertest.Name(b, "bench")
	if err := d.CreateTopic(context.Background(), topic, partitions, 1); err != nil {
		b.Fatal(err)
	}
	return topic
}

// publishParallel makes b.N calls of write from 16 goroutines.
func publishParallel(b *testing.B, perCall int, write func(ctx context.Context, first, n int) error) {
	const publishers = 16
	ctx := context.Background()
	var calls atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range publishers {
		wg.Go(func() {
			for {
				call := int(calls.Add(1)) - 1
				if call >= b.N {
					return
				}
				if err := write(ctx, call*perCall, perCall); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	reportRate(b, b.N*perCall, time.Since(start))
}

// fill writes n messages to a new topic for a consume benchmark.
func fill(b *testing.B, d *kafkadriver.Driver, n int) string {
	topic := benchTopic(b, d)
	ctx := context.Background()
	const batch = 1000
	var wg sync.WaitGroup
	for first := 0; first < n; first += batch {
		msgs := make([]*herald.Message, min(batch, n-first))
		for i := range msgs {
			msgs[i] = &herald.Message{ID: strconv.Itoa(first + i), Topic: topic, Key: benchKey(first + i), Data: payload, Time: time.Now()}
		}
		wg.Go(func() {
			if err := d.Write(ctx, msgs); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	return topic
}

// BenchmarkConsume: a no-op handler through herald's Bus (keyed
// concurrency, batched commits) against kafka-go's group Reader that
// commits every 1000 messages.
func BenchmarkConsume(b *testing.B) {
	brokers, real := cluster(b)
	for _, concurrency := range []int{1, 8} {
		b.Run("herald-concurrency-"+strconv.Itoa(concurrency), func(b *testing.B) {
			consumeThroughBus(b, newDriver(b, brokers, real), concurrency, func() {})
		})
	}
	b.Run("kafka-go-reader", func(b *testing.B) {
		d := newDriver(b, brokers, real)
		topic := fill(b, d, b.N)
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers: brokers, GroupID: drivertest.Name(b, "g"), Topic: topic, StartOffset: kafkago.FirstOffset,
			MaxWait: kafkadriver.DefaultFetchMaxWait, MaxBytes: kafkadriver.DefaultFetchMaxBytes,
			HeartbeatInterval: time.Second, SessionTimeout: 6 * time.Second,
		})
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		ctx := context.Background()
		pending := make([]kafkago.Message, 0, 1000)
		for range b.N {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if pending = append(pending, m); len(pending) == cap(pending) {
				if err := r.CommitMessages(ctx, pending...); err != nil {
					b.Fatal(err)
				}
				pending = pending[:0]
			}
		}
		if err := r.CommitMessages(ctx, pending...); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		reportRate(b, b.N, time.Since(start))
		_ = r.Close()
	})
}

// BenchmarkConsumeSlowHandler: a handler that sleeps 1 ms, 1000 keys over
// 4 partitions. The ceiling is concurrency x 1000 msgs/s; the sleep-only
// runs show what that many goroutines sleeping 1 ms achieve on the
// machine, without Kafka or herald.
func BenchmarkConsumeSlowHandler(b *testing.B) {
	brokers, real := cluster(b)
	for _, concurrency := range []int{16, 64, 256} {
		b.Run("sleep-only-concurrency-"+strconv.Itoa(concurrency), func(b *testing.B) {
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range concurrency {
				wg.Go(func() {
					for left.Add(-1) >= 0 {
						time.Sleep(time.Millisecond)
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			reportRate(b, b.N, time.Since(start))
		})
		b.Run("herald-concurrency-"+strconv.Itoa(concurrency), func(b *testing.B) {
			consumeThroughBus(b, newDriver(b, brokers, real), concurrency, func() { time.Sleep(time.Millisecond) })
		})
	}
}

// consumeThroughBus fills a topic with b.N messages, then times a Bus
// subscription at the given concurrency, whose handler calls work, until it
// has handled them all, and reports the rate.
func consumeThroughBus(b *testing.B, d *kafkadriver.Driver, concurrency int, work func()) {
	topic := fill(b, d, b.N)
	var handled atomic.Int64
	done := make(chan struct{})
	bus, err := herald.NewBus(d, herald.WithErrorHandler(func(err error) { b.Log(err) }))
	if err != nil {
		b.Fatal(err)
	}
	if err := bus.Handle(topic, drivertest.Name(b, "g"), func(ctx context.Context, m *herald.Message) error {
		work()
		if handled.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	}, herald.WithConcurrency(concurrency)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	if err := bus.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	<-done
	b.StopTimer()
	reportRate(b, b.N, time.Since(start))
	if err := bus.Shutdown(context.Background()); err != nil {
		b.Error(err)
	}
}

// BenchmarkTable is what a group table costs on Kafka
// (drivertest.BenchTables): each update is one produce to the changelog
// partition, acknowledged before the input is.
func BenchmarkTable(b *testing.B) {
	drivertest.BenchTables(b, func(b *testing.B) herald.Driver {
		brokers, real := cluster(b)
		return newDriver(b, brokers, real)
	})
}
