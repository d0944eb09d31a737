package natsdriver

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
)

// Write publishes msgs asynchronously, in slice order (so messages of one
// key keep their order), and waits until the server acknowledged each one
// or ctx is done. Each message carries its ID as Nats-Msg-Id, so that a
// retried publish within the stream's duplicate window is dropped by the
// server; dead-letter entries and redrives do not (see "Wire format" in
// the package documentation). A nil message, an invalid topic, a header
// NATS cannot carry or a message above the size limit fails the whole
// call before anything is sent, and so does a cancelled ctx. The streams of topics not seen before
// are created first (see Subscribe); with WithSubjects a message whose
// subject no stream takes fails (no responders).
//
// Delayed messages (herald.HeaderDeliverAt in the future) go to the delay
// stream with WithDelays, in the same batch of publishes, and a mover
// forwards them when due (see "Delayed delivery" in the package
// documentation); without it, one fails the whole Write
// (herald.ErrDelayNotSupported) and nothing is sent.
//
// Partial writes: the publishes of a batch are not a transaction. When
// some of them fail (or ctx ends before the server acknowledged them),
// Write returns a *herald.WriteError listing each failed message (index,
// ID, topic, partition -1, the cause); every message it does not list was
// stored. A listed message may have been stored too when its
// acknowledgment was lost. Retry the failed messages, or the whole batch:
// the server drops the copies it already has within its duplicate window,
// and consumers deduplicate by Message.ID (herald.WithDedup). When every
// message failed, Write returns a *herald.DriverError.
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
	delayed, err := d.delayedOf(msgs, time.Now())
	if err != nil {
		return err
	}
	out, err := d.prepare(msgs, delayed)
	if err != nil {
		return err
	}
	if err := d.streamsOf(ctx, msgs, delayed); err != nil {
		return err
	}
	failed := d.publish(ctx, msgs, out)
	if len(failed) == 0 {
		return nil
	}
	d.forgetStreams(msgs)
	if len(failed) == len(msgs) {
		return fail("write", msgs[0].Topic, "", fmt.Sprintf("%d messages", len(msgs)), failed[0].Err)
	}
	return &herald.WriteError{Driver: "natsdriver", Messages: len(msgs), Failed: failed}
}

// streamsOf makes sure the streams msgs go to exist: their topics' (unless
// WithSubjects maps them onto streams of the application's) and, for the
// delayed ones (delayed[i]; nil for none), the delay stream.
func (d *Driver) streamsOf(ctx context.Context, msgs []*herald.Message, delayed []bool) error {
	last := ""
	for i, m := range msgs {
		if delayed != nil && delayed[i] {
			if err := d.delayStream(ctx); err != nil {
				return err
			}
			continue
		}
		if d.cfg.subjectFor == nil && m.Topic != last {
			if _, err := d.stream(ctx, m.Topic); err != nil {
				return err
			}
			last = m.Topic
		}
	}
	return nil
}

// prepare checks every message and encodes it, or fails the batch. A
// delayed message (delayed[i]) goes to the delay stream, with
// herald.HeaderDelayTopic naming its topic.
func (d *Driver) prepare(msgs []*herald.Message, delayed []bool) ([]*nats.Msg, error) {
	limit := d.cfg.maxMessageBytes
	if mp := int(d.js.Conn().MaxPayload()); mp > 0 && (limit == 0 || mp < limit) {
		limit = mp
	}
	out := make([]*nats.Msg, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return nil, fail("write", "", "", fmt.Sprintf("message %d of %d", i+1, len(msgs)), herald.ErrNilEvent)
		}
		if err := herald.ValidateName("topic", m.Topic); err != nil {
			return nil, fail("write", m.Topic, "", "message "+m.ID, err)
		}
		subject := d.Subject(m.Topic)
		if delayed != nil && delayed[i] {
			c := *m
			c.Headers = maps.Clone(m.Headers)
			c.Headers[herald.HeaderDelayTopic] = m.Topic
			m, subject = &c, d.delaySubject(m.Topic)
		}
		nm, size, err := encode(m, subject, dedupKey(m, d.cfg.subjectFor != nil))
		if err != nil {
			return nil, fail("write", m.Topic, "", "message "+m.ID, err)
		}
		if limit > 0 && size > limit {
			return nil, fail("write", m.Topic, "", fmt.Sprintf("message %s: %d bytes with headers, limit %d", m.ID, size, limit),
				herald.ErrMessageTooLarge)
		}
		out[i] = nm
	}
	return out, nil
}

// publish sends out and waits for the server's acknowledgments; it
// returns the messages that were not acknowledged.
func (d *Driver) publish(ctx context.Context, msgs []*herald.Message, out []*nats.Msg) []*herald.MessageError {
	var failed []*herald.MessageError
	lost := func(i int, err error) {
		failed = append(failed, &herald.MessageError{Index: i, ID: msgs[i].ID, Topic: msgs[i].Topic, Partition: -1, Err: err})
	}
	futures := make([]jetstream.PubAckFuture, len(out))
	for i, nm := range out {
		f, err := d.js.PublishMsgAsync(nm)
		if err != nil {
			lost(i, err)
			continue
		}
		futures[i] = f
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			lost(i, err)
		case <-ctx.Done():
			lost(i, ctx.Err())
		}
	}
	// A failed PublishMsgAsync is recorded before the acknowledgments of
	// earlier messages are awaited: put the failures in slice order.
	slices.SortFunc(failed, func(a, b *herald.MessageError) int { return cmp.Compare(a.Index, b.Index) })
	return failed
}
