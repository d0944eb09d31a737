package memtest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
)

// Tester runs a service's processors (subscriptions, with their group
// tables) on a broker of their own, for unit tests: register events and
// subscribe on Bus as the service does, Feed it events, then read its
// tables (Table.Value) and what it published (Emitted). Feed returns once
// every subscription has handled everything, including what handlers
// published on the way, so a test reads results without sleeping. The
// Tester shuts its Bus down and closes its broker when the test ends:
// nothing it started outlives the test.
type Tester struct {
	t      testing.TB
	broker *memdriver.Broker
	bus    *herald.Bus

	mu      sync.Mutex
	emitted []*herald.Message
	started bool
}

// settleTimeout bounds how long Feed waits for the processors.
const settleTimeout = 30 * time.Second

// NewTester returns a Tester whose Bus is made with opts.
func NewTester(t testing.TB, opts ...herald.Option) *Tester {
	t.Helper()
	tt := &Tester{t: t, broker: Broker(t)}
	bus, err := herald.NewBus(recording{tt.broker, tt}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	tt.bus = bus
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
		defer cancel()
		if err := bus.Shutdown(ctx); err != nil {
			t.Errorf("memtest: Tester shutdown: %v", err)
		}
	})
	return tt
}

// recording is the broker, with every written message recorded.
type recording struct {
	*memdriver.Broker
	tt *Tester
}

func (r recording) Write(ctx context.Context, msgs []*herald.Message) error {
	if err := r.Broker.Write(ctx, msgs); err != nil {
		return err
	}
	r.tt.mu.Lock()
	r.tt.emitted = append(r.tt.emitted, msgs...)
	r.tt.mu.Unlock()
	return nil
}

// Bus is the Tester's Bus: register and subscribe on it.
func (tt *Tester) Bus() *herald.Bus { return tt.bus }

// Broker is the Tester's broker (its dead letters, its backlogs).
func (tt *Tester) Broker() *memdriver.Broker { return tt.broker }

// Feed starts the Bus the first time, publishes events and waits until
// every subscription has handled them and what they published. A failed
// publish, or processors still busy after 30 s, fail the test.
func (tt *Tester) Feed(events ...any) {
	tt.t.Helper()
	tt.start()
	if err := tt.bus.Publish(context.Background(), events...); err != nil {
		tt.t.Fatalf("memtest: Feed: %v", err)
	}
	tt.Settle()
}

// FeedMessages is Feed for ready-made messages.
func (tt *Tester) FeedMessages(msgs ...*herald.Message) {
	tt.t.Helper()
	tt.start()
	if err := tt.bus.PublishMessages(context.Background(), msgs...); err != nil {
		tt.t.Fatalf("memtest: FeedMessages: %v", err)
	}
	tt.Settle()
}

func (tt *Tester) start() {
	tt.t.Helper()
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.started {
		return
	}
	if err := tt.bus.Start(context.Background()); err != nil {
		tt.t.Fatalf("memtest: start the bus: %v", err)
	}
	tt.started = true
}

// Settle waits until every subscription has acknowledged everything
// written to its topic (delayed messages not yet due aside).
func (tt *Tester) Settle() {
	tt.t.Helper()
	deadline := time.Now().Add(settleTimeout)
	for tt.broker.Unsettled() > 0 {
		if time.Now().After(deadline) {
			tt.t.Fatalf("memtest: %d messages still unhandled after %v", tt.broker.Unsettled(), settleTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// Emitted returns the messages written to topic so far, in write order:
// what Feed published and what handlers published (dead letters go to
// their own topics, herald.DeadLetterTopic).
func (tt *Tester) Emitted(topic string) []*herald.Message {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(tt.emitted), func(m *herald.Message) bool { return m.Topic != topic })
}
