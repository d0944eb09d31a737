package amqpdriver_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(runCrashChild())
	}
	goleak.VerifyTestMain(m)
}

// defaultURL is the broker of a development machine.
const defaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// brokerURL returns HERALD_AMQP_URL (default defaultURL) after checking
// that something listens there: skip with one line on a developer
// machine, fail under CI.
func brokerURL(t testing.TB) string {
	t.Helper()
	raw := testenv.Getenv("HERALD_AMQP_URL", defaultURL)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("HERALD_AMQP_URL %q: %v", raw, err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5672")
	}
	conn, err := net.DialTimeout("tcp", host, 2*time.Second)
	if err != nil {
		testenv.Unavailable(t, "rabbitmq not reachable at "+host+": "+err.Error())
		return ""
	}
	_ = conn.Close()
	return raw
}

// recorder is a driver that remembers the topics and groups it was used
// with, so that the test deletes their exchanges and queues when it ends.
type recorder struct {
	*amqpdriver.Driver
	mu     sync.Mutex
	topics map[string]bool
	queues map[string]bool
}

func (r *recorder) Write(ctx context.Context, msgs []*herald.Message) error {
	r.mu.Lock()
	for _, m := range msgs {
		if m != nil && herald.ValidateName("topic", m.Topic) == nil {
			r.topics[m.Topic] = true
		}
	}
	r.mu.Unlock()
	return r.Driver.Write(ctx, msgs)
}

func (r *recorder) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	if herald.ValidateName("topic", topic) == nil && herald.ValidateName("group", group) == nil {
		r.mu.Lock()
		r.topics[topic] = true
		r.queues[r.QueueName(topic, group)] = true
		r.mu.Unlock()
	}
	return r.Driver.Subscribe(ctx, topic, group)
}

// newDriver returns a driver on a name prefix of its own, closed, with
// its queues and exchanges deleted, when t ends.
func newDriver(t testing.TB, opts ...amqpdriver.Option) *recorder {
	t.Helper()
	u := brokerURL(t)
	d, err := amqpdriver.New(u, append([]amqpdriver.Option{amqpdriver.WithNamePrefix(prefix(t)), amqpdriver.WithConnectionName(t.Name())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return record(t, u, d)
}

// record wraps d, which talks to the broker at u, in a recorder that
// closes it and deletes its queues and exchanges when t ends.
func record(t testing.TB, u string, d *amqpdriver.Driver) *recorder {
	r := &recorder{Driver: d, topics: map[string]bool{}, queues: map[string]bool{}}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		r.cleanUp(t, u)
	})
	return r
}

// prefix returns a name prefix unique to this test and run.
func prefix(testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "herald-test." + hex.EncodeToString(b[:]) + "."
}

func (r *recorder) cleanUp(t testing.TB, u string) {
	conn, err := amqp.Dial(u)
	if err != nil {
		t.Errorf("clean up: %v", err)
		return
	}
	defer func() { _ = conn.Close() }()
	r.mu.Lock()
	defer r.mu.Unlock()
	for q := range r.queues {
		if err := withChannel(conn, func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err }); err != nil {
			t.Errorf("delete queue %s: %v", q, err)
		}
	}
	exchanges := map[string]bool{}
	for topic := range r.topics {
		exchanges[r.ExchangeName(topic)] = true
		// The streams of retained topics, and their marks; deleting a
		// queue that does not exist succeeds.
		for _, q := range []string{r.StreamName(topic), r.StreamName(topic) + amqpdriver.RedrivenSuffix} {
			if err := withChannel(conn, func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err }); err != nil {
				t.Errorf("delete stream %s: %v", q, err)
			}
		}
	}
	for ex := range exchanges {
		if err := withChannel(conn, func(ch *amqp.Channel) error { return ch.ExchangeDelete(ex, false, false) }); err != nil {
			t.Errorf("delete exchange %s: %v", ex, err)
		}
	}
}

func withChannel(conn *amqp.Connection, f func(*amqp.Channel) error) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	return f(ch)
}

func TestConformance(t *testing.T) {
	cfg := drivertest.Config{
		NewDriver:       func(t *testing.T) herald.Driver { return newDriver(t) },
		MaxMessageBytes: amqpdriver.DefaultMaxMessageBytes,
		// Message.Time travels as Unix nanoseconds in a header.
		TimePrecision: time.Nanosecond,
	}
	// drivertest.RunOptional checks Lag on a group created after the
	// messages were written, which a broker without history cannot
	// pass: TestLag checks the same contract with the group first.
	t.Run("Driver", func(t *testing.T) { drivertest.RunDriver(t, cfg) })
	t.Run("Bus", func(t *testing.T) { drivertest.RunBus(t, cfg) })
}

func TestConformanceSingleActiveConsumer(t *testing.T) {
	cfg := drivertest.Config{
		NewDriver:       func(t *testing.T) herald.Driver { return newDriver(t, amqpdriver.WithSingleActiveConsumer()) },
		MaxMessageBytes: amqpdriver.DefaultMaxMessageBytes,
		TimePrecision:   time.Nanosecond,
	}
	t.Run("Driver", func(t *testing.T) { drivertest.RunDriver(t, cfg) })
}

func TestConformanceSharedExchange(t *testing.T) {
	cfg := drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			return newDriver(t, amqpdriver.WithExchange(prefix(t)+"all"))
		},
		MaxMessageBytes: amqpdriver.DefaultMaxMessageBytes,
		TimePrecision:   time.Nanosecond,
	}
	t.Run("Driver", func(t *testing.T) { drivertest.RunDriver(t, cfg) })
}

func TestConformanceClassic(t *testing.T) {
	cfg := drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			return newDriver(t, amqpdriver.WithQueueType(amqpdriver.QueueClassic))
		},
		MaxMessageBytes: amqpdriver.DefaultMaxMessageBytes,
		TimePrecision:   time.Nanosecond,
	}
	t.Run("Driver", func(t *testing.T) { drivertest.RunDriver(t, cfg) })
}

func TestNewReportsEveryInvalidOption(t *testing.T) {
	_, err := amqpdriver.New("amqp://127.0.0.1:1/",
		amqpdriver.WithMaxMessageBytes(-1),
		amqpdriver.WithPrefetch(0),
		amqpdriver.WithQueueType(amqpdriver.QueueType(9)),
		amqpdriver.WithReconnectBackoff(0, -time.Second),
		amqpdriver.WithNamePrefix("has space"),
		amqpdriver.WithExchange("bad exchange"),
		amqpdriver.WithConnectionName(""),
		amqpdriver.WithRetention(1500*time.Millisecond, -1),
		nil,
	)
	if err == nil {
		t.Fatal("New accepted invalid options")
	}
	if !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("error does not wrap ErrInvalidOption: %v", err)
	}
	var oe *herald.OptionError
	if !errors.As(err, &oe) {
		t.Errorf("error is not a *herald.OptionError: %v", err)
	}
	for _, want := range []string{"WithMaxMessageBytes -1", "WithPrefetch 0", "WithQueueType QueueType(9)",
		"WithReconnectBackoff 0s", "WithReconnectBackoff -1s", "WithNamePrefix has space", "WithExchange bad exchange",
		"WithConnectionName", "WithRetention 1.5s", "WithRetention -1", "nil option"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := amqpdriver.New("amqp://127.0.0.1:1/", amqpdriver.WithPrefetch(65536)); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("prefetch 65536: %v", err)
	}
	if _, err := amqpdriver.New(""); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("empty URL: %v", err)
	}
	if _, err := amqpdriver.NewDial(nil); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("nil dial: %v", err)
	}
	d, err := amqpdriver.New("amqp://127.0.0.1:1/")
	if err != nil {
		t.Fatalf("defaults rejected: %v", err)
	}
	if got := d.ExchangeName("orders"); got != "herald.orders" {
		t.Errorf("ExchangeName = %q", got)
	}
	if got := d.QueueName("orders", "billing"); got != "herald.orders@billing" {
		t.Errorf("QueueName = %q", got)
	}
	long := strings.Repeat("t", 200)
	if a, b := d.QueueName(long, long+"a"), d.QueueName(long, long+"b"); len(a) > 255 || a == b {
		t.Errorf("long queue names %q and %q", a, b)
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close of a driver that never connected: %v", err)
	}
	if err := d.Ping(context.Background()); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Ping after Close = %v", err)
	}
}
