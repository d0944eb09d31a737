package amqpdriver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
)

// Subscribe joins group on topic: it declares the topic's exchange, the
// group's durable queue (quorum unless WithQueueType says otherwise,
// single-active-consumer with WithSingleActiveConsumer) and the binding,
// when they do not exist, and starts consuming from the queue with manual
// acknowledgments and the prefetch of WithPrefetch. Every member of a
// group consumes from the same queue.
//
// The queue exists from the group's first Subscribe on: it receives what
// is published after that, not before (RabbitMQ keeps no history for
// queues that do not exist). The queue outlives its members; delete it
// (QueueName) when the group is gone for good.
//
// The Subscription runs one goroutine, which moves the broker's
// deliveries into its buffer, until Close.
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
	s := &subscription{d: d, topic: topic, group: group, queue: d.QueueName(topic, group), closing: make(chan struct{})}
	g, err := s.consume(ctx)
	if err != nil {
		return nil, fail("subscribe", topic, group, "queue "+s.queue, err)
	}
	s.gen = g
	d.mu.Lock()
	if d.closed.Load() {
		d.mu.Unlock()
		g.close()
		return nil, fail("subscribe", topic, group, "", herald.ErrClosed)
	}
	d.subs[s] = struct{}{}
	d.mu.Unlock()
	return s, nil
}

// subscription is one member of a group: a channel consuming from the
// group's queue. When the broker closes the channel or the connection is
// lost, the broker puts every unacknowledged delivery back in the queue;
// the next Fetch opens a new channel (a new generation) and consumes
// again, and acknowledgments of the old generation's deliveries fail.
type subscription struct {
	d                   *Driver
	topic, group, queue string

	closed  atomic.Bool
	closing chan struct{} // closed by Close, after it set closed
	mu      sync.Mutex    // gen; held while consuming again
	gen     *generation
}

var _ herald.LagReporter = (*subscription)(nil)

// generation is one channel's consumption: the deliveries received and
// not yet fetched, and how many it holds unacknowledged.
type generation struct {
	ch   *amqp.Channel
	done chan struct{} // closed when the pump stopped: the channel is gone
	// ready (capacity 1) signals that deliveries arrived or the channel
	// closed.
	ready chan struct{}

	mu       sync.Mutex
	buffered []amqp.Delivery
	unacked  int64 // received and not acknowledged, buffered included
	err      error // why the channel closed, once it has
	acks     ackState
}

// ackState coalesces acknowledgments (see Ack). The channel's delivery
// tags run 1, 2, 3, ... and every delivery goes to Fetch in tag order, so
// the acknowledged tags from 1 form a prefix: its acknowledgments are
// deferred and sent as one basic.ack with multiple set, up to the prefix's
// highest deferred tag; a tag acknowledged out of order is sent on its own
// at once, so it never waits behind a slow one and holds no prefetch.
type ackState struct {
	low      uint64              // the lowest tag not acknowledged yet
	deferred uint64              // the highest tag whose ack is deferred; sent covers up to it
	sent     uint64              // the highest tag a multiple ack has covered
	above    map[uint64]struct{} // tags above low acknowledged one by one
	timer    *time.Timer         // sends the deferred ones ackDelay after the first; nil when none wait
}

// ackBatch is how many deferred acknowledgments make Ack send them: one
// frame for up to 64 messages in a steady flow.
const ackBatch = 64

// ackDelay bounds how long an acknowledgment stays deferred.
const ackDelay = 10 * time.Millisecond

// consume opens a channel on the consuming connection, declares the
// exchange, queue and binding, and starts consuming.
func (s *subscription) consume(ctx context.Context) (*generation, error) {
	ch, err := s.d.consume.channel(ctx)
	if err != nil {
		return nil, err
	}
	deliveries, err := s.declareAndConsume(ch)
	if err != nil {
		_ = ch.Close()
		return nil, err
	}
	g := &generation{ch: ch, done: make(chan struct{}), ready: make(chan struct{}, 1), acks: ackState{low: 1}}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	go g.pump(deliveries, closed)
	return g, nil
}

func (s *subscription) declareAndConsume(ch *amqp.Channel) (<-chan amqp.Delivery, error) {
	cfg := s.d.cfg
	if err := ch.Qos(cfg.prefetch, 0, false); err != nil {
		return nil, err
	}
	exchange := s.d.ExchangeName(s.topic)
	if err := declareExchange(ch, exchange); err != nil {
		return nil, fmt.Errorf("declare exchange %s: %w", exchange, err)
	}
	args := amqp.Table{"x-queue-type": cfg.queueType.String()}
	if cfg.singleActive {
		args["x-single-active-consumer"] = true
	}
	if _, err := ch.QueueDeclare(s.queue, true, false, false, false, args); err != nil {
		return nil, fmt.Errorf("declare queue (%v): %w", args, err)
	}
	if err := ch.QueueBind(s.queue, cfg.bindingKey(s.topic), exchange, false, nil); err != nil {
		return nil, fmt.Errorf("bind to exchange %s: %w", exchange, err)
	}
	return ch.Consume(s.queue, "", false, false, false, false, nil)
}

// pump moves deliveries into the buffer until the channel closes.
func (g *generation) pump(deliveries <-chan amqp.Delivery, closed <-chan *amqp.Error) {
	defer close(g.done)
	for dl := range deliveries {
		g.mu.Lock()
		g.buffered = append(g.buffered, dl)
		g.unacked++
		g.mu.Unlock()
		g.signal()
	}
	err := error(amqp.ErrClosed)
	select {
	case e, ok := <-closed:
		if ok && e != nil {
			err = e
		}
	default:
	}
	// The broker cancels a consumer without closing its channel when the
	// queue is deleted: close it, so nothing stays held on it.
	_ = g.ch.Close()
	g.mu.Lock()
	g.err = err
	g.buffered = nil // back in the queue with the channel
	g.unacked = 0
	g.mu.Unlock()
	g.signal()
}

func (g *generation) signal() {
	select {
	case g.ready <- struct{}{}:
	default:
	}
}

// take moves up to len(dst) buffered deliveries to dst. It reports false
// when the channel has closed.
func (g *generation) take(topic string, dst []herald.Delivery) (int, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return 0, false
	}
	n := min(len(dst), len(g.buffered))
	for i := range n {
		dl := &g.buffered[i]
		dst[i] = herald.Delivery{Message: message(topic, dl), Ref: g, Seq: dl.DeliveryTag}
	}
	g.buffered = g.buffered[n:]
	if len(g.buffered) == 0 {
		g.buffered = nil
	}
	return n, true
}

// alive reports whether the channel is still open.
func (g *generation) alive() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err == nil
}

// close sends the deferred acknowledgments, closes the channel (the
// broker requeues what it had not acknowledged) and waits for the pump to
// stop.
func (g *generation) close() {
	g.mu.Lock()
	_ = g.flushAcks()
	if g.acks.timer != nil {
		g.acks.timer.Stop()
		g.acks.timer = nil
	}
	g.mu.Unlock()
	_ = g.ch.Close()
	<-g.done
}

// ack settles tag: deferred when it extends the acknowledged prefix (sent
// once ackBatch of them wait), sent on its own otherwise. g.mu held.
func (g *generation) ack(tag uint64) error {
	a := &g.acks
	if tag != a.low {
		if err := g.ch.Ack(tag, false); err != nil {
			return err
		}
		if a.above == nil {
			a.above = make(map[uint64]struct{})
		}
		a.above[tag] = struct{}{}
		return nil
	}
	a.deferred = tag
	a.low++
	for {
		if _, ok := a.above[a.low]; !ok {
			break
		}
		delete(a.above, a.low)
		a.low++
	}
	if a.deferred-a.sent >= ackBatch {
		return g.flushAcks()
	}
	if a.timer == nil {
		a.timer = time.AfterFunc(ackDelay, func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			_ = g.flushAcks() // a failure fails with the channel: the messages come again
		})
	}
	return nil
}

// flushAcks sends the deferred acknowledgments as one multiple ack; g.mu
// held. Its tag is one acknowledged by nothing else, as the broker asks.
func (g *generation) flushAcks() error {
	a := &g.acks
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	if a.deferred <= a.sent || g.err != nil {
		return nil
	}
	a.sent = a.deferred
	return g.ch.Ack(a.deferred, true)
}

// Fetch returns buffered deliveries, waiting for the first when there is
// none. When the channel was closed (by the broker, or with the
// connection), Fetch opens a new one and consumes again, dialling when
// the connection is gone, after the reconnect backoff; when that fails it
// returns the error, and the next Fetch tries again. Deliveries fetched
// from the closed channel are back in the queue and will be delivered
// again; their Ack fails.
//
// Delivery.Count is 0 (unknown): see the package documentation, "Delivery
// counts".
func (s *subscription) Fetch(ctx context.Context, dst []herald.Delivery) (int, error) {
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		g, err := s.current(ctx)
		if err != nil {
			return 0, err
		}
		n, ok := g.take(s.topic, dst)
		if n > 0 || len(dst) == 0 {
			return n, nil
		}
		if !ok {
			continue // current() replaces it
		}
		// Nothing to hand out: the deferred acknowledgments go now, so
		// that they hold no prefetch while the member waits. One that
		// fails fails with the channel, which the pump notices: its
		// messages come again.
		g.mu.Lock()
		_ = g.flushAcks()
		g.mu.Unlock()
		select {
		case <-g.ready:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.closing:
			return 0, fail("fetch", s.topic, s.group, "", herald.ErrClosed)
		}
	}
}

// current returns the open generation, consuming again when the last one
// closed.
func (s *subscription) current(ctx context.Context) (*generation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, fail("fetch", s.topic, s.group, "", herald.ErrClosed)
	}
	if s.gen != nil && s.gen.alive() {
		return s.gen, nil
	}
	if s.gen != nil {
		<-s.gen.done
		s.gen = nil
	}
	// Close must not wait for a reconnection's backoff.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-stop:
		}
	}()
	g, err := s.consume(ctx)
	if s.closed.Load() {
		if g != nil {
			g.close()
		}
		return nil, fail("fetch", s.topic, s.group, "", herald.ErrClosed)
	}
	if err != nil {
		if errors.Is(err, herald.ErrClosed) {
			return nil, fail("fetch", s.topic, s.group, "", err)
		}
		return nil, fail("fetch", s.topic, s.group, "consume again from queue "+s.queue, err)
	}
	s.gen = g
	return g, nil
}

// errLost is the cause of an Ack whose channel closed after the Fetch.
var errLost = errors.New("the delivery's channel closed: the broker put it back in the queue, and it will be delivered again")

// Ack acknowledges d on the channel it came from. Acknowledgments that
// extend the prefix of acknowledged deliveries are coalesced: one
// basic.ack with multiple set covers up to 64 of them, sent when 64 wait,
// when Fetch finds nothing to hand out, and at Close. One that comes out
// of order is sent on its own at once. Neither waits for an answer: AMQP
// 0-9-1 has none. When that channel has closed since the Fetch, Ack fails
// and the message is delivered again (at-least-once); so is a message
// whose deferred acknowledgment the channel lost (a connection cut, a
// process killed), as if it had not been acknowledged.
func (s *subscription) Ack(ctx context.Context, d herald.Delivery) error {
	g, ok := d.Ref.(*generation)
	if !ok {
		return fail("ack", s.topic, s.group, "message "+messageID(d), errors.New("not a delivery of this driver"))
	}
	if s.closed.Load() {
		return fail("ack", s.topic, s.group, "message "+messageID(d), herald.ErrClosed)
	}
	if !g.alive() {
		return fail("ack", s.topic, s.group, "message "+messageID(d), errLost)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return fail("ack", s.topic, s.group, "message "+messageID(d), errLost)
	}
	if err := g.ack(d.Seq); err != nil {
		return fail("ack", s.topic, s.group, "message "+messageID(d), errors.Join(errLost, err))
	}
	if g.unacked > 0 {
		g.unacked--
	}
	return nil
}

func messageID(d herald.Delivery) string {
	if d.Message == nil {
		return ""
	}
	return d.Message.ID
}

// Close closes the subscription's channel: the broker puts every
// delivery not acknowledged back in the queue, for the group's next
// member. It sends the deferred acknowledgments first. Close waits for
// the channel's close-ok, bounded by ctx.
func (s *subscription) Close(ctx context.Context) error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(s.closing)
	s.mu.Lock()
	g := s.gen
	s.gen = nil
	s.mu.Unlock()
	s.d.forget(s)
	if g == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		g.close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fail("close", s.topic, s.group, "", ctx.Err())
	}
}

// Lag returns how many messages of the group's queue wait for a member
// (messages ready, by a passive queue.declare on a channel of its own)
// plus the deliveries this member holds unacknowledged
// (herald.LagReporter). AMQP does not tell how many the group's other
// members hold, so with several members each reports the queue's ready
// messages and its own deliveries; the group's lag is the ready messages
// plus every member's holdings.
func (s *subscription) Lag(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.closed.Load() {
		return 0, fail("lag", s.topic, s.group, "", herald.ErrClosed)
	}
	ch, err := s.d.consume.channel(ctx)
	if err != nil {
		return 0, fail("lag", s.topic, s.group, "", err)
	}
	defer func() { _ = ch.Close() }()
	q, err := ch.QueueDeclarePassive(s.queue, true, false, false, false, nil)
	if err != nil {
		return 0, fail("lag", s.topic, s.group, "queue "+s.queue, err)
	}
	return int64(q.Messages) + s.held(), nil
}

// held is how many deliveries the current generation holds
// unacknowledged.
func (s *subscription) held() int64 {
	s.mu.Lock()
	g := s.gen
	s.mu.Unlock()
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.unacked
}
