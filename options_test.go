package herald_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdedup"
	"github.com/heraldbus/herald/memory/memtest"
)

// Bad option values are errors from the constructor, every one of them
// reported at once, never silently corrected.
func TestBadOptionsAreErrors(t *testing.T) {
	broker := memtest.Broker(t)
	_, err := herald.NewBus(broker, herald.WithMaxMessageBytes(-1), herald.WithLogger(nil), herald.WithErrorHandler(nil),
		herald.WithIDGenerator(nil), herald.WithDefaultCodec(nil), herald.WithHealth(herald.HealthConfig{StallAfter: -time.Second}),
		herald.WithPublishWriter(broker), herald.WithOutbox(fakeOutbox{broker}), nil)
	for _, want := range []string{"WithMaxMessageBytes", "WithLogger", "WithErrorHandler", "WithIDGenerator", "WithDefaultCodec",
		"HealthConfig.StallAfter", "given with WithOutbox", "nil option"} {
		if !errors.Is(err, herald.ErrInvalidOption) || !strings.Contains(err.Error(), want) {
			t.Errorf("NewBus: %v; want ErrInvalidOption naming %s", err, want)
		}
	}
	var oe *herald.OptionError
	if !errors.As(err, &oe) {
		t.Errorf("NewBus: %v is not an *OptionError", err)
	}
	if _, err := herald.NewPublisher(broker, herald.WithMaxMessageBytes(-5)); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("NewPublisher: %v, want ErrInvalidOption", err)
	}

	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	h := func(context.Context, OrderPlaced, *herald.Message) error { return nil }
	store, err := memdedup.New(testContext(t))
	must(t, err)
	for _, c := range []struct {
		name string
		opts []herald.SubscribeOption
		want string
	}{
		{"retry", []herald.SubscribeOption{herald.WithRetry(herald.RetryConfig{MaxAttempts: -1, Jitter: 2})}, "RetryConfig.Jitter"},
		{"retry backoffs", []herald.SubscribeOption{herald.WithRetry(herald.RetryConfig{InitialBackoff: time.Second, MaxBackoff: time.Millisecond})}, "below InitialBackoff"},
		{"dedup without storage", []herald.SubscribeOption{herald.WithDedupConfig(herald.DedupConfig{})}, "DedupConfig.Storage"},
		{"dedup lease", []herald.SubscribeOption{herald.WithDedupConfig(herald.DedupConfig{Storage: store, Lease: -1})}, "DedupConfig.Lease"},
		{"dead letter", []herald.SubscribeOption{herald.WithDeadLetterConfig(herald.DeadLetterConfig{MaxDeliveries: -2})}, "MaxDeliveries"},
		{"concurrency", []herald.SubscribeOption{herald.WithConcurrency(0)}, "WithConcurrency"},
		{"scheduler", []herald.SubscribeOption{herald.WithScheduler(herald.SchedulerConfig{Concurrency: 8, MaxInFlight: 4})}, "below Concurrency"},
		{"scheduler fetch", []herald.SubscribeOption{herald.WithScheduler(herald.SchedulerConfig{MaxInFlight: 10, FetchBatch: 20})}, "above MaxInFlight"},
		{"concurrency against scheduler", []herald.SubscribeOption{herald.WithConcurrency(4), herald.WithScheduler(herald.SchedulerConfig{Concurrency: 2})}, "given with WithScheduler"},
		{"nil option", []herald.SubscribeOption{nil}, "nil option"},
	} {
		err := herald.Subscribe(bus, "g-"+strings.ReplaceAll(c.name, " ", "-"), h, c.opts...)
		if !errors.Is(err, herald.ErrInvalidOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Subscribe = %v, want ErrInvalidOption naming %q", c.name, err, c.want)
		}
	}

	// Handlers of one topic and group share a scheduler: other settings
	// from a second Subscribe are refused, the same ones accepted.
	herald.MustRegister[OrderShipped](bus, "orders")
	cfg := herald.SchedulerConfig{Concurrency: 2}
	must(t, herald.Subscribe(bus, "shared", h, herald.WithScheduler(cfg)))
	if err := herald.Subscribe(bus, "shared", func(context.Context, OrderShipped, *herald.Message) error { return nil },
		herald.WithScheduler(herald.SchedulerConfig{Concurrency: 3})); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("a second, different WithScheduler for one topic and group: %v, want ErrInvalidOption", err)
	}

	p, _ := newTestPublisher(t)
	if _, err := herald.NewAsyncPublisher(p, herald.AsyncConfig{MaxBatch: -1, Linger: -time.Second}); !errors.Is(err, herald.ErrInvalidOption) ||
		!strings.Contains(err.Error(), "MaxBatch") || !strings.Contains(err.Error(), "Linger") {
		t.Errorf("NewAsyncPublisher: %v, want ErrInvalidOption naming MaxBatch and Linger", err)
	}
}

// fakeOutbox is a TransactionalWriter that is never in a transaction.
type fakeOutbox struct{ herald.Writer }

func (fakeOutbox) InTransaction(context.Context) bool { return false }
