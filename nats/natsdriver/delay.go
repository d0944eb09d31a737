package natsdriver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
)

// Delayed delivery on a delay stream.
//
// Off by default (WithDelays). JetStream 2.9 cannot hold a stored message
// back, so a Write puts a delayed message in the delay stream instead of
// its topic's (DelayStreamName, a work queue), with herald.HeaderDelayTopic
// naming its topic. A mover, one per Driver with delays and subscriptions
// (or StartDelayMover), is a member of the stream's one pull consumer: it
// hands a message that is not due back with a negative acknowledgment
// delayed by what remains (the server redelivers it then, holding nothing
// else back), and forwards a due one through Write to its topic,
// acknowledging it after the server stored the copy: at-least-once. The
// copy's Nats-Msg-Id is its ID with its due time, so the topic stream's
// duplicate window drops a forward repeated after a crash, and a retry
// round of a message (same ID, another due time) is not dropped.

// delayConsumerName is the durable consumer of the delay stream that
// every mover of the stream is a member of.
const delayConsumerName = "herald_mover"

// delayBatch is how many messages a mover asks for at a time.
const delayBatch = 256

// delayStreamDescription is what the driver writes into the delay stream
// it creates, to tell it from a topic's stream.
const delayStreamDescription = "herald delayed messages"

// DelayPrecision reports how late after its due time a delayed message
// may reach its topic while a mover runs (herald.DelayedWriter): the
// fetch wait, which bounds how long a pull request of the mover takes to
// be answered or renewed. It is 0 without WithDelays.
func (d *Driver) DelayPrecision() time.Duration {
	if !d.cfg.delaysOn {
		return 0
	}
	return d.cfg.fetchWait
}

// DelayStreamName is the name of the stream that holds delayed messages
// until they are due: the stream prefix followed by DELAYED.
func (d *Driver) DelayStreamName() string { return d.cfg.streamPrefix + "DELAYED" }

// delaySubject is the subject of topic's messages in the delay stream.
func (d *Driver) delaySubject(topic string) string {
	return d.cfg.subjectPrefix + "_delayed." + Token(topic)
}

// delayedOf reports which of msgs are delayed at now, or refuses the
// batch: a malformed or too distant due time (herald.DelayError), or a
// delayed message with delays off (herald.ErrDelayNotSupported).
func (d *Driver) delayedOf(msgs []*herald.Message, now time.Time) ([]bool, error) {
	if !d.cfg.delaysOn {
		if err := herald.RefuseDelayed("natsdriver", msgs, now); err != nil {
			return nil, fail("write", "", "", "delays are off (see WithDelays)", err)
		}
		return nil, nil
	}
	dues, i, err := herald.DueTimes("natsdriver", msgs, now)
	if err != nil {
		return nil, fail("write", msgs[i].Topic, "", "", err)
	}
	if dues == nil {
		return nil, nil
	}
	delayed := make([]bool, len(msgs))
	for i, due := range dues {
		delayed[i] = !due.IsZero()
	}
	return delayed, nil
}

// delayStream makes sure the delay stream exists and is the driver's.
func (d *Driver) delayStream(ctx context.Context) error {
	d.delayMu.Lock()
	defer d.delayMu.Unlock()
	if d.delayStreamMade {
		return nil
	}
	name := d.DelayStreamName()
	s, err := d.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = d.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        name,
			Description: delayStreamDescription,
			Subjects:    []string{d.cfg.subjectPrefix + "_delayed.>"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     d.cfg.storage,
			Replicas:    d.cfg.replicas,
			Duplicates:  d.cfg.duplicateWindow,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = d.js.Stream(ctx, name)
		}
	}
	if err != nil {
		return fail("stream", "", "", "delay stream "+name, err)
	}
	if desc := s.CachedInfo().Config.Description; desc != delayStreamDescription {
		return fail("stream", "", "", fmt.Sprintf("stream %s is %q, not the delay stream", name, desc),
			fmt.Errorf("a topic maps to the delay stream's name: %w", herald.ErrInvalidName))
	}
	d.delayStreamMade = true
	return nil
}

// delayConsumer returns the movers' consumer, creating the delay stream
// and the consumer on first use. It has no limit of unacknowledged
// messages: the messages handed back until they are due count as such.
func (d *Driver) delayConsumer(ctx context.Context) (jetstream.Consumer, error) {
	if err := d.delayStream(ctx); err != nil {
		return nil, err
	}
	name := d.DelayStreamName()
	c, err := d.js.Consumer(ctx, name, delayConsumerName)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		c, err = d.js.CreateConsumer(ctx, name, jetstream.ConsumerConfig{
			Durable:       delayConsumerName,
			Description:   "herald delay mover",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       d.cfg.ackWait,
			MaxDeliver:    -1,
			MaxAckPending: -1,
		})
		if errors.Is(err, jetstream.ErrConsumerExists) {
			c, err = d.js.Consumer(ctx, name, delayConsumerName)
		}
	}
	if err != nil {
		return nil, fail("delay mover", "", "", "consumer "+delayConsumerName+" on stream "+name, err)
	}
	return c, nil
}

// StartDelayMover starts this Driver's mover, if it has not started yet;
// Subscribe starts it too. A process that only publishes delayed messages
// needs none as long as some process with subscriptions runs one. It does
// nothing without WithDelays or after Close. The mover stops at Close.
func (d *Driver) StartDelayMover() {
	if !d.cfg.delaysOn {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed.Load() || d.moverStop != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.moverStop = cancel
	d.moving.Go(func() { d.moveDelayed(ctx) })
}

// stopMover stops the mover and waits for it: at most the fetch wait,
// and the handling of what its last pull request brought.
func (d *Driver) stopMover() {
	d.mu.Lock()
	stop := d.moverStop
	d.mu.Unlock()
	if stop != nil {
		stop()
	}
	d.moving.Wait()
}

// moveDelayed is the mover's loop, until ctx ends.
func (d *Driver) moveDelayed(ctx context.Context) {
	var cons jetstream.Consumer
	wait := backoff.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		var err error
		if cons == nil {
			cons, err = d.delayConsumer(ctx)
		}
		if err == nil {
			err = d.moveBatch(ctx, cons)
		}
		if err == nil {
			wait.Reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		d.cfg.onError(fail("delay mover", "", "", "retrying", err))
		cons = nil // the stream or the consumer may be gone: look again
		backoff.Sleep(ctx, wait.Next())
	}
}

// moveBatch sends one pull request to the delay stream's consumer and
// handles its messages as they arrive (the request stays open for the
// fetch wait): each run of messages that arrived together is handed back
// where not due and forwarded where due.
func (d *Driver) moveBatch(ctx context.Context, cons jetstream.Consumer) error {
	b, err := cons.Fetch(delayBatch, jetstream.FetchMaxWait(d.cfg.fetchWait))
	if err != nil {
		return err
	}
	arrivals := b.Messages()
	var run []jetstream.Msg
	for {
		var msg jetstream.Msg
		ok := true
		if len(run) == 0 {
			msg, ok = <-arrivals
		} else {
			select {
			case msg, ok = <-arrivals:
			default: // nothing more right now: handle the run
				d.moveDue(ctx, run)
				run = nil
				continue
			}
		}
		if !ok {
			break
		}
		run = append(run, msg)
	}
	d.moveDue(ctx, run)
	if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// waiting is a message of the delay stream in the mover's hands.
type waiting struct {
	msg jetstream.Msg
	seq uint64
	due time.Time
	m   *herald.Message // what to forward
}

// moveDue hands the messages that are not due back until they are, and
// writes the due ones to their topics in due order (equal due times in
// stream order) in one Write, acknowledging those the server stored.
func (d *Driver) moveDue(ctx context.Context, msgs []jetstream.Msg) {
	now := time.Now()
	var due []waiting
	for _, msg := range msgs {
		w, err := d.forward(msg, now)
		switch {
		case err != nil:
			// Nowhere to deliver it: say so loudly, and move on.
			d.cfg.onError(fail("delay mover", "", "", "dropping an undeliverable message of the delay stream", err))
			_ = msg.Term()
		case w.due.After(now):
			d.handBackUntil(msg, w.due.Sub(now))
		default:
			due = append(due, w)
		}
	}
	if len(due) == 0 {
		return
	}
	slices.SortStableFunc(due, func(a, b waiting) int {
		return cmp.Or(a.due.Compare(b.due), cmp.Compare(a.seq, b.seq))
	})
	out := make([]*herald.Message, len(due))
	for i, w := range due {
		out[i] = w.m
	}
	// The forward is finished even when the mover is stopping, bounded:
	// what is not acknowledged comes back after the AckWait.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.ackWait)
	defer cancel()
	err := d.Write(wctx, out)
	failed := herald.NotWritten(err, len(out))
	if err != nil {
		d.cfg.onError(fail("delay mover", "", "", "forwarding due messages failed; they come back", err))
	}
	for i, w := range due {
		if failed[i] {
			d.handBackUntil(w.msg, 100*time.Millisecond)
			continue
		}
		if err := w.msg.Ack(); err != nil {
			// It comes back after the AckWait; the topic stream's duplicate
			// window drops the second forward.
			d.cfg.onError(fail("delay mover", "", "", "acknowledging a forwarded message of the delay stream", err))
		}
	}
}

// handBackUntil gives msg back to the delay stream's consumer, to be
// delivered again after wait.
func (d *Driver) handBackUntil(msg jetstream.Msg, wait time.Duration) {
	if err := msg.NakWithDelay(wait); err != nil {
		d.cfg.onError(fail("delay mover", "", "", "handing a delayed message back (it comes back after the AckWait)", err))
	}
}

// forward decodes a message of the delay stream: its due time, and the
// message bound for its topic, without herald.HeaderDelayTopic.
func (d *Driver) forward(msg jetstream.Msg, now time.Time) (waiting, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return waiting{}, err
	}
	detail := "stream sequence " + strconv.FormatUint(meta.Sequence.Stream, 10)
	topic := msg.Headers().Get(herald.HeaderDelayTopic)
	if err := herald.ValidateName("topic", topic); err != nil {
		return waiting{}, fmt.Errorf("%s: %s: %w", detail, herald.HeaderDelayTopic, err)
	}
	m := decode(topic, msg.Headers(), msg.Data())
	due, _, err := m.DeliverAt()
	if err != nil {
		return waiting{}, fmt.Errorf("%s: %w", detail, err)
	}
	m.Headers = maps.Clone(m.Headers)
	delete(m.Headers, herald.HeaderDelayTopic)
	return waiting{msg: msg, seq: meta.Sequence.Stream, due: due, m: m}, nil
}

// delayState is the Driver's part of delayed delivery.
type delayState struct {
	delayMu         sync.Mutex // delayStreamMade
	delayStreamMade bool

	moverStop context.CancelFunc // under Driver.mu; set once the mover started
	moving    sync.WaitGroup
}
