package herald

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/heraldbus/herald/codec"
)

type correlationKey struct{}

// WithCorrelationID returns a context whose publishes carry id in
// HeaderCorrelationID.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationID returns the correlation id of ctx, or "".
func CorrelationID(ctx context.Context) string {
	id, _ := ctx.Value(correlationKey{}).(string)
	return id
}

// Publisher encodes typed events into Messages and writes them to a Writer:
// one Write per Publish call, whatever the number of events. It is safe for
// concurrent use.
type Publisher struct {
	w      Writer
	reg    *EventRegistry
	codecs *codec.Registry
	opts   options
	ids    ksuidSource
	tel    *producerTelemetry // nil: telemetry off
}

// NewPublisher returns a Publisher that writes to w with its own registry.
// It fails with ErrNilDriver when w is nil.
func NewPublisher(w Writer, opts ...Option) (*Publisher, error) {
	if isNil(w) {
		return nil, fmt.Errorf("herald: NewPublisher: %w", ErrNilDriver)
	}
	o := newOptions(opts)
	return newPublisher(w, NewEventRegistry(o.naming), o), nil
}

func newPublisher(w Writer, reg *EventRegistry, o options) *Publisher {
	return &Publisher{w: w, reg: reg, codecs: codec.NewRegistry(o.codecs...), opts: o,
		tel: newProducerTelemetry(o.telemetry, w)}
}

func (p *Publisher) newID(now time.Time) string {
	if p.opts.newID != nil {
		return p.opts.newID()
	}
	return p.ids.next(now)
}

// Registry returns the publisher's event registry.
func (p *Publisher) Registry() *EventRegistry { return p.reg }

// Codecs returns the codecs the publisher knows, by content type.
func (p *Publisher) Codecs() *codec.Registry { return p.codecs }

// Publish encodes events and writes them in one Write call. Each event goes
// to its registered topic; events with one key keep their order. It fails
// without writing anything if any event is nil (ErrNilEvent), unregistered
// (ErrUnregisteredEvent), fails to encode, or is too large
// (ErrMessageTooLarge).
func (p *Publisher) Publish(ctx context.Context, events ...any) error {
	msgs, err := p.Encode(ctx, events...)
	if err != nil || len(msgs) == 0 {
		return err
	}
	return p.write(ctx, msgs)
}

// write writes msgs in one Write call, traced and counted.
func (p *Publisher) write(ctx context.Context, msgs []*Message) error {
	if p.tel == nil {
		return p.w.Write(ctx, msgs)
	}
	return p.tel.write(ctx, p.w, msgs)
}

// Encode turns events into messages as Publish would, without writing them.
func (p *Publisher) Encode(ctx context.Context, events ...any) ([]*Message, error) {
	if len(events) == 0 {
		return nil, nil
	}
	slab := make([]Message, len(events))
	msgs := make([]*Message, len(events))
	now := time.Now().UTC()
	correlation := CorrelationID(ctx)
	for i, e := range events {
		if err := p.encode(&slab[i], e, now, correlation); err != nil {
			return nil, err
		}
		msgs[i] = &slab[i]
	}
	return msgs, nil
}

func (p *Publisher) encode(m *Message, e any, now time.Time, correlation string) error {
	if e == nil {
		return ErrNilEvent
	}
	t := reflect.TypeOf(e)
	if t.Kind() == reflect.Pointer && reflect.ValueOf(e).IsNil() {
		return fmt.Errorf("%w (%s)", ErrNilEvent, t)
	}
	et, err := p.reg.Lookup(t)
	if err != nil {
		return err
	}
	c := et.Codec
	if c == nil {
		c = p.opts.codec
	}
	data, err := c.Marshal(e)
	if err != nil {
		return fmt.Errorf("herald: encode %s for topic %q: %w", et.Name, et.Topic, err)
	}
	m.ID = p.newID(now)
	m.Topic = et.Topic
	m.Key = et.Key(e)
	m.ContentType = c.ContentType()
	m.Data = data
	m.Time = now
	if correlation != "" {
		m.Headers = Headers{HeaderEvent: et.Name, HeaderCorrelationID: correlation}
	} else {
		m.Headers = Headers{HeaderEvent: et.Name}
	}
	if p.opts.maxMessageBytes > 0 {
		if n := m.Size(); n > p.opts.maxMessageBytes {
			return fmt.Errorf("herald: %s for topic %q is %d bytes with key and headers, limit %d: %w",
				et.Name, et.Topic, n, p.opts.maxMessageBytes, ErrMessageTooLarge)
		}
	}
	return nil
}

// PublishMessages writes ready-made messages in one Write call, filling in
// a missing ID and Time. It checks topic names and the payload limit first.
// The caller must not change the messages afterwards.
func (p *Publisher) PublishMessages(ctx context.Context, msgs ...*Message) error {
	if len(msgs) == 0 {
		return nil
	}
	now := time.Now().UTC()
	valid := "" // the last topic checked: batches usually share one
	for _, m := range msgs {
		if m == nil {
			return ErrNilEvent
		}
		if m.Topic != valid || valid == "" {
			if err := ValidateName("topic", m.Topic); err != nil {
				return err
			}
			valid = m.Topic
		}
		if m.ID == "" {
			m.ID = p.newID(now)
		}
		if p.opts.maxMessageBytes > 0 {
			if n := m.Size(); n > p.opts.maxMessageBytes {
				return fmt.Errorf("herald: message %s for topic %q is %d bytes with key and headers, limit %d: %w",
					m.ID, m.Topic, n, p.opts.maxMessageBytes, ErrMessageTooLarge)
			}
		}
		if m.Time.IsZero() {
			m.Time = now
		}
	}
	return p.write(ctx, msgs)
}
