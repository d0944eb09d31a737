package drivertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

func testRoundTrip(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)

	sent := &herald.Message{
		ID:          "id-1",
		Topic:       topic,
		Key:         "key-1",
		Headers:     herald.Headers{"a": "1", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "empty": ""},
		ContentType: "application/json",
		Data:        []byte(`{"id":"o-1","amount":42}`),
		Time:        time.Date(2026, 11, 23, 10, 0, 0, 123_000_000, time.UTC),
	}
	write(t, ctx, d, sent.Clone())
	got := fetchN(t, cfg, sub, 1)[0]
	m := got.Message
	switch {
	case m.ID != sent.ID:
		t.Errorf("ID = %q, want %q", m.ID, sent.ID)
	case m.Topic != sent.Topic:
		t.Errorf("Topic = %q, want %q", m.Topic, sent.Topic)
	case m.Key != sent.Key:
		t.Errorf("Key = %q, want %q", m.Key, sent.Key)
	case m.ContentType != sent.ContentType:
		t.Errorf("ContentType = %q, want %q", m.ContentType, sent.ContentType)
	case !bytes.Equal(m.Data, sent.Data):
		t.Errorf("Data = %q, want %q", m.Data, sent.Data)
	case m.Time.Sub(sent.Time).Abs() >= cfg.TimePrecision:
		t.Errorf("Time = %v, want %v (within %v)", m.Time, sent.Time, cfg.TimePrecision)
	}
	// Drivers may add reserved headers of their own; user headers must
	// come back exactly.
	for k, v := range sent.Headers {
		if got, ok := m.Headers[k]; !ok || got != v {
			t.Errorf("header %q = %q (present %v), want %q", k, got, ok, v)
		}
	}
	for k := range m.Headers {
		if _, ok := sent.Headers[k]; !ok && !isReserved(k) {
			t.Errorf("unexpected header %q", k)
		}
	}
	if got.Count > 1 {
		t.Errorf("first delivery has Count %d", got.Count)
	}
	Ack(t, sub, got)
}

func isReserved(k string) bool {
	return len(k) >= len(herald.HeaderPrefix) && k[:len(herald.HeaderPrefix)] == herald.HeaderPrefix
}

func testEmptyWrite(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	ctx := context4(t, cfg)
	if err := d.Write(ctx, nil); err != nil {
		t.Errorf("Write(nil) = %v", err)
	}
	if err := d.Write(ctx, []*herald.Message{}); err != nil {
		t.Errorf("Write(empty) = %v", err)
	}
}

func testLargeBatch(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	const n = 2000
	write(t, ctx, d, newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 37) })...)
	drain(t, cfg, sub, n)
}

func testLargeMessage(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	m := newMessages(topic, 1, noKey)[0]
	m.Data = bytes.Repeat([]byte("0123456789abcdef"), cfg.LargeMessageBytes/16)
	write(t, ctx, d, m.Clone())
	got := fetchN(t, cfg, sub, 1)[0]
	if !bytes.Equal(got.Message.Data, m.Data) {
		t.Fatalf("large payload changed: got %d bytes, want %d", len(got.Message.Data), len(m.Data))
	}
	Ack(t, sub, got)
}

// testOversized checks the size limit. It counts the whole message
// (herald.Message.Size): a small payload with a large header or key is as
// oversized as a large payload.
func testOversized(t *testing.T, cfg Config) {
	if cfg.MaxMessageBytes <= 0 {
		t.Skip("driver declares no payload limit")
	}
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	huge := string(make([]byte, cfg.MaxMessageBytes+1))
	for _, c := range []struct {
		name  string
		shape func(m *herald.Message)
	}{
		{"payload", func(m *herald.Message) { m.Data = []byte(huge) }},
		{"header", func(m *herald.Message) { m.Headers["big"] = huge }},
		{"key", func(m *herald.Message) { m.Key = huge }},
	} {
		big := newMessages(topic, 1, sameKey)[0]
		c.shape(big)
		if err := d.Write(ctx, []*herald.Message{big}); !errors.Is(err, herald.ErrMessageTooLarge) {
			t.Errorf("Write with a %s of %d bytes = %v, want ErrMessageTooLarge", c.name, len(huge), err)
		}
	}
	// Nothing was lost or stuck: the next message goes through, and is
	// the only one there.
	onlyMarker(t, ctx, d, sub, topic)
}

func sameKey(int) string { return "k" }

// onlyMarker writes a marker message with the key the refused writes used
// and checks that it is the first thing sub receives: what a refused
// write had stored would come before it.
func onlyMarker(t *testing.T, ctx context.Context, d herald.Driver, sub herald.Subscription, topic string) {
	t.Helper()
	marker := newMessages(topic, 1, sameKey)[0]
	marker.ID = "marker-" + marker.ID
	write(t, ctx, d, marker)
	got := FetchExactly(t, sub, 1)
	if got[0].Message.ID != marker.ID {
		t.Fatalf("a refused write left message %s behind; want nothing but the marker %s", got[0].Message.ID, marker.ID)
	}
	Ack(t, sub, got...)
}

// testClose checks the lifecycle every driver shares: Close closes the
// subscriptions still open, later calls fail with herald.ErrClosed, and a
// second Close is a no-op.
func testClose(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	c, ok := d.(io.Closer)
	if !ok {
		t.Fatalf("%T has no Close() error: every driver has one (it does not close a client it was given)", d)
	}
	ctx := context4(t, cfg)
	topic, group := Name(t, "t"), Name(t, "g")
	sub := subscribe(t, ctx, d, topic, group)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Write(ctx, newMessages(topic, 1, noKey)); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if _, err := d.Subscribe(ctx, topic, Name(t, "g2")); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	short, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if _, err := sub.Fetch(short, make([]herald.Delivery, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Fetch on a subscription the driver's Close closed = %v, want an error at once", err)
	}
	_ = sub.Close(ctx)
}

// testPing checks herald.Pinger where the driver has it: an open driver
// answers, a cancelled context fails.
func testPing(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	p, ok := d.(herald.Pinger)
	if !ok {
		t.Skip("driver is not a herald.Pinger")
	}
	if err := p.Ping(context4(t, cfg)); err != nil {
		t.Errorf("Ping: %v", err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Ping(cancelled); err == nil {
		t.Error("Ping with a cancelled context succeeded")
	}
}

// testBadMessageFailsWholeBatch checks the Writer contract's "none were
// written" for a batch with one bad message in it, wherever it sits:
// drivers validate the whole batch before storing any of it.
func testBadMessageFailsWholeBatch(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	bad := []struct {
		name string
		want error
		msg  func() *herald.Message
	}{
		{"invalid topic", herald.ErrInvalidName, func() *herald.Message {
			m := newMessages(topic, 1, noKey)[0]
			m.Topic = "not a topic"
			return m
		}},
		{"nil message", nil, func() *herald.Message { return nil }},
	}
	if cfg.MaxMessageBytes > 0 {
		bad = append(bad, struct {
			name string
			want error
			msg  func() *herald.Message
		}{"oversized message", herald.ErrMessageTooLarge, func() *herald.Message {
			m := newMessages(topic, 1, noKey)[0]
			m.Data = make([]byte, cfg.MaxMessageBytes+1)
			return m
		}})
	}
	for _, b := range bad {
		for _, at := range []int{0, 1, 2} {
			batch := newMessages(topic, 3, sameKey)
			batch[at] = b.msg()
			err := d.Write(ctx, batch)
			if err == nil || (b.want != nil && !errors.Is(err, b.want)) {
				t.Errorf("Write with a %s at %d of 3 = %v, want an error (%v)", b.name, at, err, b.want)
			}
		}
	}
	onlyMarker(t, ctx, d, sub, topic)
}

func testInvalidNames(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	ctx := context4(t, cfg)
	for _, bad := range []string{"", "has space", "semi;colon", "quote'", "new\nline", string(make([]byte, 300))} {
		if _, err := d.Subscribe(ctx, bad, "g"); !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("Subscribe(topic %q) = %v, want ErrInvalidName", bad, err)
		}
		if _, err := d.Subscribe(ctx, Name(t, "t"), bad); !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("Subscribe(group %q) = %v, want ErrInvalidName", bad, err)
		}
		m := newMessages("x", 1, noKey)[0]
		m.Topic = bad
		if err := d.Write(ctx, []*herald.Message{m}); !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("Write(topic %q) = %v, want ErrInvalidName", bad, err)
		}
	}
}

func testCancelledContexts(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Write(cancelled, newMessages(topic, 1, noKey)); err == nil {
		t.Error("Write with a cancelled context succeeded")
	}
	if _, err := d.Subscribe(cancelled, topic, Name(t, "g2")); err == nil {
		t.Error("Subscribe with a cancelled context succeeded")
	}
	buf := make([]herald.Delivery, 8)
	if n, err := sub.Fetch(cancelled, buf); err == nil || n != 0 {
		t.Errorf("Fetch with a cancelled context = %d, %v; want 0 and an error", n, err)
	}
	// A Fetch blocked on an empty topic returns when its context ends.
	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	if _, err := sub.Fetch(short, buf); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("blocked Fetch = %v, want context.DeadlineExceeded", err)
	}
	// The write with the cancelled context wrote nothing.
	write(t, ctx, d, newMessages(topic, 1, func(int) string { return "after" })...)
	got := fetchN(t, cfg, sub, 1)
	if got[0].Message.Key != "after" {
		t.Errorf("got %q; a write with a cancelled context was delivered", got[0].Message.Key)
	}
	Ack(t, sub, got...)
}

func testFetchWaits(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	got := make(chan []herald.Delivery, 1)
	go func() {
		buf := make([]herald.Delivery, 4)
		fctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		defer cancel()
		n, _ := sub.Fetch(fctx, buf)
		got <- buf[:n]
	}()
	time.Sleep(100 * time.Millisecond)
	write(t, ctx, d, newMessages(topic, 1, noKey)...)
	ds := <-got
	if len(ds) != 1 {
		t.Fatalf("blocked Fetch returned %d deliveries, want 1", len(ds))
	}
	Ack(t, sub, ds...)
}

func testRedeliveryAfterClose(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	first := subscribe(t, ctx, d, topic, group)
	const n = 40
	write(t, ctx, d, newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 4) })...)
	ds := fetchN(t, cfg, first, n)
	unacked := map[string]bool{}
	for i, dl := range ds {
		if i%2 == 0 {
			Ack(t, first, dl)
		} else {
			unacked[dl.Message.ID] = true
		}
	}
	CloseSub(t, first)

	second := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, second)
	// Every unacknowledged message comes back; acknowledged ones may (a
	// driver that commits offsets redelivers above the lowest gap).
	for len(unacked) > 0 {
		for _, dl := range fetchN(t, cfg, second, 1) {
			if unacked[dl.Message.ID] && dl.Count == 1 {
				t.Errorf("redelivered %s with Count 1", dl.Message.ID)
			}
			delete(unacked, dl.Message.ID)
			Ack(t, second, dl)
		}
	}
}

func testTwoGroups(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	ctx := context4(t, cfg)
	topic := Name(t, "t")
	a := subscribe(t, ctx, d, topic, Name(t, "a"))
	defer CloseSub(t, a)
	b := subscribe(t, ctx, d, topic, Name(t, "b"))
	defer CloseSub(t, b)
	const n = 100
	write(t, ctx, d, newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 10) })...)
	for _, sub := range []herald.Subscription{a, b} {
		drain(t, cfg, sub, n)
	}
}

// drain fetches and acknowledges until n distinct messages arrived.
func drain(t *testing.T, cfg Config, sub herald.Subscription, n int) {
	t.Helper()
	seen := map[string]bool{}
	for len(seen) < n {
		ds := fetchN(t, cfg, sub, 1)
		for _, dl := range ds {
			seen[dl.Message.ID] = true
		}
		Ack(t, sub, ds...)
	}
}

func testCompetingConsumers(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	const members, n = 3, 600
	subs := make([]herald.Subscription, members)
	for i := range subs {
		subs[i] = subscribe(t, ctx, d, topic, group)
	}
	write(t, ctx, d, newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 50) })...)

	var mu sync.Mutex
	seen := map[string]int{}
	done := make(chan struct{})
	var doneOnce sync.Once
	var wg sync.WaitGroup
	fctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	for i, sub := range subs {
		wg.Go(func() {
			buf := make([]herald.Delivery, 32)
			for {
				k, err := sub.Fetch(fctx, buf)
				mu.Lock()
				for _, dl := range buf[:k] {
					seen[dl.Message.ID]++
				}
				all := len(seen) == n
				mu.Unlock()
				for _, dl := range buf[:k] {
					if err := sub.Ack(context.Background(), dl); err != nil {
						t.Errorf("member %d Ack: %v", i, err)
					}
				}
				if all {
					doneOnce.Do(func() { close(done) })
				}
				if err != nil {
					return
				}
			}
		})
	}
	select {
	case <-done:
	case <-fctx.Done():
	}
	cancel()
	wg.Wait()
	for _, sub := range subs {
		CloseSub(t, sub)
	}
	if len(seen) != n {
		t.Fatalf("the group received %d distinct messages of %d", len(seen), n)
	}
}

func testPerKeyOrder(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	const keys, perKey = 10, 50
	var msgs []*herald.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, newMessages(topic, 1, nil2(fmt.Sprintf("k%d", k)))[0])
			m := msgs[len(msgs)-1]
			m.ID = fmt.Sprintf("k%d-%d", k, i)
			m.Headers["seq"] = strconv.Itoa(i)
		}
	}
	// In batches of varied size, so order must hold across Write calls.
	for len(msgs) > 0 {
		k := min(len(msgs), 1+len(msgs)%7*5)
		write(t, ctx, d, msgs[:k]...)
		msgs = msgs[k:]
	}
	last := map[string]int{}
	for got := 0; got < keys*perKey; {
		ds := fetchN(t, cfg, sub, 1)
		for _, dl := range ds {
			seq, _ := strconv.Atoi(dl.Message.Headers["seq"])
			if prev, ok := last[dl.Message.Key]; ok && seq != prev+1 {
				t.Fatalf("key %s: message %d after %d", dl.Message.Key, seq, prev)
			} else if !ok && seq != 0 {
				t.Fatalf("key %s: first message is %d", dl.Message.Key, seq)
			}
			last[dl.Message.Key] = seq
			got++
		}
		Ack(t, sub, ds...)
	}
}

func nil2(key string) func(int) string { return func(int) string { return key } }

func testConcurrentPublishers(t *testing.T, cfg Config) {
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	const publishers, each = 16, 100
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				m := newMessages(topic, 1, nil2(fmt.Sprintf("p%d", p)))[0]
				m.ID = fmt.Sprintf("p%d-%d", p, i)
				m.Headers["seq"] = strconv.Itoa(i)
				if err := d.Write(ctx, []*herald.Message{m}); err != nil {
					t.Errorf("publisher %d: %v", p, err)
					return
				}
			}
		})
	}
	last := map[string]int{}
	seen := map[string]bool{}
	for len(seen) < publishers*each {
		ds := fetchN(t, cfg, sub, 1)
		for _, dl := range ds {
			seq, _ := strconv.Atoi(dl.Message.Headers["seq"])
			if prev, ok := last[dl.Message.Key]; ok && seq <= prev {
				t.Fatalf("publisher %s: message %d after %d", dl.Message.Key, seq, prev)
			}
			last[dl.Message.Key] = seq
			seen[dl.Message.ID] = true
		}
		Ack(t, sub, ds...)
	}
	wg.Wait()
}
