package herald_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memtest"
)

type delayEvent struct{ N int }

func (delayEvent) Topic() string { return "delay.events" }

// delayingWriter is a recordingWriter that declares delayed delivery.
type delayingWriter struct{ recordingWriter }

func (*delayingWriter) DelayPrecision() time.Duration { return time.Second }

func TestDeliverAtStampsHeader(t *testing.T) {
	w := &delayingWriter{}
	pub, err := herald.NewPublisher(w)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	at := time.Now().Add(2 * time.Hour).Truncate(time.Second).Add(6).UTC()
	before := time.Now()
	if err := pub.Publish(herald.DeliverAt(ctx, time.Now().Add(time.Hour)), delayEvent{1}); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(herald.DeliverAfter(ctx, time.Minute), delayEvent{2}); err != nil {
		t.Fatal(err)
	}
	// A message's own header wins over the context's.
	own := &herald.Message{Topic: "delay.raw"}
	own.SetDeliverAt(at)
	plain := &herald.Message{Topic: "delay.raw"}
	if err := pub.PublishMessages(herald.DeliverAfter(ctx, time.Minute), own, plain); err != nil {
		t.Fatal(err)
	}
	// Zero and negative delays, and a zero DeliverAt, mean none, and
	// cancel an outer one.
	outer := herald.DeliverAfter(ctx, time.Hour)
	for _, c := range []context.Context{herald.DeliverAfter(outer, 0), herald.DeliverAfter(outer, -time.Second), herald.DeliverAt(outer, time.Time{})} {
		if err := pub.Publish(c, delayEvent{3}); err != nil {
			t.Fatal(err)
		}
	}
	got := w.all()
	if len(got) != 7 {
		t.Fatalf("%d messages written, want 7", len(got))
	}
	due := func(m *herald.Message) time.Time {
		t.Helper()
		d, ok, err := m.DeliverAt()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return time.Time{}
		}
		return d
	}
	if d := due(got[1]); d.Before(before.Add(time.Minute)) || d.After(time.Now().Add(time.Minute)) {
		t.Errorf("DeliverAfter(1 min): due %v, want a minute after the publish", d)
	}
	if d := due(got[2]); !d.Equal(at) {
		t.Errorf("a message's own %s became %v, want %v", herald.HeaderDeliverAt, d, at)
	}
	if got[2].Headers[herald.HeaderDeliverAt] != strconv.FormatInt(at.UnixNano(), 10) {
		t.Errorf("encoding: %q, want Unix nanoseconds", got[2].Headers[herald.HeaderDeliverAt])
	}
	if due(got[3]).IsZero() {
		t.Error("PublishMessages did not stamp the context's delay on a message without one")
	}
	for _, m := range got[4:] {
		if _, ok := m.Headers[herald.HeaderDeliverAt]; ok {
			t.Errorf("no delay asked, yet %s = %q", herald.HeaderDeliverAt, m.Headers[herald.HeaderDeliverAt])
		}
	}
}

func TestDelayRefusedByWriterWithout(t *testing.T) {
	w := &recordingWriter{}
	pub, err := herald.NewPublisher(w)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	check := func(what string, err error, want error) {
		t.Helper()
		var de *herald.DelayError
		if !errors.Is(err, want) || !errors.As(err, &de) {
			t.Errorf("%s: %v, want a *herald.DelayError wrapping %v", what, err, want)
		}
	}
	check("Publish", pub.Publish(herald.DeliverAfter(ctx, time.Second), delayEvent{1}), herald.ErrDelayNotSupported)
	raw := &herald.Message{Topic: "delay.raw"}
	raw.SetDeliverAt(time.Now().Add(time.Hour))
	check("PublishMessages", pub.PublishMessages(ctx, raw), herald.ErrDelayNotSupported)
	_, err = pub.Encode(herald.DeliverAfter(ctx, time.Second), delayEvent{1})
	check("Encode (what AsyncPublisher calls)", err, herald.ErrDelayNotSupported)
	check("beyond MaxDelay", pub.Publish(herald.DeliverAfter(ctx, herald.MaxDelay+time.Hour), delayEvent{1}), herald.ErrInvalidDelay)
	bad := &herald.Message{Topic: "delay.raw", Headers: herald.Headers{herald.HeaderDeliverAt: "soon"}}
	check("malformed", pub.PublishMessages(ctx, bad), herald.ErrInvalidDelay)
	if n := len(w.all()); n != 0 {
		t.Fatalf("%d messages written by refused publishes", n)
	}
	// A due time in the past is no delay: written at once.
	if err := pub.Publish(herald.DeliverAt(ctx, time.Now().Add(-time.Minute)), delayEvent{2}); err != nil {
		t.Fatalf("DeliverAt in the past: %v", err)
	}
	if n := len(w.all()); n != 1 {
		t.Fatalf("%d messages written, want 1", n)
	}
}

// txOutbox is a TransactionalWriter whose "transaction" is a context
// value.
type txOutbox struct{ recordingWriter }

type inTxKey struct{}

func (*txOutbox) InTransaction(ctx context.Context) bool { return ctx.Value(inTxKey{}) != nil }

func TestDelayThroughBus(t *testing.T) {
	ob := &txOutbox{}
	bus, err := herald.NewBus(memtest.Broker(t), herald.WithOutbox(ob))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	got := make(chan time.Time, 1)
	if err := herald.Subscribe(bus, "g", func(_ context.Context, e delayEvent, _ *herald.Message) error {
		got <- time.Now()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := bus.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	// An outbox that cannot delay (not a DelayedWriter): refused.
	if err := bus.Publish(herald.DeliverAfter(context.WithValue(ctx, inTxKey{}, true), time.Second), delayEvent{1}); !errors.Is(err, herald.ErrDelayNotSupported) {
		t.Errorf("delayed publish into the outbox: %v, want herald.ErrDelayNotSupported", err)
	}
	due := time.Now().Add(300 * time.Millisecond)
	if err := bus.Publish(herald.DeliverAt(ctx, due), delayEvent{2}); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		if at.Before(due) {
			t.Errorf("handled %v before it was due", due.Sub(at))
		}
	case <-ctx.Done():
		t.Fatal("delayed event not handled")
	}
}

// txDelayOutbox is a txOutbox that can delay, as the SQL outbox does.
type txDelayOutbox struct {
	txOutbox
	precision time.Duration
}

func (o *txDelayOutbox) DelayPrecision() time.Duration { return o.precision }

func TestDelayThroughDelayingOutbox(t *testing.T) {
	ob := &txDelayOutbox{precision: time.Second}
	bus, err := herald.NewBus(memtest.Broker(t), herald.WithOutbox(ob))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	inTx := context.WithValue(ctx, inTxKey{}, true)
	if err := bus.Publish(herald.DeliverAfter(inTx, time.Second), delayEvent{1}); err != nil {
		t.Fatalf("delayed publish into a delaying outbox: %v", err)
	}
	got := ob.all()
	if len(got) != 1 {
		t.Fatalf("%d messages in the outbox, want 1", len(got))
	}
	if _, ok, err := got[0].DeliverAt(); !ok || err != nil {
		t.Errorf("outbox message without a valid HeaderDeliverAt: ok %v, err %v", ok, err)
	}
	// A bad due time is refused whatever the writer.
	if err := bus.Publish(herald.DeliverAfter(inTx, 2*herald.MaxDelay), delayEvent{2}); !errors.Is(err, herald.ErrInvalidDelay) {
		t.Errorf("publish beyond MaxDelay: %v, want herald.ErrInvalidDelay", err)
	}
	// Precision zero: the outbox says it cannot delay, as configured.
	ob.precision = 0
	if err := bus.Publish(herald.DeliverAfter(inTx, time.Second), delayEvent{3}); !errors.Is(err, herald.ErrDelayNotSupported) {
		t.Errorf("delayed publish into an outbox with precision 0: %v, want herald.ErrDelayNotSupported", err)
	}
	if n := len(ob.all()); n != 1 {
		t.Errorf("%d messages in the outbox, want 1", n)
	}
}

func TestRefuseDelayed(t *testing.T) {
	now := time.Now()
	due := &herald.Message{ID: "due", Topic: "t"}
	due.SetDeliverAt(now.Add(-time.Second))
	later := &herald.Message{ID: "later", Topic: "t"}
	later.SetDeliverAt(now.Add(time.Second))
	bad := &herald.Message{ID: "bad", Topic: "t", Headers: herald.Headers{herald.HeaderDeliverAt: "1.5"}}
	if err := herald.RefuseDelayed("w", []*herald.Message{nil, {ID: "plain"}, due}, now); err != nil {
		t.Errorf("undelayed batch refused: %v", err)
	}
	var de *herald.DelayError
	err := herald.RefuseDelayed("w", []*herald.Message{due, later}, now)
	if !errors.As(err, &de) || !errors.Is(err, herald.ErrDelayNotSupported) || de.MessageID != "later" || de.Writer != "w" {
		t.Errorf("delayed batch: %v, want a DelayError for message later", err)
	}
	if err := herald.RefuseDelayed("w", []*herald.Message{bad}, now); !errors.Is(err, herald.ErrInvalidDelay) {
		t.Errorf("malformed: %v, want ErrInvalidDelay", err)
	}
}

// DueTimes: nil for a batch without delayed messages (a past due time and
// a nil message included), the due times of the delayed ones, and the
// index of the first bad one.
func TestDueTimes(t *testing.T) {
	now := time.Now()
	past, later := &herald.Message{ID: "p", Topic: "t"}, &herald.Message{ID: "l", Topic: "t"}
	past.SetDeliverAt(now.Add(-time.Second))
	due := now.Add(time.Minute)
	later.SetDeliverAt(due)
	plain := &herald.Message{ID: "n", Topic: "t"}
	if dues, _, err := herald.DueTimes("w", []*herald.Message{plain, nil, past}, now); err != nil || dues != nil {
		t.Errorf("no delayed message: %v, %v; want nil, nil", dues, err)
	}
	dues, _, err := herald.DueTimes("w", []*herald.Message{plain, later, past}, now)
	if err != nil || len(dues) != 3 || !dues[0].IsZero() || !dues[1].Equal(due) || !dues[2].IsZero() {
		t.Errorf("one delayed of three: %v, %v", dues, err)
	}
	if dues, _, err := herald.DueTimes("w", []*herald.Message{plain, later}, time.Time{}); err != nil || !dues[1].Equal(due) {
		t.Errorf("a zero now (the clock read when needed): %v, %v", dues, err)
	}
	bad := &herald.Message{ID: "b", Topic: "t", Headers: herald.Headers{herald.HeaderDeliverAt: "soon"}}
	far := &herald.Message{ID: "f", Topic: "t"}
	far.SetDeliverAt(now.Add(herald.MaxDelay + time.Hour))
	for _, c := range []struct {
		msgs []*herald.Message
		at   int
	}{{[]*herald.Message{plain, later, bad}, 2}, {[]*herald.Message{far, bad}, 0}} {
		_, i, err := herald.DueTimes("w", c.msgs, now)
		var de *herald.DelayError
		if !errors.Is(err, herald.ErrInvalidDelay) || !errors.As(err, &de) || i != c.at || de.MessageID != c.msgs[c.at].ID {
			t.Errorf("bad due time: index %d, %v; want %d and a *DelayError wrapping ErrInvalidDelay", i, err, c.at)
		}
	}
}
