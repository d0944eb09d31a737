package amqpdriver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/parallel"
)

// Driver is a herald.Driver on RabbitMQ (AMQP 0-9-1). It is safe for
// concurrent use.
//
// It owns its connections: one for publishing and one shared by its
// subscriptions (RabbitMQ throttles a publishing connection as a whole,
// which must not hold up acknowledgments), and one for the reads of the
// dead-letter store, each dialled on first use and again after it was
// lost. Close closes them.
type Driver struct {
	cfg     config
	publish *connector
	consume *connector
	reads   *connector // the dead-letter store's

	closed atomic.Bool
	// pubSem (capacity 1) guards the publishing channel and the
	// exchanges declared on it; a channel so that a Write waiting for it
	// gives up when its ctx ends.
	pubSem   chan struct{}
	pub      *amqp.Channel
	declared map[string]bool

	mu   sync.Mutex // subs; Subscribe checks closed under it
	subs map[*subscription]struct{}
}

var (
	_ herald.Driver          = (*Driver)(nil)
	_ herald.Pinger          = (*Driver)(nil)
	_ herald.MessagingSystem = (*Driver)(nil)
)

// New returns a Driver that dials url (amqp:// or amqps://, as amqp091's
// Dial takes it) with amqp091's defaults (10 s heartbeat) and a
// connection_name client property (WithConnectionName). It returns an
// error that lists every invalid option, each a *herald.OptionError, and
// does not contact the broker: the first Write, Subscribe or Ping does.
func New(url string, opts ...Option) (*Driver, error) {
	cfg, err := newConfig(opts)
	if url == "" {
		err = errors.Join(&herald.OptionError{Option: "url", Value: url, Reason: "empty"}, err)
	}
	if err != nil {
		return nil, err
	}
	named := func(suffix string) DialFunc {
		return URLDialer(url, amqp.Config{
			Heartbeat:  10 * time.Second,
			Locale:     "en_US",
			Properties: amqp.Table{"connection_name": cfg.connectionName + " " + suffix},
		})
	}
	return newDriver(cfg, named("publish"), named("consume"), named("dead letters")), nil
}

// NewDial is New for connections dialled by dial (for TLS set up in code,
// a custom net.Conn, or settings New does not take). The driver calls dial
// for each connection it needs and owns, and closes, every connection dial
// returns; WithConnectionName does not apply (set the property in dial).
func NewDial(dial DialFunc, opts ...Option) (*Driver, error) {
	cfg, err := newConfig(opts)
	if dial == nil {
		err = errors.Join(&herald.OptionError{Option: "dial", Value: nil, Reason: "nil DialFunc"}, err)
	}
	if err != nil {
		return nil, err
	}
	return newDriver(cfg, dial, dial, dial), nil
}

func newDriver(cfg config, publish, consume, reads DialFunc) *Driver {
	return &Driver{
		cfg:     cfg,
		publish: newConnector(publish, cfg),
		consume: newConnector(consume, cfg),
		reads:   newConnector(reads, cfg),
		pubSem:  make(chan struct{}, 1),
		subs:    make(map[*subscription]struct{}),
	}
}

// fail builds the driver's errors: op on topic and group ("" when none),
// detail saying more, err the cause.
func fail(op, topic, group, detail string, err error) error {
	return &herald.DriverError{Driver: "amqpdriver", Op: op, Topic: topic, Group: group, Detail: detail, Err: err}
}

// MessagingSystem returns "rabbitmq" (herald.MessagingSystem).
func (d *Driver) MessagingSystem() string { return "rabbitmq" }

// Close closes the subscriptions still open (each handing its
// unacknowledged deliveries back to its queue, bounded by 10 s) and the
// driver's connections, and makes later Write, Subscribe and Ping calls
// fail with herald.ErrClosed. Close is idempotent. A Write in progress
// fails.
func (d *Driver) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	d.mu.Lock()
	subs := slices.Collect(maps.Keys(d.subs))
	d.mu.Unlock()
	err := parallel.Each(subs, func(s *subscription) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return s.Close(ctx)
	})
	err = errors.Join(err, d.publish.close(), d.consume.close(), d.reads.close())
	if err != nil {
		return fail("close", "", "", "", err)
	}
	return nil
}

func (d *Driver) forget(s *subscription) {
	d.mu.Lock()
	delete(d.subs, s)
	d.mu.Unlock()
}

// Ping opens and closes a channel on the publishing connection, dialling
// it first when there is none, so a wrong address, password or virtual
// host shows here (herald.Pinger).
func (d *Driver) Ping(ctx context.Context) error {
	if d.closed.Load() {
		return fail("ping", "", "", "", herald.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fail("ping", "", "", "", err)
	}
	ch, err := d.publish.channel(ctx)
	if err != nil {
		return fail("ping", "", "", "", err)
	}
	if err := ch.Close(); err != nil {
		return fail("ping", "", "", "", err)
	}
	return nil
}

// ExchangeName returns the exchange messages of topic are published to.
func (d *Driver) ExchangeName(topic string) string {
	if d.cfg.exchange != "" {
		return d.cfg.exchange
	}
	return d.cfg.prefix + topic
}

// QueueName returns the queue of group on topic: prefix + topic + "@" +
// group ("@" appears in no herald name, so no two pairs share a queue).
// A name above AMQP's 255 bytes is cut and ends in a hash of the whole.
func (d *Driver) QueueName(topic, group string) string {
	return shortName(d.cfg.prefix + topic + "@" + group)
}

// shortName is name when it fits in AMQP's 255 bytes, else name cut to
// fit and ended in a hash of the whole.
func shortName(name string) string {
	if len(name) <= maxKeyBytes {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	tail := "#" + hex.EncodeToString(sum[:16])
	return name[:maxKeyBytes-len(tail)] + tail
}

// validate checks every message of a batch before any is published.
func (d *Driver) validate(msgs []*herald.Message) error {
	for i, m := range msgs {
		if m == nil {
			return fail("write", "", "", fmt.Sprintf("message %d of %d", i+1, len(msgs)), herald.ErrNilEvent)
		}
		if err := herald.ValidateName("topic", m.Topic); err != nil {
			return fail("write", m.Topic, "", "message "+m.ID, err)
		}
		size := m.Size()
		if d.cfg.maxMessageBytes > 0 && size > d.cfg.maxMessageBytes {
			return fail("write", m.Topic, "", fmt.Sprintf("message %s: %d bytes, limit %d",
				m.ID, size, d.cfg.maxMessageBytes), herald.ErrMessageTooLarge)
		}
		if props := size - len(m.Data); props > MaxPropertyBytes {
			return fail("write", m.Topic, "", fmt.Sprintf("message %s: key, ID, content type and headers of %d bytes, limit %d (they travel in one AMQP frame)",
				m.ID, props, MaxPropertyBytes), herald.ErrMessageTooLarge)
		}
	}
	return nil
}

// Write publishes msgs on the publishing channel, in confirm mode, in
// slice order (so messages of one key keep their order), each persistent,
// to its topic's exchange (declared durable on first use), and returns
// once the broker has confirmed every one: a confirmed message is on disk
// in every queue it was routed to. A nil message, an invalid topic or a
// message above the size limit fails the whole call before anything is
// published; so does a ctx that is already done.
//
// A message published to a topic no group has subscribed to yet is
// confirmed and dropped (queues exist from their group's first
// Subscribe; see the package documentation).
//
// Partial writes: when the broker refuses some messages (basic.nack) or
// the channel closes before it confirmed them, Write returns a
// *herald.WriteError listing each message not confirmed (index, ID, topic,
// partition -1, the cause); every message it does not list was confirmed.
// A listed message may have been stored all the same (the confirm was
// lost with the connection). When ctx ends while Write waits for the
// confirms it returns ctx.Err() (wrapped) and the batch is in the same
// doubt. Retry the failed messages or the whole batch; consumers
// deduplicate by Message.ID (herald.WithDedup).
func (d *Driver) Write(ctx context.Context, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.closed.Load() {
		return fail("write", "", "", "", herald.ErrClosed)
	}
	if err := herald.RefuseDelayed("amqpdriver", msgs, time.Now()); err != nil {
		return fail("write", "", "", "", err) // no delayed delivery yet
	}
	if err := d.validate(msgs); err != nil {
		return err
	}
	ch, confirms, failed, err := d.publishAll(ctx, msgs)
	if err != nil {
		return err
	}
	return d.awaitConfirms(ctx, ch, msgs, confirms, failed)
}

// publishAll publishes msgs, under the publishing channel's lock, and
// returns the channel and a confirmation per message published. When publishing fails
// part-way, the messages from there on are in failed; when it fails
// before the first message, the error says why.
func (d *Driver) publishAll(ctx context.Context, msgs []*herald.Message) (*amqp.Channel, []*amqp.DeferredConfirmation, []*herald.MessageError, error) {
	select {
	case d.pubSem <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, nil, ctx.Err()
	}
	defer func() { <-d.pubSem }()
	ch, err := d.pubChannel(ctx)
	if err != nil {
		return nil, nil, nil, fail("write", msgs[0].Topic, "", "publishing channel", err)
	}
	if err := d.declareExchanges(ctx, ch, msgs); err != nil {
		return nil, nil, nil, err
	}
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	for i, m := range msgs {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, d.ExchangeName(m.Topic), d.cfg.routingKey(m), false, false, publishing(m))
		if err == nil && dc == nil {
			err = errors.New("channel is not in confirm mode")
		}
		if err != nil {
			return ch, confirms, failedFrom(msgs, i, err), nil
		}
		confirms = append(confirms, dc)
	}
	return ch, confirms, nil, nil
}

// failedFrom lists msgs[i:] as not written, for err.
func failedFrom(msgs []*herald.Message, i int, err error) []*herald.MessageError {
	var failed []*herald.MessageError
	for j := i; j < len(msgs); j++ {
		failed = append(failed, &herald.MessageError{Index: j, ID: msgs[j].ID, Topic: msgs[j].Topic, Partition: -1, Err: err})
	}
	return failed
}

// pubChannel returns the publishing channel, opening it (in confirm
// mode) when there is none or the broker closed it. Called under pubSem.
func (d *Driver) pubChannel(ctx context.Context) (*amqp.Channel, error) {
	if d.pub != nil && !d.pub.IsClosed() {
		return d.pub, nil
	}
	d.pub, d.declared = nil, nil
	ch, err := d.publish.channel(ctx)
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	d.pub, d.declared = ch, map[string]bool{}
	return ch, nil
}

// declareExchanges declares the exchanges of msgs, and the streams of
// the retained topics among them, that this channel has not declared yet.
// Called under pubSem.
func (d *Driver) declareExchanges(ctx context.Context, ch *amqp.Channel, msgs []*herald.Message) error {
	for _, m := range msgs {
		name := d.ExchangeName(m.Topic)
		if !d.declared[name] {
			if err := declareExchange(ch, name); err != nil {
				return fail("write", m.Topic, "", "declare exchange "+name, err)
			}
			d.declared[name] = true
		}
		if d.cfg.retained(m.Topic) {
			if err := d.declareRetained(ctx, m.Topic); err != nil {
				return err
			}
		}
	}
	return nil
}

// declareExchange declares a durable topic exchange.
func declareExchange(ch *amqp.Channel, name string) error {
	return ch.ExchangeDeclare(name, amqp.ExchangeTopic, true, false, false, false, nil)
}

// errNacked is the cause of a message the broker refused.
var errNacked = errors.New("the broker refused the message (basic.nack)")

// errUnconfirmed is the cause of a message whose channel closed before the
// broker confirmed it.
var errUnconfirmed = errors.New("the channel closed before the broker confirmed the message")

// awaitConfirms waits for every confirm and reports the messages not
// confirmed, with those that failed to publish.
func (d *Driver) awaitConfirms(ctx context.Context, ch *amqp.Channel, msgs []*herald.Message, confirms []*amqp.DeferredConfirmation, failed []*herald.MessageError) error {
	var refused []*herald.MessageError
	for i, dc := range confirms {
		ack, err := dc.WaitContext(ctx)
		if err != nil {
			return fail("write", msgs[i].Topic, "", fmt.Sprintf("waiting for the confirms of %d messages", len(msgs)), err)
		}
		if !ack {
			// amqp091 resolves a basic.nack and a confirm lost with the
			// channel alike.
			cause := errNacked
			if ch.IsClosed() {
				cause = errUnconfirmed
			}
			refused = append(refused, &herald.MessageError{Index: i, ID: msgs[i].ID, Topic: msgs[i].Topic, Partition: -1, Err: cause})
		}
	}
	refused = append(refused, failed...)
	if len(refused) == 0 {
		return nil
	}
	return &herald.WriteError{Driver: "amqpdriver", Messages: len(msgs), Failed: refused}
}
