package natsdriver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/parallel"
)

// Driver is a herald.Driver on NATS JetStream. It is safe for concurrent
// use. It does not own the JetStream context or its connection: the
// caller closes the connection, after Close.
type Driver struct {
	js  jetstream.JetStream
	cfg config

	closed atomic.Bool
	mu     sync.Mutex // subs, streams, owners; Subscribe checks closed under it
	subs   map[*subscription]struct{}
	// streams maps a topic to the stream the driver checked or created
	// for it; owners maps a stream name back to its topic.
	streams map[string]string
	owners  map[string]string

	kvMu sync.Mutex
	kv   jetstream.KeyValue // release records, once opened

	delayState
}

var (
	_ herald.Driver          = (*Driver)(nil)
	_ herald.Pinger          = (*Driver)(nil)
	_ herald.MessagingSystem = (*Driver)(nil)
)

// New returns a Driver on js (jetstream.New(nc)). It returns an error
// that lists every invalid option, each wrapping herald.ErrInvalidOption,
// and never contacts the server itself.
func New(js jetstream.JetStream, opts ...Option) (*Driver, error) {
	cfg := newConfig(opts)
	err := cfg.validate()
	if js == nil {
		err = errors.Join(fmt.Errorf("natsdriver: nil JetStream: %w", herald.ErrInvalidOption), err)
	}
	if err != nil {
		return nil, err
	}
	return &Driver{
		js: js, cfg: cfg,
		subs:    make(map[*subscription]struct{}),
		streams: make(map[string]string),
		owners:  make(map[string]string),
	}, nil
}

// fail builds the driver's errors: op on topic and group ("" when none),
// detail saying more, err the cause.
func fail(op, topic, group, detail string, err error) error {
	return &herald.DriverError{Driver: "natsdriver", Op: op, Topic: topic, Group: group, Detail: detail, Err: err}
}

// MessagingSystem returns "nats" (herald.MessagingSystem).
func (d *Driver) MessagingSystem() string { return "nats" }

// Close closes the subscriptions still open (each handing its
// unacknowledged deliveries back, bounded by 10 s), and makes later Write,
// Subscribe and Ping calls fail with herald.ErrClosed. It does not close
// the connection, which stays the caller's. Close is idempotent.
func (d *Driver) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	d.stopMover()
	d.mu.Lock()
	subs := slices.Collect(maps.Keys(d.subs))
	d.mu.Unlock()
	return parallel.Each(subs, func(s *subscription) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return s.Close(ctx)
	})
}

func (d *Driver) forget(s *subscription) {
	d.mu.Lock()
	delete(d.subs, s)
	d.mu.Unlock()
}

// Ping asks the server for the account's JetStream information: one round
// trip that fails when the server is unreachable or JetStream is off
// (herald.Pinger).
func (d *Driver) Ping(ctx context.Context) error {
	if d.closed.Load() {
		return fail("ping", "", "", "", herald.ErrClosed)
	}
	if _, err := d.js.AccountInfo(ctx); err != nil {
		return fail("ping", "", "", "", err)
	}
	return nil
}

// Subject returns the subject topic is published on.
func (d *Driver) Subject(topic string) string {
	if d.cfg.subjectFor != nil {
		return d.cfg.subjectFor(topic)
	}
	return d.cfg.subjectPrefix + "." + Token(topic)
}

// StreamName returns the name of the stream the driver creates for topic
// (not used with WithSubjects).
func (d *Driver) StreamName(topic string) string { return d.cfg.streamPrefix + Token(topic) }

// consumerName returns the durable name of group's consumer on topic.
// With WithSubjects several topics may share a stream, so the topic is
// part of the name.
func (d *Driver) consumerName(topic, group string) string {
	if d.cfg.subjectFor != nil {
		return Token(group) + "_" + Token(topic)
	}
	return Token(group)
}

// stream returns the stream that holds topic: with WithSubjects the one
// whose subjects take the topic's subject, otherwise the driver's own,
// created on first use.
func (d *Driver) stream(ctx context.Context, topic string) (string, error) {
	d.mu.Lock()
	name, ok := d.streams[topic]
	d.mu.Unlock()
	if ok {
		return name, nil
	}
	if d.cfg.subjectFor != nil {
		name, err := d.js.StreamNameBySubject(ctx, d.Subject(topic))
		if err != nil {
			return "", fail("stream", topic, "", "no stream takes subject "+d.Subject(topic), err)
		}
		return name, nil
	}
	name = d.StreamName(topic)
	d.mu.Lock()
	owner, taken := d.owners[name]
	d.mu.Unlock()
	if taken && owner != topic {
		return "", d.collision(topic, name, owner)
	}
	if err := d.createStream(ctx, topic, name); err != nil {
		return "", err
	}
	d.mu.Lock()
	d.streams[topic], d.owners[name] = name, topic
	d.mu.Unlock()
	return name, nil
}

func (d *Driver) collision(topic, stream, owner string) error {
	return fail("stream", topic, "", fmt.Sprintf("stream %s belongs to %q", stream, owner),
		fmt.Errorf("topic maps to the stream name of another: %w", herald.ErrInvalidName))
}

// createStream makes sure the stream name exists and is topic's.
func (d *Driver) createStream(ctx context.Context, topic, name string) error {
	s, err := d.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = d.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        name,
			Description: streamDescription(topic),
			Subjects:    []string{d.Subject(topic)},
			Retention:   jetstream.LimitsPolicy,
			Storage:     d.cfg.storage,
			Replicas:    d.cfg.replicas,
			MaxAge:      d.cfg.maxAge,
			Duplicates:  d.cfg.duplicateWindow,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // created meanwhile
			s, err = d.js.Stream(ctx, name)
		}
	}
	if err != nil {
		return fail("stream", topic, "", "stream "+name, err)
	}
	if desc := s.CachedInfo().Config.Description; desc != streamDescription(topic) {
		return d.collision(topic, name, desc)
	}
	return nil
}

// forgetStreams drops what the driver knows of the topics of msgs, so
// that the next Write checks their streams again (one was deleted, say).
func (d *Driver) forgetStreams(msgs []*herald.Message) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range msgs {
		if name, ok := d.streams[m.Topic]; ok {
			delete(d.streams, m.Topic)
			delete(d.owners, name)
		}
	}
}

// Subscribe joins group on topic through the group's durable pull
// consumer, creating the stream and the consumer on first use (explicit
// acknowledgment, the configured AckWait, unlimited deliveries, the
// configured start position), and the bucket of release records (see
// "Delivery counts" in the package documentation). The consumer has no inactivity threshold:
// it stays, with its position and its unacknowledged messages, while no
// member is connected, until someone deletes it (DeleteGroup). The
// subscription runs one background goroutine until Close.
func (d *Driver) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	if err := errors.Join(herald.ValidateName("topic", topic), herald.ValidateName("group", group)); err != nil {
		return nil, fail("subscribe", topic, group, "", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.closed.Load() {
		return nil, fail("subscribe", topic, group, "", herald.ErrClosed)
	}
	stream, err := d.stream(ctx, topic)
	if err != nil {
		return nil, err
	}
	cons, err := d.consumer(ctx, stream, topic, group)
	if err != nil {
		return nil, err
	}
	kv, err := d.releases(ctx)
	if err != nil {
		return nil, err
	}
	s := newSubscription(d, topic, group, cons, kv)
	d.mu.Lock()
	if d.closed.Load() {
		d.mu.Unlock()
		return nil, fail("subscribe", topic, group, "", herald.ErrClosed)
	}
	d.subs[s] = struct{}{}
	d.mu.Unlock()
	if err := s.start(); err != nil {
		s.cancel()
		d.forget(s)
		return nil, err
	}
	d.StartDelayMover()
	return s, nil
}

// consumer returns group's durable consumer on stream, creating it on
// first use and updating its AckWait when it differs from the driver's.
func (d *Driver) consumer(ctx context.Context, stream, topic, group string) (jetstream.Consumer, error) {
	name := d.consumerName(topic, group)
	c, err := d.js.Consumer(ctx, stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		deliver := jetstream.DeliverAllPolicy
		if d.cfg.start == herald.StartLatest {
			deliver = jetstream.DeliverNewPolicy
		}
		c, err = d.js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
			Durable:       name,
			Description:   consumerDescription(topic, group),
			DeliverPolicy: deliver,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       d.cfg.ackWait,
			MaxDeliver:    -1,
			FilterSubject: d.Subject(topic),
		})
		if errors.Is(err, jetstream.ErrConsumerExists) { // created meanwhile
			c, err = d.js.Consumer(ctx, stream, name)
		}
	}
	if err != nil {
		return nil, fail("subscribe", topic, group, "consumer "+name+" on stream "+stream, err)
	}
	cfg := c.CachedInfo().Config
	if cfg.Description != consumerDescription(topic, group) {
		return nil, fail("subscribe", topic, group, fmt.Sprintf("consumer %s on stream %s is %q", name, stream, cfg.Description),
			fmt.Errorf("group maps to the consumer name of another: %w", herald.ErrInvalidName))
	}
	if cfg.AckWait != d.cfg.ackWait {
		cfg.AckWait = d.cfg.ackWait
		if c, err = d.js.UpdateConsumer(ctx, stream, cfg); err != nil {
			return nil, fail("subscribe", topic, group, "updating the ack wait of consumer "+name, err)
		}
	}
	return c, nil
}

// DeleteGroup deletes group's consumer on topic: its position and its
// unacknowledged messages. Members still subscribed fail their next Fetch.
// Release records of the group's messages expire on their own. It creates
// nothing: a topic without a stream fails with jetstream.ErrStreamNotFound.
func (d *Driver) DeleteGroup(ctx context.Context, topic, group string) error {
	if err := errors.Join(herald.ValidateName("topic", topic), herald.ValidateName("group", group)); err != nil {
		return fail("delete group", topic, group, "", err)
	}
	stream := d.StreamName(topic)
	if d.cfg.subjectFor != nil {
		var err error
		if stream, err = d.stream(ctx, topic); err != nil {
			return err
		}
	}
	if err := d.js.DeleteConsumer(ctx, stream, d.consumerName(topic, group)); err != nil {
		return fail("delete group", topic, group, "", err)
	}
	return nil
}
