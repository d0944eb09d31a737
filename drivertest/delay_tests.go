package drivertest

import (
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// The delayed-delivery cases (Config.Delay). Due times are compared with
// the test's clock, which is the publisher's and, for drivers whose mover
// runs in the test process, the mover's too. "Not before it is due" is
// exact; the upper bound is the driver's DelayPrecision plus
// Config.DelayTolerance, a liveness bound for a busy machine, not a
// performance target (the lateness is logged).

// delayed returns msgs, each due after delays[i] from now.
func delayed(topic string, delays ...time.Duration) []*herald.Message {
	msgs := newMessages(topic, len(delays), sameKey)
	now := time.Now()
	for i, m := range msgs {
		if delays[i] > 0 {
			m.SetDeliverAt(now.Add(delays[i]))
		}
	}
	return msgs
}

// dueOf is the due time m carries (zero when none).
func dueOf(t *testing.T, m *herald.Message) time.Time {
	t.Helper()
	due, _, err := m.DeliverAt()
	if err != nil {
		t.Fatalf("message %s: %v", m.ID, err)
	}
	return due
}

// checkOnTime fails when d arrived (at received) before it was due, or
// later than the driver's precision and the tolerance allow.
func checkOnTime(t *testing.T, cfg Config, precision time.Duration, d herald.Delivery, received time.Time) {
	t.Helper()
	due := dueOf(t, d.Message)
	if due.IsZero() {
		return
	}
	late := received.Sub(due)
	t.Logf("message %s: received %v after it was due (precision %v)", d.Message.ID, late, precision)
	switch {
	case late < 0:
		t.Errorf("message %s received %v before it was due", d.Message.ID, -late)
	case late > precision+cfg.DelayTolerance:
		t.Errorf("message %s received %v after it was due: more than the precision %v plus the tolerance %v",
			d.Message.ID, late, precision, cfg.DelayTolerance)
	}
}

func delayedWriter(t *testing.T, d herald.Driver) herald.DelayedWriter {
	t.Helper()
	dw, ok := d.(herald.DelayedWriter)
	if !ok {
		t.Fatalf("Config.Delay is declared but %T is not a herald.DelayedWriter", d)
	}
	return dw
}

// testDelayNotBeforeDue writes a message delayed by 2 s after an
// undelayed one: the undelayed one arrives at once, the delayed one not
// before it is due and within the precision after.
func testDelayNotBeforeDue(t *testing.T, cfg Config) {
	if !cfg.Delay {
		t.Skip("Config.Delay not declared")
	}
	d, ctx, topic, group := setUp(t, cfg)
	precision := delayedWriter(t, d).DelayPrecision()
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	msgs := delayed(topic, 2*time.Second, 0)
	write(t, ctx, d, msgs...)
	first := FetchExactly(t, sub, 1)
	if first[0].Message.ID != msgs[1].ID {
		t.Fatalf("first delivery is %s, want the undelayed %s", first[0].Message.ID, msgs[1].ID)
	}
	Ack(t, sub, first...)
	second := fetchN(t, cfg, sub, 1)
	received := time.Now()
	if len(second) != 1 || second[0].Message.ID != msgs[0].ID {
		t.Fatalf("got %d deliveries, first %s; want the delayed %s alone", len(second), second[0].Message.ID, msgs[0].ID)
	}
	checkOnTime(t, cfg, precision, second[0], received)
	if got := second[0].Message.Headers[herald.HeaderDeliverAt]; got != msgs[0].Headers[herald.HeaderDeliverAt] {
		t.Errorf("delivered %s = %q, want %q", herald.HeaderDeliverAt, got, msgs[0].Headers[herald.HeaderDeliverAt])
	}
	Ack(t, sub, second...)
}

// testDelayKeyOrder writes messages of one key due at different times,
// two of them at the same time, and one undelayed: they arrive in the
// order they become due, equal due times in write order, the undelayed
// one first.
func testDelayKeyOrder(t *testing.T, cfg Config) {
	if !cfg.Delay {
		t.Skip("Config.Delay not declared")
	}
	d, ctx, topic, group := setUp(t, cfg)
	precision := delayedWriter(t, d).DelayPrecision()
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	gap := max(700*time.Millisecond, 3*precision)
	msgs := delayed(topic, 3*gap, gap, 2*gap, 0, 0)
	msgs[4].Headers[herald.HeaderDeliverAt] = msgs[2].Headers[herald.HeaderDeliverAt] // due with msgs[2], written after it
	write(t, ctx, d, msgs...)
	want := []string{msgs[3].ID, msgs[1].ID, msgs[2].ID, msgs[4].ID, msgs[0].ID}
	var got []string
	for len(got) < len(want) {
		ds := fetchN(t, cfg, sub, 1)
		received := time.Now()
		for _, dl := range ds {
			checkOnTime(t, cfg, precision, dl, received)
			got = append(got, dl.Message.ID)
		}
		Ack(t, sub, ds...)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("order of one key's messages: got %v, want %v (due order, equal due times in write order)", got, want)
	}
}

// testDelaySurvivesRestart writes delayed messages, then closes the only
// subscription before they are due (in drivers whose mover runs with
// the subscriptions, that stops it too) and opens a new one after: each
// message arrives once, none before it is due.
func testDelaySurvivesRestart(t *testing.T, cfg Config) {
	if !cfg.Delay {
		t.Skip("Config.Delay not declared")
	}
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	const n = 20
	msgs := newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 4) })
	due := time.Now().Add(1500 * time.Millisecond)
	for _, m := range msgs {
		m.SetDeliverAt(due)
	}
	write(t, ctx, d, msgs...)
	// Nothing is delivered before it is due.
	fctx, cancel := context.WithDeadline(ctx, due.Add(-200*time.Millisecond))
	k, err := sub.Fetch(fctx, make([]herald.Delivery, n))
	cancel()
	if k > 0 || err == nil {
		t.Fatalf("Fetch before the due time returned %d deliveries (err %v)", k, err)
	}
	CloseSub(t, sub)
	time.Sleep(time.Until(due) + 300*time.Millisecond)
	sub = subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	got := FetchExactly(t, sub, n)
	seen := map[string]bool{}
	for _, dl := range got {
		if seen[dl.Message.ID] {
			t.Errorf("message %s delivered twice", dl.Message.ID)
		}
		seen[dl.Message.ID] = true
	}
	Ack(t, sub, got...)
	// And nothing more comes.
	fctx, cancel = context.WithTimeout(ctx, time.Second)
	defer cancel()
	if k, _ := sub.Fetch(fctx, make([]herald.Delivery, n)); k > 0 {
		t.Errorf("%d more deliveries after all %d were acknowledged", k, n)
	}
}

// testDelayBadValues: a due time in the past delivers at once; one
// beyond herald.MaxDelay, or a malformed header, fails the whole Write
// with a *herald.DelayError wrapping herald.ErrInvalidDelay, and so does
// a Publisher asked for a delay beyond the maximum.
func testDelayBadValues(t *testing.T, cfg Config) {
	if !cfg.Delay {
		t.Skip("Config.Delay not declared")
	}
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	for name, value := range map[string]string{
		"beyond MaxDelay": strconv.FormatInt(time.Now().Add(herald.MaxDelay+time.Hour).UnixNano(), 10),
		"malformed":       "tomorrow",
	} {
		msgs := newMessages(topic, 2, noKey)
		msgs[1].Headers[herald.HeaderDeliverAt] = value
		err := d.Write(ctx, msgs)
		var de *herald.DelayError
		if !errors.Is(err, herald.ErrInvalidDelay) || !errors.As(err, &de) {
			t.Errorf("Write with a %s %s: %v, want a *herald.DelayError wrapping herald.ErrInvalidDelay", name, herald.HeaderDeliverAt, err)
		}
	}
	pub, err := herald.NewPublisher(d)
	must(t, err)
	msg := newMessages(topic, 1, noKey)[0]
	if err := pub.PublishMessages(herald.DeliverAfter(ctx, herald.MaxDelay+time.Hour), msg); !errors.Is(err, herald.ErrInvalidDelay) {
		t.Errorf("PublishMessages with DeliverAfter(MaxDelay + 1 h): %v, want herald.ErrInvalidDelay", err)
	}
	// In the past (and a zero or negative delay): delivered at once. No
	// message of the failed writes above was stored.
	past := newMessages(topic, 3, sameKey) // one key: in order on partitioned drivers too
	past[0].ID += "-past"
	past[1].ID += "-zero"
	past[2].ID += "-negative"
	must(t, pub.PublishMessages(herald.DeliverAt(ctx, time.Now().Add(-time.Hour)), past[0]))
	must(t, pub.PublishMessages(herald.DeliverAfter(ctx, 0), past[1]))
	must(t, pub.PublishMessages(herald.DeliverAfter(ctx, -time.Minute), past[2]))
	got := FetchExactly(t, sub, 3)
	for i, dl := range got {
		if dl.Message.ID != past[i].ID {
			t.Errorf("delivery %d is %s, want %s (nothing of the refused writes may be stored)", i, dl.Message.ID, past[i].ID)
		}
	}
	Ack(t, sub, got...)
}

// testDelayRefused is DelayRefused for drivers that do not declare
// Config.Delay.
func testDelayRefused(t *testing.T, cfg Config) {
	if cfg.Delay {
		t.Skip("Config.Delay declared: delays are checked by the Delay cases")
	}
	DelayRefused(t, cfg.NewDriver(t))
}

// DelayRefused checks a driver that cannot delay as configured (a driver
// option turns delays off): a delayed publish, and a raw Write with a
// delayed message, fail with a *herald.DelayError wrapping
// herald.ErrDelayNotSupported and write nothing, while a due time in the
// past is an ordinary message.
func DelayRefused(t *testing.T, d herald.Driver) {
	t.Helper()
	ctx, topic, group := Context(t, 2*time.Minute), Name(t, "t"), Name(t, "g")
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	pub, err := herald.NewPublisher(d)
	must(t, err)
	msgs := newMessages(topic, 2, noKey)
	err = pub.PublishMessages(herald.DeliverAfter(ctx, time.Minute), msgs[0])
	var de *herald.DelayError
	if !errors.Is(err, herald.ErrDelayNotSupported) || !errors.As(err, &de) {
		t.Errorf("delayed PublishMessages: %v, want a *herald.DelayError wrapping herald.ErrDelayNotSupported", err)
	}
	// A raw Write too (an outbox relay, a redrive): the driver refuses it
	// itself (herald.RefuseDelayed), writing nothing of the batch.
	raw := newMessages(topic, 2, noKey)
	raw[0].ID, raw[1].ID = raw[0].ID+"-raw", raw[1].ID+"-raw"
	raw[1].SetDeliverAt(time.Now().Add(time.Minute))
	if err := d.Write(ctx, raw); !errors.Is(err, herald.ErrDelayNotSupported) || !errors.As(err, &de) || de.MessageID != raw[1].ID {
		t.Errorf("delayed Write: %v, want a *herald.DelayError for %s wrapping herald.ErrDelayNotSupported", err, raw[1].ID)
	}
	must(t, pub.PublishMessages(herald.DeliverAt(ctx, time.Now().Add(-time.Second)), msgs[1]))
	got := FetchExactly(t, sub, 1)
	if got[0].Message.ID != msgs[1].ID {
		t.Errorf("got %s, want %s (the refused message must not be written)", got[0].Message.ID, msgs[1].ID)
	}
	Ack(t, sub, got...)
}

// DelayLateness publishes n messages to d, each due at a random time
// between 1 s and 1 s + spread from now, in batches of 10 written at once,
// receives them with one subscription and returns, sorted, how late each
// arrived after it was due. A driver whose mover knows the next due time
// (all of them here) shows its timer latency. It fails t when one arrives
// before it is due, twice, or not within the timeout; it asserts nothing
// about lateness, which it logs (p50, p90, p99, max): a measurement for
// the drivers' docs, not a check.
func DelayLateness(t *testing.T, d herald.Driver, n int, spread time.Duration) []time.Duration {
	t.Helper()
	return measureLateness(t, d, n, spread+2*time.Minute, func(ctx context.Context, msgs []*herald.Message) {
		start := time.Now().Add(time.Second)
		for i := 0; i < len(msgs); i += 10 {
			batch := msgs[i:min(i+10, len(msgs))]
			for _, m := range batch {
				m.SetDeliverAt(start.Add(time.Duration(randInt63n(int64(spread) + 1))))
			}
			write(t, ctx, d, batch...)
		}
	})
}

// DelayLatenessTrickle is DelayLateness with messages written one at a
// time, every 10 ms, each due a random time between 0 and maxDelay after
// its write: a message due sooner than the mover's next look waits for
// it, so this shows the poll interval's share.
func DelayLatenessTrickle(t *testing.T, d herald.Driver, n int, maxDelay time.Duration) []time.Duration {
	t.Helper()
	return measureLateness(t, d, n, time.Duration(n)*10*time.Millisecond+2*time.Minute, func(ctx context.Context, msgs []*herald.Message) {
		done := make(chan struct{})
		t.Cleanup(func() { <-done })
		go func() {
			defer close(done)
			for _, m := range msgs {
				m.SetDeliverAt(time.Now().Add(time.Duration(randInt63n(int64(maxDelay) + 1))))
				if err := d.Write(ctx, []*herald.Message{m}); err != nil {
					t.Errorf("Write: %v", err)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	})
}

// measureLateness subscribes, calls publish with n messages (it may
// write them in the background), receives all n and returns how late
// each was, sorted, logging the quantiles.
func measureLateness(t *testing.T, d herald.Driver, n int, within time.Duration, publish func(context.Context, []*herald.Message)) []time.Duration {
	t.Helper()
	ctx := Context(t, within)
	topic, group := Name(t, "t"), Name(t, "g")
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	msgs := newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 16) })
	publish(ctx, msgs)
	late := make([]time.Duration, 0, n)
	seen := make(map[string]bool, n)
	buf := make([]herald.Delivery, 64)
	for len(late) < n {
		k, err := sub.Fetch(ctx, buf)
		received := time.Now()
		if err != nil {
			t.Fatalf("Fetch after %d of %d: %v", len(late), n, err)
		}
		for _, dl := range buf[:k] {
			if seen[dl.Message.ID] {
				t.Fatalf("message %s delivered twice", dl.Message.ID)
			}
			seen[dl.Message.ID] = true
			l := received.Sub(dueOf(t, dl.Message))
			if l < 0 {
				t.Errorf("message %s received %v before it was due", dl.Message.ID, -l)
			}
			late = append(late, l)
		}
		Ack(t, sub, buf[:k]...)
	}
	slices.Sort(late)
	q := func(p float64) time.Duration { return late[min(len(late)-1, int(p*float64(len(late))))] }
	t.Logf("delay lateness of %d messages: p50 %v, p90 %v, p99 %v, max %v", n, q(0.50), q(0.90), q(0.99), late[len(late)-1])
	return late
}

func randInt63n(n int64) int64 { return mathrand.Int64N(n) }
