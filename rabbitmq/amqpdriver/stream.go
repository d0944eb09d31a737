package amqpdriver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald/internal/backoff"
)

// RedrivenSuffix ends the name of the stream where the dead-letter store
// records the positions of a topic it redrove: prefix + topic +
// RedrivenSuffix. "#" is in no herald name, so no topic's stream has that
// name.
const RedrivenSuffix = "#redriven"

// fenceType is the AMQP type property of a fence: a message without
// body that a read of a stream publishes to that stream alone, to know
// where the stream ends (see readStream).
const fenceType = "herald.fence"

// Where a read of a stream starts, besides an offset: the x-stream-offset
// values for the oldest message kept and for the newest chunk.
const (
	fromFirst = "first"
	fromLast  = "last"
)

// errNoStream is the cause of a read of a stream that does not exist.
var errNoStream = errors.New("no such stream")

// StreamName returns the stream queue that keeps the messages of a
// retained topic (WithRetainedTopics): prefix + topic, shortened as
// QueueName shortens. Queues and exchanges are named apart, so it may
// share the name of the topic's exchange; no group's queue has it
// (QueueName holds an "@").
func (d *Driver) StreamName(topic string) string { return shortName(d.cfg.prefix + topic) }

// marksName is the stream where the dead-letter store records the
// positions of topic it redrove.
func (d *Driver) marksName(topic string) string {
	return shortName(d.cfg.prefix + topic + RedrivenSuffix)
}

// bindingKey is what a queue of topic is bound to the topic's exchange
// with: every routing key on an exchange of its own, the topic on a
// shared one (WithExchange).
func (c config) bindingKey(topic string) string {
	if c.exchange != "" {
		return topic
	}
	return "#"
}

// streamArgs are the arguments of every stream the driver declares.
func (c config) streamArgs() amqp.Table {
	args := amqp.Table{"x-queue-type": "stream"}
	if c.retentionAge > 0 {
		args["x-max-age"] = strconv.FormatInt(int64(c.retentionAge/time.Second), 10) + "s"
	}
	if c.retentionBytes > 0 {
		args["x-max-length-bytes"] = c.retentionBytes
	}
	return args
}

// streamKey is how d.declared records a stream, apart from the exchanges
// (whose names have no space).
func streamKey(name string) string { return "stream " + name }

// declareRetained makes sure topic's stream exists and is bound to the
// topic's exchange, once per publishing channel. Called under pubSem.
func (d *Driver) declareRetained(ctx context.Context, topic string) error {
	stream := d.StreamName(topic)
	if d.declared[streamKey(stream)] {
		return nil
	}
	exchange := d.ExchangeName(topic)
	err := d.ensureStream(ctx, stream, func(ch *amqp.Channel) error {
		if err := ch.QueueBind(stream, d.cfg.bindingKey(topic), exchange, false, nil); err != nil {
			return fmt.Errorf("bind stream %s to exchange %s: %w", stream, exchange, err)
		}
		return nil
	})
	if err != nil {
		return fail("write", topic, "", "stream "+stream, err)
	}
	d.declared[streamKey(stream)] = true
	return nil
}

// ensureStream declares the stream name with the driver's retention when
// it does not exist, and uses it as it is when it does (declared by
// another driver, maybe with another retention, which the broker would
// refuse to declare again), then calls then. It works on channels of
// its own, since a refused declaration closes its channel.
func (d *Driver) ensureStream(ctx context.Context, name string, then func(*amqp.Channel) error) error {
	ch, err := d.publish.channel(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	if _, err := ch.QueueDeclarePassive(name, true, false, false, false, nil); err != nil {
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
			return fmt.Errorf("look up stream %s: %w", name, err)
		}
		if ch, err = d.publish.channel(ctx); err != nil {
			return err
		}
		defer func() { _ = ch.Close() }()
		if _, err := ch.QueueDeclare(name, true, false, false, false, d.cfg.streamArgs()); err != nil {
			return fmt.Errorf("declare stream %s (%v): %w", name, d.cfg.streamArgs(), err)
		}
	}
	if then == nil {
		return nil
	}
	return then(ch)
}

// publishToStream publishes ps to stream alone (through the default
// exchange) on the publishing channel, declaring the stream first when
// declare is set, and waits for the broker's confirms.
func (d *Driver) publishToStream(ctx context.Context, stream string, declare bool, ps []amqp.Publishing) error {
	confirms, err := d.publishDirect(ctx, stream, declare, ps)
	if err != nil {
		return err
	}
	for _, dc := range confirms {
		ack, err := dc.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ack {
			return errNacked
		}
	}
	return nil
}

// publishDirect is publishToStream's part under pubSem.
func (d *Driver) publishDirect(ctx context.Context, stream string, declare bool, ps []amqp.Publishing) ([]*amqp.DeferredConfirmation, error) {
	select {
	case d.pubSem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-d.pubSem }()
	ch, err := d.pubChannel(ctx)
	if err != nil {
		return nil, fmt.Errorf("publishing channel: %w", err)
	}
	if declare && !d.declared[streamKey(stream)] {
		if err := d.ensureStream(ctx, stream, nil); err != nil {
			return nil, err
		}
		d.declared[streamKey(stream)] = true
	}
	confirms := make([]*amqp.DeferredConfirmation, 0, len(ps))
	for _, p := range ps {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", stream, false, false, p)
		if err == nil && dc == nil {
			err = errors.New("channel is not in confirm mode")
		}
		if err != nil {
			return nil, err
		}
		confirms = append(confirms, dc)
	}
	return confirms, nil
}

// readStream calls fn with the messages of stream in offset order,
// starting at from (fromFirst, or an offset), until fn returns false or
// the read reached what the stream held when readStream was called. It
// returns the offset where that ends (a fence, see below), or -1 when fn
// stopped first, and errNoStream, creating nothing, when there is no
// such stream.
//
// AMQP does not tell how long a stream is (queue.declare-ok counts 0
// messages for a stream), hence the fence: a message of its own that a
// consumer in place publishes to the stream, so that it comes after every
// message the read is to see. A consumer from an offset past the end
// waits for that offset to be written, so for an offset the end is
// found first, by a consumer from the stream's last chunk; a read from
// past the end calls fn with nothing. Fences of other reads are skipped.
func (d *Driver) readStream(ctx context.Context, stream string, from any, fn func(offset int64, dl *amqp.Delivery) bool) (int64, error) {
	if _, ok := from.(int64); !ok {
		return d.consumeStream(ctx, stream, from, -1, fn)
	}
	end, err := d.consumeStream(ctx, stream, fromLast, -1, func(int64, *amqp.Delivery) bool { return true })
	if err != nil || from.(int64) > end {
		return end, err
	}
	return d.consumeStream(ctx, stream, from, end, fn)
}

// consumeStream is readStream with one consumer, from from, until the
// delivery at offset end, or until its own fence when end is -1.
func (d *Driver) consumeStream(ctx context.Context, stream string, from any, end int64, fn func(offset int64, dl *amqp.Delivery) bool) (int64, error) {
	ch, deliveries, err := d.startReading(ctx, stream, from)
	if err != nil {
		return -1, err
	}
	defer func() { _ = ch.Close() }()
	token := ""
	if end < 0 {
		token = fenceToken()
		fence := amqp.Publishing{Type: fenceType, MessageId: token, DeliveryMode: amqp.Persistent}
		if err := d.publishToStream(ctx, stream, false, []amqp.Publishing{fence}); err != nil {
			return -1, fmt.Errorf("publish a fence to stream %s: %w", stream, err)
		}
	}
	for {
		var dl amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case dl, ok = <-deliveries:
		}
		if !ok {
			return -1, fmt.Errorf("read stream %s: %w", stream, amqp.ErrClosed)
		}
		offset, ok := streamOffset(&dl)
		if !ok {
			return -1, fmt.Errorf("read stream %s: a delivery without %s", stream, headerStreamOffset)
		}
		if err := dl.Ack(false); err != nil {
			return -1, fmt.Errorf("read stream %s: %w", stream, err)
		}
		switch {
		case offset > end && end >= 0:
			return end, nil // end was a fence another read skips too
		case dl.Type == fenceType && (dl.MessageId == token || offset == end):
			return offset, nil
		case dl.Type == fenceType:
		case !fn(offset, &dl):
			return -1, nil
		case offset == end:
			return end, nil
		}
	}
}

// Waiting for a stream just declared: until the broker has started it, a
// consumer fails with PRECONDITION_FAILED ("does not have a replica on
// the local node") or, on RabbitMQ 3.10, INTERNAL_ERROR (the channel
// crashes on stream_not_found, and the broker closes the connection:
// hence a connection of the store's own).
const (
	streamStartWait  = 50 * time.Millisecond
	streamStartTries = 60
)

// startReading consumes stream from from, on a channel of its own on the
// store's connection: a stream consumer needs a prefetch and manual
// acknowledgments.
func (d *Driver) startReading(ctx context.Context, stream string, from any) (*amqp.Channel, <-chan amqp.Delivery, error) {
	for try := 1; ; try++ {
		ch, err := d.reads.channel(ctx)
		if err != nil {
			return nil, nil, err
		}
		if err := ch.Qos(d.cfg.prefetch, 0, false); err != nil {
			_ = ch.Close()
			return nil, nil, err
		}
		deliveries, err := ch.Consume(stream, "", false, false, false, false, amqp.Table{headerStreamOffset: from})
		if err == nil {
			return ch, deliveries, nil
		}
		_ = ch.Close()
		var ae *amqp.Error
		switch {
		case errors.As(err, &ae) && ae.Code == amqp.NotFound:
			return nil, nil, errNoStream
		case errors.As(err, &ae) && (ae.Code == amqp.PreconditionFailed || ae.Code == amqp.InternalError) && try < streamStartTries:
			if !backoff.Sleep(ctx, streamStartWait) {
				return nil, nil, ctx.Err()
			}
		default:
			return nil, nil, fmt.Errorf("read stream %s: %w", stream, err)
		}
	}
}

// streamOffset is the offset of a delivery from a stream.
func streamOffset(dl *amqp.Delivery) (int64, bool) {
	switch v := dl.Headers[headerStreamOffset].(type) {
	case int64:
		return v, true
	case int32:
		return int64(v), true
	}
	return 0, false
}

func fenceToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "fence-" + hex.EncodeToString(b[:])
}
