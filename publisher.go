package herald

import (
	"cmp"
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/heraldbus/herald/codec"
)

// WithCorrelationID returns a context whose publishes carry id in
// HeaderCorrelationID. A handler's context already carries the delivered
// message's correlation id (or, when it has none, its ID, which starts the
// chain), so events published from a handler continue it without this.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return withScope(ctx, func(s *scope) { s.correlation, s.setCorr = id, true })
}

// CorrelationID returns the correlation id of ctx: the one WithCorrelationID
// set, else in a handler the delivered message's (its
// HeaderCorrelationID, or its ID when it has none); "" elsewhere.
func CorrelationID(ctx context.Context) string { return scopeOf(ctx).lineage().correlation }

// delivered returns the message a handler's context was made for
// (deliveryCtx), or nil.
func delivered(ctx context.Context) *Message { return scopeOf(ctx).delivered }

// WithCausationID returns a context whose publishes carry id, the ID of
// the message that caused them, in HeaderCausationID. A handler's context
// carries the delivered message's ID as its causation id.
func WithCausationID(ctx context.Context, id string) context.Context {
	return withScope(ctx, func(s *scope) { s.causation, s.setCaus = id, true })
}

// CausationID returns the causation id of ctx: in a handler, the ID of the
// message being handled; "" elsewhere unless WithCausationID set one.
func CausationID(ctx context.Context) string { return scopeOf(ctx).lineage().causation }

// lineage is the correlation and causation ids a publish stamps (see
// scope.lineage).
type lineage struct{ correlation, causation string }

// stamp adds the lineage headers to h, which it creates when nil.
func (l lineage) stamp(h Headers) Headers {
	if l.correlation == "" && l.causation == "" {
		return h
	}
	if h == nil {
		h = make(Headers, 2)
	}
	if l.correlation != "" {
		h[HeaderCorrelationID] = l.correlation
	}
	if l.causation != "" {
		h[HeaderCausationID] = l.causation
	}
	return h
}

// Publisher encodes typed events into Messages and writes them to a Writer:
// one Write per Publish call, whatever the number of events. It is safe for
// concurrent use.
type Publisher struct {
	w      Writer
	reg    *EventRegistry
	codecs *codec.Registry
	opts   pubOptions
	ids    ksuidSource
	tel    *producerTelemetry // nil: telemetry off
}

// NewPublisher returns a Publisher that writes to w with its own registry.
// It fails with ErrNilDriver when w is nil.
// Bad options are reported at once (ErrInvalidOption).
func NewPublisher(w Writer, opts ...PublisherOption) (*Publisher, error) {
	if isNil(w) {
		return nil, fmt.Errorf("herald: NewPublisher: %w", ErrNilDriver)
	}
	o, err := newPubOptions(opts)
	if err != nil {
		return nil, err
	}
	return newPublisher(w, newEventRegistry(o.naming), o), nil
}

func newPublisher(w Writer, reg *EventRegistry, o pubOptions) *Publisher {
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
// (ErrMessageTooLarge). With DeliverAt or DeliverAfter on ctx the events
// are due then; it fails with a *DelayError when the Writer cannot delay
// (ErrDelayNotSupported) or the time is beyond MaxDelay (ErrInvalidDelay).
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
// A delivery time on ctx (DeliverAt, DeliverAfter) is stamped on every
// message as HeaderDeliverAt, and checked against the publisher's Writer.
func (p *Publisher) Encode(ctx context.Context, events ...any) ([]*Message, error) {
	if len(events) == 0 {
		return nil, nil
	}
	msgs := newMessages(len(events))
	now := time.Now().UTC()
	sc := scopeOf(ctx)
	lin, at := sc.lineage(), sc.dueAt(now)
	for i, e := range events {
		if err := p.encode(msgs[i], e, now, lin, at); err != nil {
			return nil, err
		}
	}
	if !at.IsZero() {
		if err := checkDelays(ctx, p.w, msgs, now); err != nil {
			return nil, err
		}
	}
	return msgs, nil
}

// newMessages returns n zero messages, as the slice of pointers Write
// takes, in two allocations, and in one for a single message (the usual
// Publish of one event).
func newMessages(n int) []*Message {
	if n == 1 {
		one := new(struct {
			m Message
			p [1]*Message
		})
		one.p[0] = &one.m
		return one.p[:]
	}
	slab := make([]Message, n)
	msgs := make([]*Message, n)
	for i := range slab {
		msgs[i] = &slab[i]
	}
	return msgs
}

// codecFor is the codec that encodes et: the type's own (WithCodec), else
// the publisher's default. Decoding prefers it too (decodeHandler).
func (p *Publisher) codecFor(et *EventType) codec.Codec {
	if et.Codec != nil {
		return et.Codec
	}
	return p.opts.codec
}

func (p *Publisher) encode(m *Message, e any, now time.Time, lin lineage, at time.Time) error {
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
	c := p.codecFor(et)
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
	m.Headers = lin.stamp(Headers{HeaderEvent: et.Name})
	if !at.IsZero() {
		m.SetDeliverAt(at)
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
// a missing ID and Time, and the correlation and causation headers from
// ctx where the message has none, and HeaderDeliverAt from a DeliverAt or
// DeliverAfter on ctx where the message has none. It checks topic names,
// the payload limit and due times first (see Publish).
// The caller must not change the messages afterwards.
func (p *Publisher) PublishMessages(ctx context.Context, msgs ...*Message) error {
	if len(msgs) == 0 {
		return nil
	}
	now := time.Now().UTC()
	sc := scopeOf(ctx)
	lin, at := sc.lineage(), sc.dueAt(now)
	delays := !at.IsZero()
	valid := "" // the last topic checked: batches usually share one
	for _, m := range msgs {
		if m == nil {
			return ErrNilEvent
		}
		if _, ok := m.Headers[HeaderDeliverAt]; ok {
			delays = true
		} else if !at.IsZero() {
			m.SetDeliverAt(at)
		}
		if m.Topic != valid || valid == "" {
			// Checking a name costs less than looking it up in a set of
			// names checked before, once a process has many topics.
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
		if lin.correlation != "" && m.Headers.Get(HeaderCorrelationID) == "" ||
			lin.causation != "" && m.Headers.Get(HeaderCausationID) == "" {
			m.Headers = lineage{
				correlation: cmp.Or(m.Headers.Get(HeaderCorrelationID), lin.correlation),
				causation:   cmp.Or(m.Headers.Get(HeaderCausationID), lin.causation),
			}.stamp(m.Headers)
		}
	}
	if delays {
		if err := checkDelays(ctx, p.w, msgs, now); err != nil {
			return err
		}
	}
	return p.write(ctx, msgs)
}
