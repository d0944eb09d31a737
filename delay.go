package herald

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Delayed and scheduled delivery.
//
// A message is delayed when it carries HeaderDeliverAt with a time after
// the moment its Writer stores it. A Writer that can hold messages until
// they are due implements DelayedWriter; every other Writer is refused
// delayed messages by the Publisher (ErrDelayNotSupported), so a delay is
// never silently dropped and nothing is delivered before it is due.
//
// The encoding of the due time has one owner, this file: SetDeliverAt
// writes it, Message.DeliverAt and DueAt read it. It is a header, not a
// Message field, so that it travels unchanged through every wire format
// that already carries headers (stream entries, log rows, dead letters)
// and a producer in another language can set it.

// MaxDelay is the longest delay a Publisher or a DelayedWriter accepts:
// a due time later than this after the write fails with ErrInvalidDelay. A
// delay of more than a year is almost always a unit mistake (seconds read
// as nanoseconds); a business schedule that long belongs in a database.
const MaxDelay = 366 * 24 * time.Hour

var (
	// ErrDelayNotSupported is returned when a delayed message is published
	// to a Writer that cannot hold it until it is due (see DelayedWriter).
	ErrDelayNotSupported = errors.New("herald: delayed delivery not supported by this writer")
	// ErrInvalidDelay is returned for a HeaderDeliverAt that is not a
	// decimal integer, or that lies more than MaxDelay after the write.
	ErrInvalidDelay = errors.New("herald: invalid delivery time")
)

// DelayError is a delayed message that was not written: its writer cannot
// delay (ErrDelayNotSupported) or its due time is invalid
// (ErrInvalidDelay). Nothing of the Write was stored.
type DelayError struct {
	// Writer names what refused it: a driver's package name, or the
	// Writer's type.
	Writer    string
	MessageID string
	Topic     string
	// DeliverAt is the due time, zero when the header could not be read.
	DeliverAt time.Time
	// Reason says what is wrong, in words.
	Reason string
	// Err is ErrDelayNotSupported or ErrInvalidDelay.
	Err error
}

func (e *DelayError) Error() string {
	s := fmt.Sprintf("herald: %s: message %s for topic %q", e.Writer, e.MessageID, e.Topic)
	if e.MessageID == "" {
		s = fmt.Sprintf("herald: %s: topic %q", e.Writer, e.Topic)
	}
	if !e.DeliverAt.IsZero() {
		s += " due " + e.DeliverAt.UTC().Format(time.RFC3339Nano)
	}
	return s + ": " + e.Reason + ": " + e.Err.Error()
}

// Unwrap returns ErrDelayNotSupported or ErrInvalidDelay.
func (e *DelayError) Unwrap() error { return e.Err }

// DelayedWriter is an optional interface of a Writer that holds a message
// carrying HeaderDeliverAt until it is due, and only then makes it visible
// to subscribers (memdriver, redisdriver, sqldriver). Its Write refuses a
// malformed due time or one beyond MaxDelay (a *DelayError wrapping
// ErrInvalidDelay), and delivers a due time that is not in the future at
// once. drivertest checks a driver that declares Config.Delay.
type DelayedWriter interface {
	Writer
	// DelayPrecision is how late after its due time a delayed message may
	// become visible to subscribers while the driver's mover runs normally
	// (its poll interval): the bound drivertest checks, within its
	// timeout. Clock skew between the publisher's host and the mover's
	// adds to it. Zero or less says that this Writer, as configured,
	// cannot delay (a driver option that excludes it): the Publisher then
	// treats it as a Writer without the interface.
	DelayPrecision() time.Duration
}

// SetDeliverAt makes m due at t (HeaderDeliverAt); a zero t removes the
// header. It creates m.Headers when nil.
func (m *Message) SetDeliverAt(t time.Time) {
	if t.IsZero() {
		delete(m.Headers, HeaderDeliverAt)
		return
	}
	if m.Headers == nil {
		m.Headers = make(Headers, 1)
	}
	m.Headers[HeaderDeliverAt] = strconv.FormatInt(t.UnixNano(), 10)
}

// DeliverAt returns the due time HeaderDeliverAt carries (UTC). ok is false
// when the header is absent; err is set (wrapping ErrInvalidDelay) when it
// is not a decimal integer.
func (m *Message) DeliverAt() (t time.Time, ok bool, err error) {
	v, ok := m.Headers[HeaderDeliverAt]
	if !ok {
		return time.Time{}, false, nil
	}
	ns, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, true, fmt.Errorf("%s %q is not Unix nanoseconds: %w", HeaderDeliverAt, v, ErrInvalidDelay)
	}
	return time.Unix(0, ns).UTC(), true, nil
}

// DueAt is what a DelayedWriter asks of each message it writes at now:
// the time m is due, and whether it is delayed (due after now). A message
// without HeaderDeliverAt, or with a due time not after now, is not
// delayed. The error is a *DelayError wrapping ErrInvalidDelay for a
// malformed header or a due time more than MaxDelay after now; writer
// names the caller in it.
func DueAt(writer string, m *Message, now time.Time) (due time.Time, delayed bool, err error) {
	t, ok, err := m.DeliverAt()
	switch {
	case err != nil:
		return time.Time{}, false, &DelayError{Writer: writer, MessageID: m.ID, Topic: m.Topic, Reason: err.Error(), Err: ErrInvalidDelay}
	case !ok || !t.After(now):
		return t, false, nil
	case t.Sub(now) > MaxDelay:
		return t, false, &DelayError{Writer: writer, MessageID: m.ID, Topic: m.Topic, DeliverAt: t,
			Reason: fmt.Sprintf("%v after the write, more than herald.MaxDelay (%v)", t.Sub(now).Round(time.Second), MaxDelay), Err: ErrInvalidDelay}
	}
	return t, true, nil
}

// DueTimes is DueAt for every message of a batch a DelayedWriter writes at
// now: when each is due if it is delayed (the zero time if not), or nil
// when none is. A zero now reads the clock at the first message that has
// HeaderDeliverAt, so a batch without one costs no clock read. Nil
// messages are skipped. A bad due time fails the batch: DueTimes returns
// the index of its message and DueAt's error.
func DueTimes(writer string, msgs []*Message, now time.Time) (dues []time.Time, bad int, err error) {
	for i, m := range msgs {
		if m == nil {
			continue
		}
		if _, ok := m.Headers[HeaderDeliverAt]; !ok {
			continue
		}
		if now.IsZero() {
			now = time.Now()
		}
		due, later, err := DueAt(writer, m, now)
		if err != nil {
			return nil, i, err
		}
		if later {
			if dues == nil {
				dues = make([]time.Time, len(msgs))
			}
			dues[i] = due
		}
	}
	return dues, 0, nil
}

type deliverAtValue struct {
	at    time.Time     // DeliverAt
	after time.Duration // DeliverAfter, counted from the publish
}

// DeliverAt returns a context whose publishes (Publish, PublishMessages for
// messages without HeaderDeliverAt of their own) are due at t: subscribers
// receive them no earlier than t, and within the driver's DelayPrecision
// after it. A t that has passed by the time of the publish delivers at
// once; a zero t cancels a delay set on ctx. The Writer must be a
// DelayedWriter (ErrDelayNotSupported otherwise). A handler's context does
// not pass a delivered message's delay on: only this sets one.
func DeliverAt(ctx context.Context, t time.Time) context.Context {
	return withScope(ctx, func(s *scope) { s.deliverAt = deliverAtValue{at: t} })
}

// DeliverAfter returns a context whose publishes are due d after each
// publish (see DeliverAt). A d of zero or less means no delay, and cancels
// one set on ctx.
func DeliverAfter(ctx context.Context, d time.Duration) context.Context {
	return withScope(ctx, func(s *scope) { s.deliverAt = deliverAtValue{after: max(d, 0)} })
}

// dueAt is the due time the scope asks a publish at now for; zero when
// none.
func (s scope) dueAt(now time.Time) time.Time {
	if s.deliverAt.after > 0 {
		return now.Add(s.deliverAt.after)
	}
	return s.deliverAt.at
}

// RefuseDelayed is what a Writer that cannot delay calls on a batch at
// now before it writes any of it (the Kafka, NATS and RabbitMQ drivers
// do), so that a delayed message reaching it some other way than through
// a Publisher (an outbox relay, a redrive, a raw Write) fails instead of
// being delivered early: a *DelayError wrapping ErrDelayNotSupported for
// a message due after now, or ErrInvalidDelay for a malformed due time.
// Messages without HeaderDeliverAt, or due by now, pass; nil messages are
// left to the Writer's own checks. writer names the caller.
func RefuseDelayed(writer string, msgs []*Message, now time.Time) error {
	for _, m := range msgs {
		if m == nil {
			continue
		}
		if _, ok := m.Headers[HeaderDeliverAt]; !ok {
			continue
		}
		due, delayed, err := DueAt(writer, m, now)
		if err != nil {
			return err
		}
		if delayed {
			return &DelayError{Writer: writer, MessageID: m.ID, Topic: m.Topic, DeliverAt: due,
				Reason: "the writer cannot hold a message until it is due", Err: ErrDelayNotSupported}
		}
	}
	return nil
}

// checkDelays is the Publisher's check of msgs before they go to w at
// now: a malformed or too distant due time fails (ErrInvalidDelay), and
// so does a delayed message when w cannot delay (ErrDelayNotSupported).
func checkDelays(ctx context.Context, w Writer, msgs []*Message, now time.Time) error {
	if !delayCapable(ctx, w) {
		return RefuseDelayed(writerName(w), msgs, now)
	}
	for _, m := range msgs {
		if _, ok := m.Headers[HeaderDeliverAt]; !ok {
			continue
		}
		if _, _, err := DueAt(writerName(w), m, now); err != nil {
			return err
		}
	}
	return nil
}

// delayCapable reports whether w holds delayed messages written with ctx.
// A Bus with WithOutbox writes in a transaction to the outbox, which
// delays when it is a DelayedWriter (the SQL outbox holds the row until
// it is due and its relay forwards it then, whatever the target), and
// otherwise to the driver.
func delayCapable(ctx context.Context, w Writer) bool {
	if o, ok := w.(outboxOrDriver); ok {
		if o.outbox.InTransaction(ctx) {
			w = o.outbox
		} else {
			w = o.driver
		}
	}
	dw, ok := w.(DelayedWriter)
	return ok && dw.DelayPrecision() > 0
}

// writerName names w in a DelayError.
func writerName(w Writer) string {
	if o, ok := w.(outboxOrDriver); ok {
		w = o.driver
	}
	if s, ok := w.(MessagingSystem); ok {
		return s.MessagingSystem()
	}
	return fmt.Sprintf("%T", w)
}
