// Package drivertest is the conformance suite every herald driver runs: the
// one place that defines what a driver must do. A driver's test calls
//
//	drivertest.Run(t, drivertest.Config{NewDriver: func(t *testing.T) herald.Driver { ... }})
//
// The suite checks the driver contract directly (Write, Subscribe, Fetch,
// Ack, Close) and then through a herald.Bus (typed round trip, redelivery
// after a handler error, per-key order under concurrency, shutdown with
// handlers in flight, dead-lettering of undecodable payloads). Every test
// uses topics and groups of its own, so a driver backed by a shared server
// can run the suite against it.
package drivertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// Config describes the driver under test.
type Config struct {
	// NewDriver returns a driver for one test; clean it up with t.Cleanup.
	NewDriver func(t *testing.T) herald.Driver
	// MaxMessageBytes is the driver's size limit, if it has one: the
	// suite checks that a larger message (by herald.Message.Size, so
	// payload, key and headers count) fails with ErrMessageTooLarge.
	MaxMessageBytes int
	// LargeMessageBytes is the size of the large-message round trip
	// (default 256 KiB; it must not exceed MaxMessageBytes).
	LargeMessageBytes int
	// Timeout bounds each wait for messages (default 30 s). It is a
	// liveness bound, not a performance target.
	Timeout time.Duration
	// DelayTolerance is how much later than the driver's DelayPrecision a
	// delayed message may arrive in the Delay cases (default 5 s): the
	// noise of a busy machine, not a performance target. Messages arriving
	// before they are due always fail.
	DelayTolerance time.Duration
	// TimePrecision is how precisely the driver keeps Message.Time
	// (default 1 ms, what Kafka keeps).
	TimePrecision time.Duration

	// The capabilities the driver declares: the optional interfaces its
	// subscriptions implement. RunOptional checks the contract of each one
	// declared, and fails when a subscription implements an interface
	// that is not declared or lacks one that is, so that a new driver
	// learns the whole contract from one call.

	// DeliveryCounts: the driver reports Delivery.Count for redeliveries;
	// its subscriptions are herald.Releasers, and a hand-back of released
	// deliveries does not count while one of held deliveries does.
	DeliveryCounts bool
	// Lag: subscriptions are herald.LagReporters, counting what the group
	// has not acknowledged.
	Lag bool
	// Revocation: subscriptions are herald.Revokers: a delivery whose
	// partition moved to another member reports Revoked before that
	// member's copy can run.
	Revocation bool
	// ErrorReporting: subscriptions are herald.ErrorReporters. (Provoking
	// a background error is the driver's own test; the suite checks the
	// declaration.)
	ErrorReporting bool
	// Delay: the driver is a herald.DelayedWriter: a message whose
	// herald.HeaderDeliverAt is in the future reaches no group before it
	// is due, and reaches it within DelayPrecision (plus DelayTolerance)
	// after; messages of one key arrive in the order they become due
	// (equal due times in write order); a subscription that closes and
	// reopens while they wait loses none and duplicates none; bad due
	// times fail with herald.ErrInvalidDelay. A driver without it must
	// be refused delayed publishes (herald.ErrDelayNotSupported), which
	// the suite checks too.
	Delay bool
	// Tables: the driver is a herald.TableLog and its subscriptions are
	// herald.Partitioned, so subscriptions may keep group tables; the
	// driver runs RunTables too.
	Tables bool
}

func (c Config) withDefaults() Config {
	if c.LargeMessageBytes <= 0 {
		c.LargeMessageBytes = 256 << 10
		if c.MaxMessageBytes > 0 {
			c.LargeMessageBytes = min(c.LargeMessageBytes, c.MaxMessageBytes)
		}
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.DelayTolerance <= 0 {
		c.DelayTolerance = 5 * time.Second
	}
	if c.TimePrecision <= 0 {
		c.TimePrecision = time.Millisecond
	}
	return c
}

// Run runs the whole suite: the driver contract, the optional
// interfaces the driver declares, the Bus on the driver, and group
// tables when the driver declares them.
func Run(t *testing.T, cfg Config) {
	cfg = cfg.withDefaults()
	t.Run("Driver", func(t *testing.T) { RunDriver(t, cfg) })
	t.Run("Optional", func(t *testing.T) { RunOptional(t, cfg) })
	t.Run("Bus", func(t *testing.T) { RunBus(t, cfg) })
	if cfg.Tables {
		t.Run("Tables", func(t *testing.T) { RunTables(t, cfg) })
	}
}

// RunDriver runs the checks of the driver contract itself.
func RunDriver(t *testing.T, cfg Config) {
	cfg = cfg.withDefaults()
	tests := []struct {
		name string
		fn   func(*testing.T, Config)
	}{
		{"RoundTripKeepsEveryField", testRoundTrip},
		{"EmptyWriteIsNoop", testEmptyWrite},
		{"Ping", testPing},
		{"CloseIsFinal", testClose},
		{"LargeBatch", testLargeBatch},
		{"LargeMessage", testLargeMessage},
		{"OversizedMessage", testOversized},
		{"BadMessageFailsWholeBatch", testBadMessageFailsWholeBatch},
		{"InvalidNames", testInvalidNames},
		{"CancelledContexts", testCancelledContexts},
		{"FetchWaitsForPublish", testFetchWaits},
		{"UnackedRedeliveredAfterClose", testRedeliveryAfterClose},
		{"TwoGroupsEachGetAll", testTwoGroups},
		{"CompetingConsumersShareWithoutLoss", testCompetingConsumers},
		{"PerKeyOrder", testPerKeyOrder},
		{"ConcurrentPublishers", testConcurrentPublishers},
		// A driver that cannot delay must refuse delayed messages; one
		// that can (Config.Delay) is checked by RunOptional.
		{"DelayRefusedWithoutSupport", testDelayRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // every case has a driver, topics and groups of its own
			tc.fn(t, cfg)
		})
	}
}

// Name returns a topic or group name unique to this test and run.
func Name(t testing.TB, suffix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	base := t.Name()
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		base = base[i+1:]
	}
	if len(base) > 40 {
		base = base[:40]
	}
	return "dt." + base + "." + suffix + "." + hex.EncodeToString(b[:])
}

// setUp returns what most cases start from: a driver, the case's context
// and a topic and a group of its own.
func setUp(t *testing.T, cfg Config) (d herald.Driver, ctx context.Context, topic, group string) {
	return cfg.NewDriver(t), context4(t, cfg), Name(t, "t"), Name(t, "g")
}

// context4 bounds a whole case: four times the suite's timeout.
func context4(t *testing.T, cfg Config) context.Context { return Context(t, 4*cfg.Timeout) }

func subscribe(t *testing.T, ctx context.Context, d herald.Driver, topic, group string) herald.Subscription {
	t.Helper()
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatalf("Subscribe(%q, %q): %v", topic, group, err)
	}
	return sub
}

// CloseSub closes sub, bounded by 30 s, and reports a failure to t.
func CloseSub(t testing.TB, sub herald.Subscription) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sub.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// fetchN fetches until n deliveries arrived (more may come: it returns
// what one extra Fetch round brought too, so callers can see duplicates
// only when they ask). It fails the test after cfg.Timeout.
func fetchN(t *testing.T, cfg Config, sub herald.Subscription, n int) []herald.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	var out []herald.Delivery
	buf := make([]herald.Delivery, 256)
	for len(out) < n {
		k, err := sub.Fetch(ctx, buf)
		out = append(out, buf[:k]...)
		if err != nil {
			t.Fatalf("Fetch after %d of %d deliveries: %v", len(out), n, err)
		}
	}
	return out
}

// FetchExactly fetches n deliveries from sub, never asking for more than
// are missing (so nothing extra is delivered and left unacknowledged). It
// fails the test after 30 s.
func FetchExactly(t *testing.T, sub herald.Subscription, n int) []herald.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make([]herald.Delivery, 0, n)
	buf := make([]herald.Delivery, n)
	for len(got) < n {
		k, err := sub.Fetch(ctx, buf[:n-len(got)])
		if err != nil {
			t.Fatalf("Fetch after %d of %d: %v", len(got), n, err)
		}
		got = append(got, buf[:k]...)
	}
	return got
}

// Ack acknowledges ds on sub, failing the test on the first error.
func Ack(t *testing.T, sub herald.Subscription, ds ...herald.Delivery) {
	t.Helper()
	for _, d := range ds {
		if err := sub.Ack(context.Background(), d); err != nil {
			t.Fatalf("Ack %s: %v", d.Message.ID, err)
		}
	}
}

func write(t *testing.T, ctx context.Context, w herald.Writer, msgs ...*herald.Message) {
	t.Helper()
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatalf("Write %d messages: %v", len(msgs), err)
	}
}

// newMessages makes n messages on topic; key(i) names each one's key.
func newMessages(topic string, n int, key func(i int) string) []*herald.Message {
	now := time.Now().UTC()
	msgs := make([]*herald.Message, n)
	for i := range msgs {
		msgs[i] = &herald.Message{
			ID:          fmt.Sprintf("%s-%06d", topic, i),
			Topic:       topic,
			Key:         key(i),
			Headers:     herald.Headers{"seq": fmt.Sprint(i)},
			ContentType: "application/octet-stream",
			Data:        []byte(fmt.Sprintf("payload %d", i)),
			Time:        now,
		}
	}
	return msgs
}

func noKey(int) string { return "" }
