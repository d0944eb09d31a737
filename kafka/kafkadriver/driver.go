package kafkadriver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald/internal/keyhash"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/internal/parallel"
	kafkago "github.com/segmentio/kafka-go"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
)

// metadataTTL bounds how stale the transport's view of topics and leaders
// gets; kafka-go refreshes it on this period, not on errors (the writer
// forces a refresh when a broker says it no longer leads a partition: see
// relocate).
const metadataTTL = 3 * time.Second

// Sentinel errors of the driver, besides herald's own.
var (
	// ErrClosed is returned (inside a *herald.DriverError) by calls on a
	// closed Driver or Subscription. It is herald.ErrClosed, so that the
	// error's text names the driver once.
	ErrClosed = herald.ErrClosed
	// ErrRevoked is returned by Ack for a delivery whose partition this
	// member no longer owns: its offset is not committed and the message
	// is delivered again to the partition's next owner.
	ErrRevoked = errors.New("kafkadriver: partition revoked")
	// ErrNotSent marks a message of a Write that was not sent because an
	// earlier message of the same Write failed, or its context ended.
	ErrNotSent = errors.New("kafkadriver: not sent")
	// ErrTopicExists is returned by CreateTopic for a topic that exists.
	ErrTopicExists = errors.New("kafkadriver: topic already exists")
)

// fail builds the driver's errors: op on topic and group ("" when none),
// detail saying more, err the cause.
func fail(op, topic, group, detail string, err error) error {
	return &herald.DriverError{Driver: "kafkadriver", Op: op, Topic: topic, Group: group, Detail: detail, Err: err}
}

// Driver is a herald.Driver on Apache Kafka. It is safe for concurrent use.
// Close it after the subscriptions' owners (a herald.Bus) have shut down.
type Driver struct {
	cfg       config
	addr      net.Addr
	transport *kafkago.Transport
	client    *kafkago.Client
	history   *history

	mu      sync.RWMutex // closed and subs; read-held while a Write enqueues
	closed  bool
	subs    map[*subscription]struct{}
	closing chan struct{} // closed by Close: produce retries stop

	queuesMu sync.Mutex // queues and senders
	queues   map[topicPartition]*partitionQueue
	senders  map[int32]*brokerSender
	sending  sync.WaitGroup // running brokerSender goroutines
	rr       atomic.Uint32  // picks the partition of unkeyed messages

	metaMu sync.Mutex
	meta   map[string]*topicMeta

	epoch time.Time // origin of clock

	delayState
}

// topicMeta is what the writer knows of a topic: the leader of each
// partition.
type topicMeta struct {
	leaders []int32
	fetched time.Time
}

// New returns a Driver for the cluster reachable at brokers ("host:port").
// It does not connect until it is used. Every invalid option is reported
// in the one error.
func New(brokers []string, opts ...Option) (*Driver, error) {
	cfg := newConfig(brokers, opts)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	addr := kafkago.TCP(brokers...)
	transport := &kafkago.Transport{
		Dial:        (&net.Dialer{Timeout: cfg.requestTimeout, KeepAlive: 30 * time.Second}).DialContext,
		DialTimeout: cfg.requestTimeout,
		MetadataTTL: metadataTTL,
		ClientID:    cfg.clientID,
		TLS:         cfg.tls,
		SASL:        cfg.sasl,
	}
	return &Driver{
		cfg:       cfg,
		addr:      addr,
		transport: transport,
		client:    &kafkago.Client{Addr: addr, Transport: transport, Timeout: cfg.requestTimeout},
		history:   &history{parts: make(map[historyKey]*partitionHistory)},
		subs:      make(map[*subscription]struct{}),
		closing:   make(chan struct{}),
		queues:    make(map[topicPartition]*partitionQueue),
		meta:      make(map[string]*topicMeta),
		senders:   make(map[int32]*brokerSender),
		epoch:     time.Now(),
	}, nil
}

// Close stops the driver: later calls fail with ErrClosed, subscriptions
// still open are closed (each flushing its commits, bounded by the request
// timeout), messages already handed to Write are sent (retries stop), and
// connections are closed. It waits for all of that. Close is idempotent.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.closing)
	subs := slices.Collect(maps.Keys(d.subs))
	d.mu.Unlock()

	d.stopMover()
	err := parallel.Each(subs, func(s *subscription) error {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.requestTimeout)
		defer cancel()
		return s.Close(ctx)
	})
	d.moving.Wait()
	d.sending.Wait()
	d.transport.CloseIdleConnections()
	return err
}

func (d *Driver) forget(s *subscription) {
	d.mu.Lock()
	delete(d.subs, s)
	d.mu.Unlock()
}

// isClosed reports whether Close has begun.
func (d *Driver) isClosed() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.closed
}

// Ping asks the cluster for its brokers (a metadata request naming no
// topic) and reports whether one answered (herald.Pinger).
func (d *Driver) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.isClosed() {
		return fail("ping", "", "", "", ErrClosed)
	}
	if _, err := d.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{}}); err != nil {
		return fail("ping", "", "", fmt.Sprint(d.cfg.brokers), err)
	}
	return nil
}

// CreateTopic creates topic with the given number of partitions and
// replication factor (0 or less: the broker's default). It returns an error
// wrapping ErrTopicExists when the topic exists, whatever its settings.
func (d *Driver) CreateTopic(ctx context.Context, topic string, partitions, replicationFactor int) error {
	if err := validateTopic(topic); err != nil {
		return fail("create", topic, "", "", err)
	}
	if partitions <= 0 {
		return fail("create", topic, "", fmt.Sprintf("partitions %d", partitions), errors.New("must be positive"))
	}
	if replicationFactor <= 0 {
		replicationFactor = -1
	}
	res, err := d.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{
		Topics: []kafkago.TopicConfig{{Topic: topic, NumPartitions: partitions, ReplicationFactor: replicationFactor}},
	})
	if err == nil {
		err = res.Errors[topic]
	}
	switch {
	case errors.Is(err, kafkago.TopicAlreadyExists):
		return fail("create", topic, "", "", ErrTopicExists)
	case err != nil:
		return fail("create", topic, "", "", err)
	}
	d.forgetTopic(topic)
	return nil
}

// Partition returns the partition that the Java client's default
// partitioner assigns to a non-empty key on a topic with the given number
// of partitions: murmur2 of the key's bytes, made positive, modulo the
// count. herald places every keyed message with it, so producers in other
// languages that use that partitioner agree with it.
func Partition(key string, partitions int) int {
	return keyhash.Partition(key, partitions)
}

// maxTopicLength is Kafka's limit on topic names.
const maxTopicLength = 249

// validateTopic applies herald's name rules and Kafka's: topic names are
// letters, digits, '.', '_' and '-' only, at most 249 bytes.
func validateTopic(topic string) error {
	if err := herald.ValidateName("topic", topic); err != nil {
		return err
	}
	if len(topic) > maxTopicLength {
		return &herald.NameError{Kind: "topic", Name: topic, Reason: "longer than Kafka's 249 bytes"}
	}
	for i := 0; i < len(topic); i++ {
		switch c := topic[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return &herald.NameError{Kind: "topic", Name: topic, Reason: "Kafka topics allow only letters, digits and . _ -"}
		}
	}
	return nil
}

// topicInfo returns topic's partition count and leaders, from a cache
// that lives as long as the transport's metadata. A topic that does not
// exist (yet), or has a partition without a leader, is looked up again
// until the request timeout passes; with WithAutoCreateTopics the lookup
// creates it.
func (d *Driver) topicInfo(ctx context.Context, topic string) (*topicMeta, error) {
	d.metaMu.Lock()
	tm := d.meta[topic]
	d.metaMu.Unlock()
	if tm != nil && time.Since(tm.fetched) < metadataTTL {
		return tm, nil
	}
	deadline := time.Now().Add(d.cfg.requestTimeout)
	retry := backoff.New(50*time.Millisecond, time.Second)
	for {
		tm, err := d.lookupTopic(ctx, topic, d.cfg.autoCreate)
		if err == nil {
			d.metaMu.Lock()
			d.meta[topic] = tm
			d.metaMu.Unlock()
			return tm, nil
		}
		var ke kafkago.Error
		wait := retry.Next()
		if !errors.As(err, &ke) || !ke.Temporary() || time.Now().Add(wait).After(deadline) {
			return nil, fail("metadata", topic, "", "", err)
		}
		if !backoff.Sleep(ctx, wait) {
			return nil, ctx.Err()
		}
	}
}

// forgetTopic drops the cached metadata of topic, after a broker said a
// leader moved.
func (d *Driver) forgetTopic(topic string) {
	d.metaMu.Lock()
	delete(d.meta, topic)
	d.metaMu.Unlock()
}

// topicExists reports whether the cluster has topic, without creating it.
func (d *Driver) topicExists(ctx context.Context, topic string) bool {
	_, err := d.lookupTopic(ctx, topic, false)
	return err == nil
}

func (d *Driver) lookupTopic(ctx context.Context, topic string, create bool) (*topicMeta, error) {
	// The transport answers from its cached metadata, and asks the broker
	// (which may then create the topic) only for a missing topic that may
	// be created.
	res, err := d.transport.RoundTrip(ctx, d.addr, &metadataAPI.Request{
		TopicNames:             []string{topic},
		AllowAutoTopicCreation: create,
	})
	if err != nil {
		return nil, err
	}
	for _, t := range res.(*metadataAPI.Response).Topics {
		if t.Name != topic {
			continue
		}
		if t.ErrorCode != 0 {
			return nil, kafkago.Error(t.ErrorCode)
		}
		if len(t.Partitions) == 0 {
			return nil, kafkago.LeaderNotAvailable
		}
		tm := &topicMeta{leaders: make([]int32, len(t.Partitions)), fetched: time.Now()}
		for _, p := range t.Partitions {
			if int(p.PartitionIndex) >= len(tm.leaders) {
				return nil, kafkago.LeaderNotAvailable
			}
			if p.LeaderID < 0 {
				if p.ErrorCode != 0 {
					return nil, kafkago.Error(p.ErrorCode)
				}
				return nil, kafkago.LeaderNotAvailable
			}
			tm.leaders[p.PartitionIndex] = p.LeaderID
		}
		return tm, nil
	}
	return nil, kafkago.UnknownTopicOrPartition
}

// historyKey names one partition as seen by one group.
type historyKey struct {
	group, topic string
	partition    int
}

// history remembers, per group and partition, which offsets this process
// has delivered, so that a redelivery after a rebalance or a restart of a
// subscription reports its Count. It outlives subscriptions.
type history struct {
	mu    sync.Mutex
	parts map[historyKey]*partitionHistory
}

func (h *history) get(group, topic string, partition int) *partitionHistory {
	k := historyKey{group, topic, partition}
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := h.parts[k]
	if ph == nil {
		ph = &partitionHistory{seen: -1}
		h.parts[k] = ph
	}
	return ph
}

// partitionHistory holds the delivery counts of one partition.
type partitionHistory struct {
	mu     sync.Mutex
	seen   int64           // one past the highest offset delivered; -1: none
	counts map[int64]int32 // offsets below seen not delivered exactly once
}

// count records a delivery of offset and returns its Count: 0 for an
// offset this process has not delivered before (another member may have),
// else how many times this process has delivered it. ph.mu held.
func (ph *partitionHistory) count(offset int64) int {
	if offset >= ph.seen {
		ph.seen = offset + 1
		return 0
	}
	if ph.counts == nil {
		ph.counts = make(map[int64]int32)
	}
	counted, ok := ph.counts[offset]
	if !ok {
		counted = 1
	}
	n := counted + 1
	ph.counts[offset] = n
	return int(n)
}

// release takes back the last counted delivery of offset, which no
// handler started (herald.Releaser). ph.mu held.
func (ph *partitionHistory) release(offset int64) {
	if offset >= ph.seen {
		return
	}
	if ph.counts == nil {
		ph.counts = make(map[int64]int32)
	}
	counted, ok := ph.counts[offset]
	if !ok {
		counted = 1
	}
	ph.counts[offset] = max(counted-1, 0)
}

// prune forgets counts below the committed offset.
func (ph *partitionHistory) prune(committed int64) {
	ph.mu.Lock()
	for off := range ph.counts {
		if off < committed {
			delete(ph.counts, off)
		}
	}
	ph.mu.Unlock()
}
