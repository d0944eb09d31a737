package herald

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// ErrBreakerOpen is wrapped by the error a subscription's handler chain
// returns when it stops while its circuit breaker holds a message (see
// WithBreaker). It is no give-up: the retry middleware does not retry it,
// the dead-letter middleware passes it through, and the message stays
// unacknowledged, to be delivered again.
var ErrBreakerOpen = errors.New("herald: circuit breaker open")

// ErrStopping is wrapped by the error of a breaker or throttle wait that
// the subscription's shutdown cut short. Like ErrBreakerOpen, it is
// neither retried nor dead-lettered; the message is delivered again.
var ErrStopping = errors.New("herald: subscription stopping")

// BreakerConfig configures a subscription's circuit breaker (WithBreaker).
// The zero value of a field means its default, except CoolDown, which is
// required.
type BreakerConfig struct {
	// Failures is how many handler attempts in a row must fail, across
	// the subscription's messages, for the breaker to open (default 3).
	// A success resets the count. An attempt is one run of the handler:
	// each retry (WithRetry) is one. An outage dead-letters nothing when
	// Failures is at most RetryConfig.MaxAttempts (1 without WithRetry):
	// the first message of the outage opens the breaker before the retry
	// middleware gives up on it.
	Failures int
	// CoolDown is how long the breaker stays open before it lets one
	// probe attempt through (required, above 0). The probe's success
	// closes the breaker; its failure opens it for another CoolDown.
	CoolDown time.Duration
	// Counts decides whether a failed attempt's error counts as a
	// failure. Default: every error except permanent ones (Permanent,
	// undecodable payloads: the downstream answered, the message is at
	// fault). An attempt cut short by shutdown never counts.
	Counts func(error) bool
	// OnStateChange, if set, is called on every change of state, after
	// it happened. It must not block.
	OnStateChange func(from, to BreakerState)

	now func() time.Time // tests; default time.Now
}

func (c BreakerConfig) validate() error {
	return errors.Join(
		badIf(c.Failures < 0, "BreakerConfig.Failures", c.Failures, "want 0 (default 3) or more"),
		badIf(c.CoolDown <= 0, "BreakerConfig.CoolDown", c.CoolDown, "want above 0: how long to wait before probing the downstream again"))
}

// WithBreaker gives the subscription a circuit breaker (see
// BreakerConfig). After Failures failed handler attempts in a row it
// opens: the subscription stops running its handler for CoolDown, then
// runs one probe attempt, and closes again when the probe succeeds.
//
// An open breaker holds messages, it never fails them: the attempt that
// opened it, every attempt that finds it open and every message that
// arrives meanwhile wait (each delivery's context bounds the wait) and run
// once the breaker lets them, so nothing is retried, dead-lettered or
// acknowledged while the downstream is down, and per-key order is kept.
// The workers wait with them, the in-flight window fills and the
// subscription stops fetching until it recovers. Shutdown ends the waits
// at once; the held messages stay unacknowledged and are delivered again.
//
// The breaker is one per Subscribe call: event types that share a topic
// and group have one each (and share the group's workers). While it is
// not closed the Bus's CheckHealth reports the subscription not ready.
func WithBreaker(cfg BreakerConfig) SubscribeOption {
	return func(o *subscribeOptions) { o.breaker = &cfg }
}

// BreakerState is the state of a circuit breaker.
type BreakerState uint8

const (
	// BreakerClosed: the handler runs.
	BreakerClosed BreakerState = iota
	// BreakerOpen: the handler does not run until the cool-down ends.
	BreakerOpen
	// BreakerHalfOpen: the cool-down is over; one probe attempt runs (or
	// is about to) while the others wait for its outcome.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("BreakerState(%d)", uint8(s))
}

// MarshalText writes the state's name (for JSON health reports).
func (s BreakerState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// BreakerHealth is what CheckHealth reports about one breaker of a
// subscription.
type BreakerHealth struct {
	// Event is the event type of the Subscribe call the breaker belongs
	// to ("" for a Handle of raw messages).
	Event string       `json:"event,omitempty"`
	State BreakerState `json:"state"`
	// Since is when the state began; ProbeAt, while open, when the
	// cool-down ends.
	Since   time.Time `json:"since,omitzero"`
	ProbeAt time.Time `json:"probe_at,omitzero"`
	// Failures is the failed attempts in a row counted so far (closed).
	Failures int `json:"failures"`
	// LastError is the error of the last counted failure.
	LastError string `json:"last_error,omitempty"`
}

// problem is h's entry in a health report, "" when closed.
func (h BreakerHealth) problem(name string) string {
	what := "circuit breaker"
	if h.Event != "" {
		what = fmt.Sprintf("circuit breaker of event %q", h.Event)
	}
	switch h.State {
	case BreakerOpen:
		return fmt.Sprintf("%s: %s open since %s, probing from %s; last error: %s",
			name, what, h.Since.UTC().Format(time.RFC3339), h.ProbeAt.UTC().Format(time.RFC3339), h.LastError)
	case BreakerHalfOpen:
		return fmt.Sprintf("%s: %s half-open: probing; last error: %s", name, what, h.LastError)
	}
	return ""
}

// circuit is the breaker of one subscription: a consecutive-failure
// count, the open state with its cool-down, and the single probe of the
// half-open state. Its closed success path takes no lock.
//
// eapache/go-resiliency's breaker does not fit, for four reasons: it opens
// on a number of errors within a period, not in a row; its half-open state
// lets every caller through, not one probe; it moves from open to
// half-open in a goroutine that sleeps the whole timeout and cannot be
// stopped, which would outlive Shutdown; and it tells nobody of a change,
// so waiting callers would have to poll it.
type circuit struct {
	event    string
	failures int
	coolDown time.Duration
	counts   func(error) bool
	notify   func(ctx context.Context, m *Message, from, to BreakerState, cause error)
	now      func() time.Time
	stop     <-chan struct{} // the scheduler's; set before it starts

	state   atomic.Uint32 // BreakerState, for the lock-free closed path
	failing atomic.Bool   // failed > 0, for the lock-free closed path

	mu      sync.Mutex
	failed  int       // counted failures in a row while closed
	since   time.Time // when the state began
	until   time.Time // open: end of the cool-down
	probing bool      // half-open: a probe attempt runs
	lastErr error
	changed chan struct{} // closed and replaced on every change waiters care about
}

func newCircuit(event string, cfg BreakerConfig, notify func(ctx context.Context, m *Message, from, to BreakerState, cause error)) *circuit {
	if cfg.Failures <= 0 {
		cfg.Failures = 3
	}
	if cfg.Counts == nil {
		cfg.Counts = func(err error) bool { return !IsPermanent(err) }
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	user := cfg.OnStateChange
	return &circuit{
		event:    event,
		failures: cfg.Failures,
		coolDown: cfg.CoolDown,
		counts:   cfg.Counts,
		now:      cfg.now,
		notify: func(ctx context.Context, m *Message, from, to BreakerState, cause error) {
			if notify != nil {
				notify(ctx, m, from, to, cause)
			}
			if user != nil {
				user(from, to)
			}
		},
		changed: make(chan struct{}),
	}
}

// bind makes the circuit's waits end when stop is closed (the scheduler
// starts shutting down). Called before the scheduler starts.
func (c *circuit) bind(stop <-chan struct{}) { c.stop = stop }

// transition changes the state; c.mu held. It returns the notification
// to send once the lock is released.
func (c *circuit) transition(to BreakerState) (from BreakerState) {
	from = BreakerState(c.state.Load())
	c.state.Store(uint32(to))
	c.since = c.now()
	c.failed = 0
	c.failing.Store(false)
	c.probing = false
	if to == BreakerOpen {
		c.until = c.since.Add(c.coolDown)
	}
	c.wake()
	return from
}

// wake tells the waiters something changed; c.mu held.
func (c *circuit) wake() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// admission is what admit decided; probe is true when the caller runs
// the half-open probe and owes its outcome.
type admission struct {
	probe bool
	from  BreakerState // for a probe: the state left (open)
}

// admit waits until the caller may run an attempt: at once while closed;
// while open, until the cool-down ends, when the first caller becomes the
// probe; while a probe runs, until it is settled. take false only waits
// for a state that would admit, without taking the probe (the wait before
// deduplication). It fails when ctx ends or the scheduler stops.
func (c *circuit) admit(ctx context.Context, m *Message, take bool) (admission, error) {
	if BreakerState(c.state.Load()) == BreakerClosed {
		return admission{}, nil
	}
	for {
		c.mu.Lock()
		a, ready, wait, changed := c.tryAdmit(take)
		c.mu.Unlock()
		if ready {
			if a.probe && a.from != BreakerHalfOpen {
				c.notify(ctx, m, a.from, BreakerHalfOpen, nil)
			}
			return a, nil
		}
		if err := c.wait(ctx, wait, changed); err != nil {
			return admission{}, err
		}
	}
}

// tryAdmit is one look at the state for admit; c.mu held. When the
// caller cannot run yet it says how long to wait at most (0: until a
// change) and the channel that announces a change.
func (c *circuit) tryAdmit(take bool) (a admission, ready bool, wait time.Duration, changed <-chan struct{}) {
	switch BreakerState(c.state.Load()) {
	case BreakerClosed:
		return admission{}, true, 0, nil
	case BreakerOpen:
		if left := c.until.Sub(c.now()); left > 0 {
			return admission{}, false, left, c.changed
		}
		if !take {
			return admission{}, true, 0, nil
		}
		c.transition(BreakerHalfOpen)
		c.probing = true
		return admission{probe: true, from: BreakerOpen}, true, 0, nil
	}
	// Half-open.
	if c.probing {
		return admission{}, false, 0, c.changed
	}
	if !take {
		return admission{}, true, 0, nil
	}
	c.probing = true
	return admission{probe: true, from: BreakerHalfOpen}, true, 0, nil
}

// wait sleeps until changed is closed, wait has passed (when above 0), ctx
// ends or the scheduler stops.
func (c *circuit) wait(ctx context.Context, wait time.Duration, changed <-chan struct{}) error {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-changed:
	case <-timeout:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.stop:
		return fmt.Errorf("%w: %w", ErrBreakerOpen, ErrStopping)
	}
	return nil
}

// succeeded records a successful attempt.
func (c *circuit) succeeded(ctx context.Context, m *Message, a admission) {
	if !a.probe {
		if c.failing.Load() {
			c.mu.Lock()
			if BreakerState(c.state.Load()) == BreakerClosed {
				c.failed = 0
				c.failing.Store(false)
			}
			c.mu.Unlock()
		}
		return
	}
	c.mu.Lock()
	from := c.transition(BreakerClosed)
	c.mu.Unlock()
	c.notify(ctx, m, from, BreakerClosed, nil)
}

// abandoned records an attempt that tells nothing of the downstream (an
// error that does not count, a shutdown): a probe's turn passes to the
// next caller.
func (c *circuit) abandoned(a admission) {
	if !a.probe {
		return
	}
	c.mu.Lock()
	c.probing = false
	c.wake()
	c.mu.Unlock()
}

// failedWith records a counted failure and reports whether the breaker is
// now closed (the failure goes on to the retry middleware) or not (the
// message is held).
func (c *circuit) failedWith(ctx context.Context, m *Message, a admission, err error) (closed bool) {
	c.mu.Lock()
	c.lastErr = err
	state := BreakerState(c.state.Load())
	open := a.probe // a failed probe reopens
	if !a.probe && state == BreakerClosed {
		c.failed++
		c.failing.Store(true)
		open = c.failed >= c.failures
	}
	var from BreakerState
	if open {
		from = c.transition(BreakerOpen)
	}
	state = BreakerState(c.state.Load())
	c.mu.Unlock()
	if open {
		c.notify(ctx, m, from, BreakerOpen, err)
	}
	return state == BreakerClosed
}

// health reports the circuit's state at now. An open breaker whose
// cool-down is over is half-open: the next attempt probes.
func (c *circuit) health(now time.Time) BreakerHealth {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := BreakerHealth{Event: c.event, State: BreakerState(c.state.Load()), Since: c.since, Failures: c.failed}
	if c.lastErr != nil {
		h.LastError = c.lastErr.Error()
	}
	if h.State == BreakerOpen {
		h.ProbeAt = c.until
		if !now.Before(c.until) {
			h.State, h.Since, h.ProbeAt = BreakerHalfOpen, c.until, time.Time{}
		}
	}
	return h
}

// gate is the breaker's waiting point before deduplication: a message
// that arrives while the breaker is open waits here, before it takes a
// dedup claim, until the breaker would let it run.
func (c *circuit) gate() Middleware {
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			if _, err := c.admit(ctx, m, false); err != nil {
				return err
			}
			return next(ctx, m)
		}
	}
}

// attempts is the breaker around each attempt, inside retry: it admits
// the attempt, records its outcome, and holds a message whose failure
// opened the breaker or found it open: such a message runs again when the
// breaker next admits it, without spending a retry.
func (c *circuit) attempts() Middleware {
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			for {
				a, err := c.admit(ctx, m, true)
				if err != nil {
					return err
				}
				err = next(ctx, m)
				switch {
				case err == nil:
					c.succeeded(ctx, m, a)
					return nil
				case ctx.Err() != nil || heldBack(err) || !c.counts(err):
					c.abandoned(a)
					return err
				case c.failedWith(ctx, m, a, err):
					return err
				}
			}
		}
	}
}

// heldBack reports whether err is a wait of the breaker or the throttle
// cut short by shutdown: not a failure of the message.
func heldBack(err error) bool { return errors.Is(err, ErrStopping) || errors.Is(err, ErrBreakerOpen) }

// bindStop ends r's breaker and throttle waits when s starts shutting
// down; called before s starts.
func (r *route) bindStop(s *scheduler) {
	for _, c := range r.breakers {
		c.bind(s.stop)
	}
	for _, t := range r.throttles {
		t.bind(s.stop)
	}
}

// breakerHealth reports the breakers of the subscription of topic and
// group.
func (b *Bus) breakerHealth(topic, group string, now time.Time) []BreakerHealth {
	b.mu.Lock()
	r := b.routes[routeKey{topic, group}]
	b.mu.Unlock()
	if r == nil {
		return nil
	}
	var hs []BreakerHealth
	for _, c := range r.breakers {
		hs = append(hs, c.health(now))
	}
	return hs
}

// breakerNotify is what a circuit tells on a change of state: to the
// subscription's observer, which makes it a span event, a counter and a
// log line, in the context of the delivery that caused it.
func breakerNotify(report reporter) func(ctx context.Context, m *Message, from, to BreakerState, cause error) {
	return func(ctx context.Context, m *Message, from, to BreakerState, cause error) {
		report(ctx, event{kind: eventBreaker, msg: m, err: cause, from: from, to: to})
	}
}

// guards are the breaker and the throttle of one handler, and the retry
// settings that go around them.
type guards struct {
	breaker  *circuit
	throttle *tokenBucket
	// retry is the subscription's RetryConfig (nil: no retry); with a
	// breaker or a throttle its AttemptTimeout moves inside them
	// (attemptTimeout), so that it bounds the handler and not the waits.
	retry          *RetryConfig
	attemptTimeout time.Duration
}

func newGuards(r *route, event string, o *subscribeOptions) guards {
	g := guards{retry: o.retry}
	if o.breaker != nil {
		g.breaker = newCircuit(event, *o.breaker, breakerNotify(r.obs.report))
	}
	if o.throttle != nil {
		g.throttle = newTokenBucket(*o.throttle)
	}
	if g.retry != nil && g.retry.AttemptTimeout > 0 && (g.breaker != nil || g.throttle != nil) {
		rc := *g.retry
		g.attemptTimeout, rc.AttemptTimeout = rc.AttemptTimeout, 0
		g.retry = &rc
	}
	return g
}

// gate is the breaker's wait before deduplication (nil: no breaker).
func (g guards) gate() Middleware {
	if g.breaker == nil {
		return nil
	}
	return g.breaker.gate()
}

// perAttempt are the layers around each attempt, inside retry: the
// breaker, the throttle, the attempt timeout.
func (g guards) perAttempt() []Middleware {
	var mws []Middleware
	if g.breaker != nil {
		mws = append(mws, g.breaker.attempts())
	}
	if g.throttle != nil {
		mws = append(mws, g.throttle.middleware())
	}
	if g.attemptTimeout > 0 {
		mws = append(mws, attemptTimeout(g.attemptTimeout))
	}
	return mws
}

// guard keeps g's breaker and throttle with r, for health and shutdown.
func (r *route) guard(g guards) {
	if g.breaker != nil {
		r.breakers = append(r.breakers, g.breaker)
	}
	if g.throttle != nil {
		r.throttles = append(r.throttles, g.throttle)
	}
}

// breakerStateKey is the metric and span attribute of the state a breaker
// entered.
const breakerStateKey = attribute.Key("herald.breaker.state")

// breakerChanged makes a change of a breaker's state a span event on the
// delivery that caused it, a count of herald.breaker.transitions and a
// log line: a warning when it opens, info otherwise.
func (o *observer) breakerChanged(ctx context.Context, span trace.Span, e event, attrs []slog.Attr) {
	if span.IsRecording() {
		kv := []attribute.KeyValue{breakerStateKey.String(e.to.String()), attribute.String("herald.breaker.previous_state", e.from.String())}
		if e.err != nil {
			kv = append(kv, attribute.String("herald.breaker.cause", e.err.Error()))
		}
		span.AddEvent("herald.breaker", trace.WithAttributes(kv...))
	}
	o.tel.countBreaker(ctx, e.to)
	attrs = append(attrs, slog.String("from", e.from.String()), slog.String("to", e.to.String()))
	level := slog.LevelInfo
	if e.to == BreakerOpen {
		level = slog.LevelWarn
		attrs = append(attrs, slog.Any("cause", e.err))
	}
	o.logger.LogAttrs(ctx, level, "herald: circuit breaker "+e.to.String(), attrs...)
}

// countBreaker counts a change of state into to; t may be nil.
func (t *subscriptionTelemetry) countBreaker(ctx context.Context, to BreakerState) {
	if t == nil {
		return
	}
	if in, ok := t.metrics.Get(); ok {
		in.breaker.Add(ctx, 1, t.sets().dst.With(breakerStateKey.String(to.String())).Add...)
	}
}
