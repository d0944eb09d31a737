package herald

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// HealthStatus is one component's answer to a readiness check.
type HealthStatus struct {
	// Name names the component ("bus", "outbox relay orders_outbox").
	Name string `json:"name"`
	// Ready is true when the component runs and keeps up.
	Ready bool `json:"ready"`
	// Problems say why it is not ready (empty when Ready).
	Problems []string `json:"problems,omitempty"`
	// Details are the figures the verdict was made from.
	Details any `json:"details,omitempty"`
}

// HealthChecker is a component that can tell whether it is ready: a Bus,
// an outbox Relay, or anything of the application's own.
type HealthChecker interface {
	CheckHealth(ctx context.Context) HealthStatus
}

// HealthConfig sets when a Bus's subscriptions count as not keeping up
// (see WithHealth). The zero value of a field means its default.
type HealthConfig struct {
	// MaxDriverErrors is how many Subscribe or Fetch calls in a row may
	// fail before a subscription is not ready (default 3). Errors older
	// than ErrorWindow do not count, so a recovered, idle subscription is
	// ready again.
	MaxDriverErrors int
	// ErrorWindow (default 30 s): see MaxDriverErrors.
	ErrorWindow time.Duration
	// StallAfter is how long a subscription's in-flight window may stay
	// full before it counts as stalled: every slot held by a delivery
	// whose handler has not finished (or keeps failing), so nothing new is
	// fetched (default 5 min). A subscription that runs its deliveries on
	// the goroutine that fetches them (see LocalFetcher) has no window to
	// fill: it counts as stalled when one handler has run (or kept
	// failing) for StallAfter, since nothing else of it moves meanwhile.
	StallAfter time.Duration
	// MaxLag, when above 0, makes a subscription whose driver reports a
	// lag above it not ready (see LagReporter). Checking costs what the
	// driver's Lag costs (Redis: one round trip per subscription).
	MaxLag int64
}

func (c HealthConfig) withDefaults() HealthConfig {
	if c.MaxDriverErrors <= 0 {
		c.MaxDriverErrors = 3
	}
	if c.ErrorWindow <= 0 {
		c.ErrorWindow = 30 * time.Second
	}
	if c.StallAfter <= 0 {
		c.StallAfter = 5 * time.Minute
	}
	return c
}

// validate reports every negative field.
func (c HealthConfig) validate() error {
	return errors.Join(
		badIf(c.MaxDriverErrors < 0, "HealthConfig.MaxDriverErrors", c.MaxDriverErrors, "want 0 (default) or more"),
		badIf(c.ErrorWindow < 0, "HealthConfig.ErrorWindow", c.ErrorWindow, "want 0 (default) or more"),
		badIf(c.StallAfter < 0, "HealthConfig.StallAfter", c.StallAfter, "want 0 (default) or more"),
		badIf(c.MaxLag < 0, "HealthConfig.MaxLag", c.MaxLag, "want 0 (no limit) or more"))
}

// WithHealth sets the limits of Bus.CheckHealth.
func WithHealth(cfg HealthConfig) Option { return busOption(func(o *busOptions) { o.health = cfg }) }

// SubscriptionHealth is what a scheduler reports about itself.
type SubscriptionHealth struct {
	Topic string `json:"topic"`
	Group string `json:"group"`
	// Running is true between Start and Shutdown.
	Running bool `json:"running"`
	// Subscribed is true once the driver's Subscribe succeeded.
	Subscribed bool `json:"subscribed"`
	// WindowFullSince is when every one of the MaxInFlight slots became
	// held by a delivery not yet settled, so that nothing more can be
	// fetched; zero while a slot is free.
	WindowFullSince time.Time `json:"window_full_since,omitzero"`
	MaxInFlight     int       `json:"max_in_flight"`
	// HandlerRunningSince, for a subscription that runs its deliveries on
	// the goroutine that fetches them (see LocalFetcher), is since when
	// its handler has been running one delivery, as health checks saw it:
	// the first check that found this delivery running (so up to one
	// check interval late); zero while none runs, and when every check
	// found another.
	HandlerRunningSince time.Time `json:"handler_running_since,omitzero"`
	// DriverErrors counts Subscribe and Fetch failures in a row;
	// LastError is the last one and LastErrorAt when it happened.
	DriverErrors int       `json:"driver_errors"`
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	// LastFetch is when Fetch last returned deliveries.
	LastFetch time.Time `json:"last_fetch,omitzero"`
	// Lag is the driver's lag (see LagReporter), when checked and known.
	Lag      int64 `json:"lag"`
	LagKnown bool  `json:"lag_known"`
	// Breakers are the subscription's circuit breakers (WithBreaker),
	// one per Subscribe call that has one. One that is not closed makes
	// the subscription not ready.
	Breakers []BreakerHealth `json:"breakers,omitempty"`
}

// healthState is what a scheduler's intake records for its health
// report, as it happens: driver failures in a row and the last one, when
// a fetch last brought deliveries, since when the in-flight window has
// been full. It is safe for concurrent use; the zero value is ready.
type healthState struct {
	driverErrors atomic.Int32
	lastError    atomic.Pointer[string]
	lastErrorAt  atomic.Int64 // unix ns
	lastFetch    atomic.Int64 // unix ns; 0: never
	fullSince    atomic.Int64 // unix ns since every slot is taken; 0: not full

	// runs counts an inline delivery's start and its end: odd while one
	// runs. The checks' last sight of it (under mu) dates a run that
	// lasts.
	runs   atomic.Uint64
	mu     sync.Mutex
	seen   uint64
	seenAt time.Time
}

// edge records that an inline delivery starts, or that it ended.
func (h *healthState) edge() { h.runs.Add(1) }

// runningSince is since when the inline delivery running now has been
// running, as far as the checks saw it (zero when none runs).
func (h *healthState) runningSince(now time.Time) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.runs.Load()
	if r%2 == 0 {
		return time.Time{}
	}
	if r != h.seen {
		h.seen, h.seenAt = r, now
	}
	return h.seenAt
}

// driverFailed records a failed Subscribe or Fetch.
func (h *healthState) driverFailed(err error) {
	h.driverErrors.Add(1)
	text := err.Error()
	h.lastError.Store(&text)
	h.lastErrorAt.Store(time.Now().UnixNano())
}

// driverOK records a Subscribe or Fetch that worked: the failures in a
// row are over (the last error stays on record).
func (h *healthState) driverOK() {
	if h.driverErrors.Load() != 0 {
		h.driverErrors.Store(0)
	}
}

// fetched records a fetch that brought deliveries.
func (h *healthState) fetched() { h.lastFetch.Store(time.Now().UnixNano()) }

// windowFull records that every in-flight slot is taken (full) or that
// one came free.
func (h *healthState) windowFull(full bool) {
	if full {
		h.fullSince.Store(time.Now().UnixNano())
	} else {
		h.fullSince.Store(0)
	}
}

// fill copies the recorded state into r.
func (h *healthState) fill(r *SubscriptionHealth) {
	r.DriverErrors = int(h.driverErrors.Load())
	r.HandlerRunningSince = h.runningSince(time.Now())
	if ns := h.fullSince.Load(); ns != 0 {
		r.WindowFullSince = time.Unix(0, ns)
	}
	if e := h.lastError.Load(); e != nil {
		r.LastError = *e
		r.LastErrorAt = time.Unix(0, h.lastErrorAt.Load())
	}
	if ns := h.lastFetch.Load(); ns != 0 {
		r.LastFetch = time.Unix(0, ns)
	}
}

// Health reports the scheduler's state; it makes no call to the driver.
func (s *scheduler) Health() SubscriptionHealth {
	s.subMu.Lock()
	subscribed := s.sub != nil
	s.subMu.Unlock()
	h := SubscriptionHealth{
		Topic:       s.topic,
		Group:       s.group,
		Running:     s.started.Load() && !s.stopping.Load(),
		Subscribed:  subscribed,
		MaxInFlight: s.cfg.MaxInFlight,
	}
	s.health.fill(&h)
	return h
}

// problems judges h by cfg at now.
func (h SubscriptionHealth) problems(cfg HealthConfig, now time.Time) []string {
	var ps []string
	name := fmt.Sprintf("topic %q group %q", h.Topic, h.Group)
	switch {
	case !h.Running:
		ps = append(ps, name+": not running")
	case !h.Subscribed:
		ps = append(ps, fmt.Sprintf("%s: not subscribed: %s", name, h.LastError))
	}
	if h.DriverErrors >= cfg.MaxDriverErrors && now.Sub(h.LastErrorAt) < cfg.ErrorWindow {
		ps = append(ps, fmt.Sprintf("%s: %d driver errors in a row, last: %s", name, h.DriverErrors, h.LastError))
	}
	if h.Running && !h.WindowFullSince.IsZero() && now.Sub(h.WindowFullSince) > cfg.StallAfter {
		ps = append(ps, fmt.Sprintf("%s: stalled: all %d in-flight slots held by unfinished handlers for over %v", name, h.MaxInFlight, cfg.StallAfter))
	}
	if h.Running && !h.HandlerRunningSince.IsZero() && now.Sub(h.HandlerRunningSince) > cfg.StallAfter {
		ps = append(ps, fmt.Sprintf("%s: stalled: one delivery's handler running (or failing) for over %v", name, cfg.StallAfter))
	}
	if cfg.MaxLag > 0 && h.LagKnown && h.Lag > cfg.MaxLag {
		ps = append(ps, fmt.Sprintf("%s: lag %d above %d", name, h.Lag, cfg.MaxLag))
	}
	for _, br := range h.Breakers {
		if p := br.problem(name); p != "" {
			ps = append(ps, p)
		}
	}
	return ps
}

// BusHealth is the Details of a Bus's HealthStatus.
type BusHealth struct {
	Started       bool                 `json:"started"`
	Subscriptions []SubscriptionHealth `json:"subscriptions"`
}

// CheckHealth reports whether the bus is started and every subscription
// runs and keeps up, by the limits of WithHealth. A bus without
// subscriptions is ready once started. It is meant for a readiness probe
// (see HealthHandler).
func (b *Bus) CheckHealth(ctx context.Context) HealthStatus {
	cfg := b.opts.health.withDefaults()
	b.mu.Lock()
	started, closed := b.started, b.closed
	b.mu.Unlock()
	st := HealthStatus{Name: "bus"}
	details := BusHealth{Started: started && !closed}
	switch {
	case closed:
		st.Problems = append(st.Problems, "bus shut down")
	case !started:
		st.Problems = append(st.Problems, "bus not started")
	}
	now := time.Now()
	for _, s := range b.schedulers() {
		h := s.Health()
		h.Breakers = b.breakerHealth(h.Topic, h.Group, now)
		if cfg.MaxLag > 0 {
			n, ok, err := s.Lag(ctx)
			switch {
			case err != nil:
				st.Problems = append(st.Problems, err.Error())
			case ok:
				h.Lag, h.LagKnown = n, true
			}
		}
		st.Problems = append(st.Problems, h.problems(cfg, now)...)
		details.Subscriptions = append(details.Subscriptions, h)
	}
	st.Ready = len(st.Problems) == 0
	st.Details = details
	return st
}

// HealthHandler serves a readiness probe over checkers: every GET runs
// them all at once (bounded by the request's context) and answers 200 when
// all are ready and 503 otherwise, with a JSON body:
// {"ready": bool, "checks": [HealthStatus...]}.
func HealthHandler(checkers ...HealthChecker) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		statuses := make([]HealthStatus, len(checkers))
		var wg sync.WaitGroup
		for i, c := range checkers {
			wg.Go(func() { statuses[i] = c.CheckHealth(r.Context()) })
		}
		wg.Wait()
		ready := true
		for _, s := range statuses {
			ready = ready && s.Ready
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(struct {
			Ready  bool           `json:"ready"`
			Checks []HealthStatus `json:"checks"`
		}{ready, statuses})
	})
}
