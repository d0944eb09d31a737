package herald_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memtest"
)

type laterEvent struct{ N int }

// Key puts every laterEvent on one key: per-key order is what
// WithRetryLater gives up.
func (laterEvent) Key() string { return "k" }

// encodeLater encodes e with bus, with a trace context to check it is kept.
func encodeLater(t *testing.T, bus *herald.Bus, e laterEvent) *herald.Message {
	t.Helper()
	msgs, err := bus.Publisher().Encode(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	msgs[0].Headers["traceparent"] = laterTrace
	return msgs[0]
}

const laterTrace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// laterRun is one run of a handler: the event, when, and the round and
// attempt the context said.
type laterRun struct {
	n, round, attempt int
	at                time.Time
	headers           herald.Headers
}

type laterRuns struct {
	mu   sync.Mutex
	runs []laterRun
}

func (r *laterRuns) add(ctx context.Context, e laterEvent, m *herald.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs = append(r.runs, laterRun{n: e.N, round: herald.RetryRound(ctx), attempt: herald.Attempt(ctx), at: time.Now(), headers: m.Headers})
}

// failRoundZero is a handler that records its runs in r and fails a
// message's own delivery (round 0), succeeding in its retry rounds.
func (r *laterRuns) failRoundZero() func(context.Context, laterEvent, *herald.Message) error {
	return func(ctx context.Context, e laterEvent, m *herald.Message) error {
		r.add(ctx, e, m)
		if herald.RetryRound(ctx) == 0 {
			return errors.New("fails in round 0")
		}
		return nil
	}
}

func (r *laterRuns) all() []laterRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]laterRun(nil), r.runs...)
}

func (r *laterRuns) of(n int) []laterRun {
	var out []laterRun
	for _, run := range r.all() {
		if run.n == n {
			out = append(out, run)
		}
	}
	return out
}

// deadLetters collects what reaches topic's dead-letter topic.
func deadLetters(t *testing.T, bus *herald.Bus, topic string) func() []*herald.Message {
	t.Helper()
	var mu sync.Mutex
	var got []*herald.Message
	if err := bus.Handle(herald.DeadLetterTopic(topic), "dlq-reader", func(_ context.Context, m *herald.Message) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, m.Clone())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return func() []*herald.Message {
		mu.Lock()
		defer mu.Unlock()
		return append([]*herald.Message(nil), got...)
	}
}

func startBus(t *testing.T, bus *herald.Bus, ctx context.Context) {
	t.Helper()
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bus.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
}

func TestRetryLaterLetsTheKeyGoOnThenDeadLetters(t *testing.T) {
	var mu sync.Mutex
	var skipped, handledOther int
	bus, err := herald.NewBus(memtest.Broker(t), herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Group == "other" {
			mu.Lock()
			defer mu.Unlock()
			if r.Skipped {
				skipped++
			} else {
				handledOther++
			}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	herald.MustRegister[laterEvent](bus, "later.events")
	ctx := testContext(t)
	const backoff = 300 * time.Millisecond
	var runs laterRuns
	failing := errors.New("downstream says no")
	must(t, herald.Subscribe(bus, "g", func(ctx context.Context, e laterEvent, m *herald.Message) error {
		runs.add(ctx, e, m)
		if e.N == 1 {
			return failing
		}
		return nil
	}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 2, InitialBackoff: time.Millisecond}),
		herald.WithRetryLater(herald.RetryLaterConfig{Rounds: 2, Backoff: backoff, Jitter: -1}),
		herald.WithDeadLetter()))
	var other laterRuns
	must(t, herald.Subscribe(bus, "other", func(ctx context.Context, e laterEvent, m *herald.Message) error {
		other.add(ctx, e, m)
		return nil
	}))
	dlq := deadLetters(t, bus, "later.events")
	startBus(t, bus, ctx)

	tp := laterTrace
	first := encodeLater(t, bus, laterEvent{N: 1})
	if err := bus.PublishMessages(ctx, first, encodeLater(t, bus, laterEvent{N: 2})); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "dead letter after the last round", func() bool { return len(dlq()) == 1 })

	ones := runs.of(1)
	if len(ones) != 6 {
		t.Fatalf("event 1 ran %d times, want 3 rounds × 2 attempts: %+v", len(ones), ones)
	}
	for i, r := range ones {
		if wantRound, wantAttempt := i/2, i%2+1; r.round != wantRound || r.attempt != wantAttempt {
			t.Errorf("run %d: round %d attempt %d, want round %d attempt %d", i, r.round, r.attempt, wantRound, wantAttempt)
		}
		if r.headers["traceparent"] != tp {
			t.Errorf("run %d: traceparent %q, want it kept", i, r.headers["traceparent"])
		}
	}
	// Not before the backoff: round 1 a backoff after round 0's failure,
	// round 2 twice that after round 1's.
	if d := ones[2].at.Sub(ones[1].at); d < backoff {
		t.Errorf("round 1 ran %v after round 0 failed, before its backoff %v", d, backoff)
	}
	if d := ones[4].at.Sub(ones[3].at); d < 2*backoff {
		t.Errorf("round 2 ran %v after round 1 failed, before its backoff %v", d, 2*backoff)
	}
	// The key's later message did not wait for the retry rounds.
	twos := runs.of(2)
	if len(twos) != 1 {
		t.Fatalf("event 2 ran %d times, want 1", len(twos))
	}
	if !twos[0].at.Before(ones[2].at) {
		t.Error("event 2 was handled only after event 1's first retry round: its key was held")
	}

	dl := dlq()[0]
	rec := herald.ReadDeadLetter(dl)
	if rec.Attempts != 6 || rec.Group != "g" || rec.Topic != "later.events" {
		t.Errorf("dead-letter record %+v, want 6 attempts of group g from later.events", rec)
	}
	if !strings.Contains(rec.Reason, "2 later round(s)") || !strings.Contains(rec.Reason, failing.Error()) {
		t.Errorf("reason %q, want the rounds and the handler's error", rec.Reason)
	}
	if dl.ID != first.ID || dl.Key != "k" || string(dl.Data) != `{"N":1}` || dl.Headers["traceparent"] != tp {
		t.Errorf("dead letter %+v lost the message's ID, key, payload or traceparent", dl)
	}
	for _, h := range []string{herald.HeaderRetryGroup, herald.HeaderRetryRound, herald.HeaderRetryAttempts} {
		if v, ok := dl.Headers[h]; ok {
			t.Errorf("dead letter keeps %s = %q; a redrive must start its rounds anew", h, v)
		}
	}
	// The other group handled the original once and skipped both copies.
	if n := len(other.of(1)); n != 1 {
		t.Errorf("group other ran event 1 %d times, want 1 (the copies are not for it)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if skipped != 2 {
		t.Errorf("group other skipped %d deliveries, want the 2 copies", skipped)
	}
}

// newLaterBus is a Bus on a memory broker with laterEvent registered.
func newLaterBus(t *testing.T, d herald.Driver, opts ...herald.Option) *herald.Bus {
	t.Helper()
	bus, err := herald.NewBus(d, opts...)
	if err != nil {
		t.Fatal(err)
	}
	herald.MustRegister[laterEvent](bus, "later.events")
	return bus
}

func TestRetryLaterWithDedup(t *testing.T) {
	bus := newLaterBus(t, memtest.Broker(t))
	ctx := testContext(t)
	var runs laterRuns
	var dups atomic.Int32
	must(t, herald.Subscribe(bus, "g", runs.failRoundZero(), herald.WithDedupConfig(herald.DedupConfig{Storage: newDedupStore(t), OnDuplicate: func(*herald.Message) { dups.Add(1) }}),
		herald.WithRetryLater(herald.RetryLaterConfig{Rounds: 3, Backoff: 200 * time.Millisecond}),
		herald.WithDeadLetter()))
	dlq := deadLetters(t, bus, "later.events")
	startBus(t, bus, ctx)
	m := encodeLater(t, bus, laterEvent{N: 1})
	if err := bus.PublishMessages(ctx, m); err != nil {
		t.Fatal(err)
	}
	// The failed delivery was marked done: the copy of round 1 still runs.
	drivertest.Eventually(t, 30*time.Second, "round 1 handled", func() bool { return len(runs.all()) == 2 })
	if r := runs.all()[1]; r.round != 1 {
		t.Fatalf("second run in round %d, want 1", r.round)
	}
	// A duplicate of the original and a second copy of round 1 are skipped.
	dupCopy := m.Clone()
	dupCopy.Headers[herald.HeaderRetryGroup] = "g"
	dupCopy.Headers[herald.HeaderRetryRound] = "1"
	dupCopy.Headers[herald.HeaderRetryAttempts] = "1"
	if err := bus.PublishMessages(ctx, m.Clone(), dupCopy); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "both duplicates skipped", func() bool { return dups.Load() == 2 })
	if n := len(runs.all()); n != 2 {
		t.Errorf("handler ran %d times, want 2 (the duplicates skipped)", n)
	}
	if n := len(dlq()); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
}

func TestRetryLaterPermanentGoesStraightToDeadLetter(t *testing.T) {
	bus := newLaterBus(t, memtest.Broker(t))
	ctx := testContext(t)
	var runs laterRuns
	var copies atomic.Int32
	must(t, herald.Subscribe(bus, "g", func(ctx context.Context, e laterEvent, m *herald.Message) error {
		runs.add(ctx, e, m)
		return herald.Permanent(errors.New("bad order"))
	}, herald.WithRetryLater(herald.RetryLaterConfig{Backoff: 200 * time.Millisecond,
		OnRetryLater: func(*herald.Message, int, time.Time, error) { copies.Add(1) }}),
		herald.WithDeadLetter()))
	// Undecodable: on the same topic, a payload laterEvent cannot take.
	dlq := deadLetters(t, bus, "later.events")
	startBus(t, bus, ctx)
	bad := encodeLater(t, bus, laterEvent{N: 2})
	bad.Data = []byte("{not json")
	if err := bus.PublishMessages(ctx, encodeLater(t, bus, laterEvent{N: 1}), bad); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "both dead-lettered", func() bool { return len(dlq()) == 2 })
	if n := len(runs.all()); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
	if n := copies.Load(); n != 0 {
		t.Errorf("%d retry copies written for permanent failures", n)
	}
	for _, dl := range dlq() {
		if rec := herald.ReadDeadLetter(dl); rec.Attempts != 1 {
			t.Errorf("dead letter %s: %d attempts, want 1", dl.ID, rec.Attempts)
		}
	}
}

// noDelay is a driver that cannot delay: its Writer is not a DelayedWriter.
type noDelay struct{ herald.Driver }

// failingCopies is a memory driver whose Write of a retry copy fails the
// first fail times.
type failingCopies struct {
	herald.Driver
	fail atomic.Int32
}

func (d *failingCopies) DelayPrecision() time.Duration { return time.Millisecond }

func (d *failingCopies) Write(ctx context.Context, msgs []*herald.Message) error {
	for _, m := range msgs {
		if m.Headers[herald.HeaderRetryRound] != "" && d.fail.Add(-1) >= 0 {
			return errors.New("broker unavailable")
		}
	}
	return d.Driver.Write(ctx, msgs)
}

func TestRetryLaterRefused(t *testing.T) {
	ok := []herald.SubscribeOption{herald.WithRetryLater(herald.RetryLaterConfig{}), herald.WithDeadLetter()}
	h := func(context.Context, laterEvent, *herald.Message) error { return nil }

	err := herald.Subscribe(newLaterBus(t, noDelay{memtest.Broker(t)}), "g", h, ok...)
	var de *herald.DelayError
	if !errors.As(err, &de) || !errors.Is(err, herald.ErrDelayNotSupported) || de.Topic != "later.events" {
		t.Errorf("driver that cannot delay: %v, want a *herald.DelayError wrapping ErrDelayNotSupported", err)
	}
	bus := newLaterBus(t, memtest.Broker(t))
	var oe *herald.OptionError
	if err := herald.Subscribe(bus, "g", h, herald.WithRetryLater(herald.RetryLaterConfig{})); !errors.As(err, &oe) || oe.Option != "WithRetryLater" {
		t.Errorf("without WithDeadLetter: %v, want an *OptionError for WithRetryLater", err)
	}
	for _, c := range []herald.RetryLaterConfig{
		{Rounds: -1}, {Backoff: -time.Second}, {MaxBackoff: -1}, {Backoff: time.Minute, MaxBackoff: time.Second},
		{Jitter: 1.5}, {MaxBackoff: herald.MaxDelay + time.Hour},
	} {
		err := herald.Subscribe(bus, "g", h, herald.WithRetryLater(c), herald.WithDeadLetter())
		if !errors.As(err, &oe) || !errors.Is(err, herald.ErrInvalidOption) || !strings.HasPrefix(oe.Option, "RetryLaterConfig.") {
			t.Errorf("%+v: %v, want an *OptionError", c, err)
		}
	}
	err = herald.SubscribeBatch(bus, "b", func(context.Context, []herald.Item[laterEvent]) error { return nil }, ok...)
	if !errors.As(err, &oe) || oe.Option != "WithRetryLater" {
		t.Errorf("batch handler: %v, want an *OptionError for WithRetryLater", err)
	}
	// Nothing was half-registered: a good Subscribe of g still works.
	if err := herald.Subscribe(bus, "g", h, ok...); err != nil {
		t.Errorf("good Subscribe after refusals: %v", err)
	}
}

func TestRetryLaterCopyNotWrittenRedeliversInPlace(t *testing.T) {
	d := &failingCopies{Driver: memtest.Broker(t)}
	d.fail.Store(1)
	var errs atomic.Int32
	bus := newLaterBus(t, d, herald.WithErrorHandler(func(error) { errs.Add(1) }))
	ctx := testContext(t)
	var runs laterRuns
	must(t, herald.Subscribe(bus, "g", runs.failRoundZero(), herald.WithRetryLater(herald.RetryLaterConfig{Backoff: 200 * time.Millisecond}), herald.WithDeadLetter(),
		herald.WithScheduler(herald.SchedulerConfig{RedeliveryBackoff: 10 * time.Millisecond})))
	dlq := deadLetters(t, bus, "later.events")
	startBus(t, bus, ctx)
	if err := bus.PublishMessages(ctx, encodeLater(t, bus, laterEvent{N: 1})); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "round 1 handled", func() bool {
		all := runs.all()
		return len(all) > 0 && all[len(all)-1].round == 1
	})
	all := runs.all()
	if len(all) != 3 || all[0].round != 0 || all[1].round != 0 {
		t.Errorf("runs %+v, want round 0 twice (the first copy's write failed: redelivered in place), then round 1", all)
	}
	if n := len(dlq()); n != 0 {
		t.Errorf("%d dead letters: a failed copy write must not dead-letter", n)
	}
}

// With a breaker, the failure that opens it holds the message: it runs
// again when the breaker probes, and spends no round.
func TestRetryLaterWithBreakerHolds(t *testing.T) {
	bus := newLaterBus(t, memtest.Broker(t))
	ctx := testContext(t)
	var runs laterRuns
	var copies atomic.Int32
	must(t, herald.Subscribe(bus, "g", func(ctx context.Context, e laterEvent, m *herald.Message) error {
		runs.add(ctx, e, m)
		if len(runs.all()) == 1 {
			return errors.New("downstream down")
		}
		return nil
	}, herald.WithBreaker(herald.BreakerConfig{Failures: 1, CoolDown: 200 * time.Millisecond}),
		herald.WithRetryLater(herald.RetryLaterConfig{Backoff: time.Hour,
			OnRetryLater: func(*herald.Message, int, time.Time, error) { copies.Add(1) }}),
		herald.WithDeadLetter()))
	startBus(t, bus, ctx)
	if err := bus.PublishMessages(ctx, encodeLater(t, bus, laterEvent{N: 1})); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "the probe ran the held message", func() bool { return len(runs.all()) == 2 })
	if all := runs.all(); all[1].round != 0 {
		t.Errorf("probe ran round %d, want 0 (held, not re-published)", all[1].round)
	}
	if n := copies.Load(); n != 0 {
		t.Errorf("%d retry copies written while the breaker held the message", n)
	}
}

// A batch group on the topic skips the copies addressed to another group.
func TestRetryLaterCopySkippedByBatchGroup(t *testing.T) {
	var skipped atomic.Int32
	bus := newLaterBus(t, memtest.Broker(t), herald.WithHandleHook(func(r herald.HandleResult) {
		if r.Group == "batch" && r.Skipped {
			skipped.Add(1)
		}
	}))
	ctx := testContext(t)
	var batched atomic.Int32
	var runs laterRuns
	must(t, herald.Subscribe(bus, "g", runs.failRoundZero(), herald.WithRetryLater(herald.RetryLaterConfig{Backoff: 200 * time.Millisecond}), herald.WithDeadLetter()))
	must(t, herald.SubscribeBatch(bus, "batch", func(_ context.Context, items []herald.Item[laterEvent]) error {
		batched.Add(int32(len(items)))
		return nil
	}, herald.WithBatch(10, 10*time.Millisecond)))
	startBus(t, bus, ctx)
	if err := bus.PublishMessages(ctx, encodeLater(t, bus, laterEvent{N: 1})); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "round 1 handled, the copy skipped by the batch group", func() bool {
		return len(runs.all()) == 2 && skipped.Load() == 1
	})
	if n := batched.Load(); n != 1 {
		t.Errorf("batch group handled %d messages, want 1 (the original only)", n)
	}
}

// A permanent error in a later round is dead-lettered at once, with the
// attempts of the earlier rounds counted.
func TestRetryLaterPermanentInLaterRound(t *testing.T) {
	bus := newLaterBus(t, memtest.Broker(t))
	ctx := testContext(t)
	var runs laterRuns
	must(t, herald.Subscribe(bus, "g", func(ctx context.Context, e laterEvent, m *herald.Message) error {
		runs.add(ctx, e, m)
		if herald.RetryRound(ctx) == 0 {
			return errors.New("try later")
		}
		return herald.Permanent(errors.New("now it is hopeless"))
	}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond}),
		herald.WithRetryLater(herald.RetryLaterConfig{Rounds: 5, Backoff: 200 * time.Millisecond}),
		herald.WithDeadLetter()))
	dlq := deadLetters(t, bus, "later.events")
	startBus(t, bus, ctx)
	if err := bus.PublishMessages(ctx, encodeLater(t, bus, laterEvent{N: 1})); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 30*time.Second, "dead-lettered", func() bool { return len(dlq()) == 1 })
	if n := len(runs.all()); n != 4 {
		t.Errorf("handler ran %d times, want 3 attempts in round 0 and 1 in round 1", n)
	}
	if rec := herald.ReadDeadLetter(dlq()[0]); rec.Attempts != 4 || !strings.Contains(rec.Reason, "hopeless") {
		t.Errorf("dead-letter record %+v, want 4 attempts and the permanent error", rec)
	}
}
