package amqpdriver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// TestDeclaredInterfaces is drivertest's check of the optional
// interfaces (see TestConformance for why RunOptional does not run):
// subscriptions are herald.LagReporters and nothing else optional.
func TestDeclaredInterfaces(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, time.Minute)
	sub, err := d.Subscribe(ctx, drivertest.Name(t, "t"), drivertest.Name(t, "g"))
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	if _, ok := sub.(herald.LagReporter); !ok {
		t.Errorf("%T is not a herald.LagReporter", sub)
	}
	if _, ok := sub.(herald.Releaser); ok {
		t.Errorf("%T is a herald.Releaser: AMQP 0-9-1 cannot hand a delivery back uncounted", sub)
	}
	if _, ok := sub.(herald.Revoker); ok {
		t.Errorf("%T is a herald.Revoker", sub)
	}
	if _, ok := sub.(herald.ErrorReporter); ok {
		t.Errorf("%T is a herald.ErrorReporter", sub)
	}
	if got := d.MessagingSystem(); got != "rabbitmq" {
		t.Errorf("MessagingSystem = %q", got)
	}
}

// TestLag is drivertest's Lag check with the groups created before the
// messages are written (a queue receives nothing published before it
// exists).
func TestLag(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, 2*time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	const n, k = 20, 7
	sub := subscribe(t, ctx, d, topic, group)
	other := subscribe(t, ctx, d, topic, drivertest.Name(t, "other"))
	defer drivertest.CloseSub(t, other)
	lr := drivertest.LagReporter(t, sub)
	drivertest.WaitLag(t, 30*time.Second, lr, 0, 0, 0, nil)
	write(t, ctx, d, topic, n, "m")
	// A delivery on its way from the queue to the member is counted by
	// neither for a moment, so readings may fall short while they settle.
	drivertest.WaitLag(t, 30*time.Second, lr, n, 0, n, nil)
	first := drivertest.FetchExactly(t, sub, k)
	drivertest.WaitLag(t, 30*time.Second, lr, n, k, n, nil)
	drivertest.Ack(t, sub, first...)
	drivertest.WaitLag(t, 30*time.Second, lr, n-k, 0, n, nil)
	drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, n-k)...)
	drivertest.WaitLag(t, 30*time.Second, lr, 0, 0, n-k, nil)

	drivertest.FetchExactly(t, other, 1)
	drivertest.WaitLag(t, 30*time.Second, drivertest.LagReporter(t, other), n, 1, n, nil)

	drivertest.CloseSub(t, sub)
	if _, err := lr.Lag(ctx); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Lag of a closed subscription = %v, want ErrClosed", err)
	}
}

func subscribe(t testing.TB, ctx context.Context, d herald.Driver, topic, group string) herald.Subscription {
	t.Helper()
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatalf("Subscribe(%q, %q): %v", topic, group, err)
	}
	return sub
}

// write writes n messages to topic, with IDs idPrefix+i and keys of
// three kinds, and returns them.
func write(t testing.TB, ctx context.Context, d herald.Writer, topic string, n int, idPrefix string) []*herald.Message {
	t.Helper()
	msgs := make([]*herald.Message, n)
	for i := range msgs {
		msgs[i] = &herald.Message{ID: fmt.Sprintf("%s%04d", idPrefix, i), Topic: topic, Key: fmt.Sprint(i % 3), Data: []byte("x"), Time: time.Now()}
	}
	if err := d.Write(ctx, msgs); err != nil {
		t.Fatalf("Write %d messages: %v", n, err)
	}
	return msgs
}

// sockets records the connections a DialFunc opened, so that a test can
// cut them as a network failure would.
type sockets struct {
	mu    sync.Mutex
	conns []net.Conn
	dials int
}

func (s *sockets) dial(u string) amqpdriver.DialFunc {
	return func(ctx context.Context) (*amqp.Connection, error) {
		return amqp.DialConfig(u, amqp.Config{Dial: func(network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, network, addr)
			if err == nil {
				s.mu.Lock()
				s.conns = append(s.conns, c)
				s.dials++
				s.mu.Unlock()
			}
			return c, err
		}})
	}
}

// cut closes every connection opened so far.
func (s *sockets) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.conns = nil
}

func (s *sockets) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dials
}

// TestCutConnectionLosesNothingAcknowledged cuts the driver's TCP
// connections (as a network failure would) while a member holds
// deliveries, half of them acknowledged: the driver reconnects, Write
// succeeds again, and the group receives every message not acknowledged,
// and none that was.
func TestCutConnectionLosesNothingAcknowledged(t *testing.T) {
	u := brokerURL(t)
	var socks sockets
	d, err := amqpdriver.NewDial(socks.dial(u), amqpdriver.WithNamePrefix(prefix(t)), amqpdriver.WithPrefetch(10),
		amqpdriver.WithReconnectBackoff(10*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	lossScenario(t, u, record(t, u, d), func() {
		before := socks.count()
		socks.cut()
		if before < 2 {
			t.Fatalf("%d connections dialled before the cut, want 2 (publish, consume)", before)
		}
	})
	if n := socks.count(); n < 4 {
		t.Errorf("%d connections dialled in all, want at least 4 (both again after the cut)", n)
	}
}

// TestBrokerClosedConnectionLosesNothingAcknowledged is the same with
// the broker closing the connections (rabbitmqctl close_connection, only
// the driver's own: the broker is shared).
func TestBrokerClosedConnectionLosesNothingAcknowledged(t *testing.T) {
	u := brokerURL(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skip("rabbitmqctl not found; it closes the connections from the broker's side")
	}
	name := "herald-test-" + strings.TrimSuffix(prefix(t), ".")
	d, err := amqpdriver.New(u, amqpdriver.WithNamePrefix(prefix(t)), amqpdriver.WithPrefetch(10), amqpdriver.WithConnectionName(name),
		amqpdriver.WithReconnectBackoff(10*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	lossScenario(t, u, record(t, u, d), func() {
		if n := closeConnections(t, name); n != 2 {
			t.Fatalf("closed %d connections named %q, want 2 (publish, consume)", n, name)
		}
	})
}

// closeConnections closes the broker's connections whose connection_name
// starts with name and returns how many it closed.
func closeConnections(t *testing.T, name string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "list_connections", "-q", "pid", "client_properties").CombinedOutput()
	if err != nil {
		testenv.Unavailable(t, fmt.Sprintf("rabbitmqctl list_connections: %v: %s", err, out))
	}
	closed := 0
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, `"`+name+` `) {
			continue
		}
		pid, _, _ := strings.Cut(line, "\t")
		if out, err := exec.Command("rabbitmqctl", "close_connection", pid, "herald connection-loss test").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection %s: %v: %s", pid, err, out)
		}
		closed++
	}
	return closed
}

// lossScenario has a member (prefetch 10) hold 10 of 30 messages and
// acknowledge 5, waits until the broker has the acknowledgments (it then
// sends 5 more), runs lose, and checks that the driver recovers: Ack of
// a delivery from before fails, Write works again (retried, as a caller
// would), and the member receives every message not acknowledged, and
// nothing acknowledged.
func lossScenario(t *testing.T, u string, d *recorder, lose func()) {
	ctx := drivertest.Context(t, 2*time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub := subscribe(t, ctx, d, topic, group)
	defer drivertest.CloseSub(t, sub)
	const n, held, acked = 30, 10, 5
	write(t, ctx, d, topic, n, "a")
	got := drivertest.FetchExactly(t, sub, held)
	drivertest.Ack(t, sub, got[:acked]...)
	waitReady(t, u, d.QueueName(topic, group), n-held-acked)

	lose()
	drivertest.Eventually(t, 30*time.Second, "Ack of a delivery from the lost channel to fail", func() bool {
		return sub.Ack(ctx, got[acked]) != nil
	})
	after := &herald.Message{ID: "after", Topic: topic, Data: []byte("x")}
	drivertest.Eventually(t, 30*time.Second, "a Write after the loss", func() bool {
		return d.Write(ctx, []*herald.Message{after.Clone()}) == nil
	})

	want := map[string]bool{"after": true}
	for _, dl := range got[acked:] {
		want[dl.Message.ID] = true
	}
	for i := held; i < n; i++ {
		want[fmt.Sprintf("a%04d", i)] = true
	}
	seen := map[string]bool{}
	for len(seen) < len(want) {
		for _, dl := range drivertest.FetchExactly(t, sub, 1) {
			if !want[dl.Message.ID] {
				t.Errorf("received %s, which was acknowledged before the loss (or never written)", dl.Message.ID)
			}
			seen[dl.Message.ID] = true
			drivertest.Ack(t, sub, dl)
		}
	}
	// Nothing else waits: the acknowledged messages are gone for good.
	drivertest.WaitLag(t, 30*time.Second, drivertest.LagReporter(t, sub), 0, 0, 0, nil)
}

// waitReady waits until queue holds want messages ready for delivery.
func waitReady(t *testing.T, u, queue string, want int) {
	t.Helper()
	conn, err := amqp.Dial(u)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	drivertest.Eventually(t, 30*time.Second, fmt.Sprintf("%d messages ready in %s", want, queue), func() bool {
		var ready int
		err := withChannel(conn, func(ch *amqp.Channel) error {
			q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
			ready = q.Messages
			return err
		})
		if err != nil {
			t.Fatalf("inspect %s: %v", queue, err)
		}
		return ready == want
	})
}

// TestSingleActiveConsumerKeepsOrderAcrossHandOver has two members of a
// single-active-consumer group: only the first receives, and when it
// leaves holding deliveries, half of them acknowledged, the second
// receives the rest of the queue in publish order, starting with what the
// first held unacknowledged.
func TestSingleActiveConsumerKeepsOrderAcrossHandOver(t *testing.T) {
	for _, qt := range []amqpdriver.QueueType{amqpdriver.QueueQuorum, amqpdriver.QueueClassic} {
		t.Run(qt.String(), func(t *testing.T) {
			d := newDriver(t, amqpdriver.WithSingleActiveConsumer(), amqpdriver.WithQueueType(qt), amqpdriver.WithPrefetch(20))
			ctx := drivertest.Context(t, 2*time.Minute)
			topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
			first := subscribe(t, ctx, d, topic, group)
			second := subscribe(t, ctx, d, topic, group)
			defer drivertest.CloseSub(t, second)
			const n, held, acked = 50, 20, 10
			write(t, ctx, d, topic, n, "m")
			got := drivertest.FetchExactly(t, first, held)
			for i, dl := range got {
				if want := fmt.Sprintf("m%04d", i); dl.Message.ID != want {
					t.Fatalf("first member's delivery %d is %s, want %s", i, dl.Message.ID, want)
				}
			}
			drivertest.Ack(t, first, got[:acked]...)
			short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			if k, err := second.Fetch(short, make([]herald.Delivery, 1)); k != 0 || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("the waiting member received %d deliveries (%v) while the active one is there", k, err)
			}
			drivertest.CloseSub(t, first)
			for i := acked; i < n; i++ { // one at a time, within the prefetch window
				dl := drivertest.FetchExactly(t, second, 1)[0]
				if want := fmt.Sprintf("m%04d", i); dl.Message.ID != want {
					t.Fatalf("after the hand-over, delivery %d is %s, want %s", i-acked, dl.Message.ID, want)
				}
				drivertest.Ack(t, second, dl)
			}
		})
	}
}

// TestRefusedMessagesAreListed has the broker refuse part of a batch
// (basic.nack: a queue bound to the topic is full and rejects
// publishes): Write returns a *herald.WriteError that lists exactly the
// refused messages.
func TestRefusedMessagesAreListed(t *testing.T) {
	d := newDriver(t)
	u := brokerURL(t)
	ctx := drivertest.Context(t, time.Minute)
	topic := drivertest.Name(t, "t")
	full := d.QueueName(topic, "full")
	conn, err := amqp.Dial(u)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	err = withChannel(conn, func(ch *amqp.Channel) error {
		if err := ch.ExchangeDeclare(d.ExchangeName(topic), amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
			return err
		}
		args := amqp.Table{"x-max-length": int32(2), "x-overflow": "reject-publish"}
		if _, err := ch.QueueDeclare(full, false, true, false, false, args); err != nil {
			return err
		}
		return ch.QueueBind(full, "#", d.ExchangeName(topic), false, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	d.topics[topic], d.queues[full] = true, true
	msgs := make([]*herald.Message, 5)
	for i := range msgs {
		msgs[i] = &herald.Message{ID: fmt.Sprintf("m%d", i), Topic: topic, Data: []byte("x")}
	}
	err = d.Write(ctx, msgs)
	var we *herald.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("Write to a full queue = %v, want a *herald.WriteError", err)
	}
	if we.Messages != 5 || len(we.Failed) != 3 || !we.Written(0) || !we.Written(1) || we.Written(2) {
		t.Fatalf("WriteError lists %d of %d (%v), want m2, m3 and m4", len(we.Failed), we.Messages, err)
	}
	for i, f := range we.Failed {
		if f.Index != i+2 || f.ID != msgs[i+2].ID || f.Partition != -1 || f.Topic != topic {
			t.Errorf("failed[%d] = %+v", i, f)
		}
	}
	// The channel stays usable.
	if err := withChannel(conn, func(ch *amqp.Channel) error { _, err := ch.QueuePurge(full, false); return err }); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, msgs[:1]); err != nil {
		t.Errorf("Write after the refusal: %v", err)
	}
}

// TestRedeliveryCountIsUnknown checks what the package documentation
// says of delivery counts: a redelivered message comes with Count 0
// (quorum queues count every hand-back, which Delivery.Count must not),
// and without the x-delivery-count header.
func TestRedeliveryCountIsUnknown(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub := subscribe(t, ctx, d, topic, group)
	write(t, ctx, d, topic, 1, "m")
	for range 2 {
		drivertest.FetchExactly(t, sub, 1)
		drivertest.CloseSub(t, sub)
		sub = subscribe(t, ctx, d, topic, group)
	}
	defer drivertest.CloseSub(t, sub)
	dl := drivertest.FetchExactly(t, sub, 1)[0]
	if dl.Count != 0 {
		t.Errorf("redelivery has Count %d, want 0 (unknown)", dl.Count)
	}
	for k := range dl.Message.Headers {
		if strings.HasPrefix(k, "x-") || strings.HasPrefix(k, herald.HeaderPrefix) {
			t.Errorf("header %q reached the message", k)
		}
	}
	drivertest.Ack(t, sub, dl)
}

// TestGroupMembersMustAgree has a member join a group whose queue was
// declared with other arguments: the broker refuses, and Subscribe says
// so, while the driver stays usable.
func TestGroupMembersMustAgree(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	drivertest.CloseSub(t, subscribe(t, ctx, d, topic, group))
	p := strings.TrimSuffix(d.ExchangeName(topic), topic)
	other, err := amqpdriver.New(brokerURL(t), amqpdriver.WithNamePrefix(p), amqpdriver.WithSingleActiveConsumer())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Close() }()
	_, err = other.Subscribe(ctx, topic, group)
	drivertest.CheckDriverError(t, err, "amqpdriver", "subscribe", topic, group)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		t.Errorf("Subscribe with other queue arguments = %v, want the broker's PRECONDITION_FAILED", err)
	}
	g2 := drivertest.Name(t, "g2")
	d.queues[d.QueueName(topic, g2)] = true // same prefix: d deletes it
	drivertest.CloseSub(t, subscribe(t, ctx, other, topic, g2))
}
