package herald

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"

	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/internal/parallel"
)

// ErrDuplicateHandler is returned when a group subscribes twice to one
// event type (or twice to one topic's raw messages).
var ErrDuplicateHandler = errors.New("herald: handler already subscribed")

// Bus is the user side of herald: an event registry, a Publisher and one
// scheduler per (topic, group) behind a small API. It is safe for
// concurrent use. The Bus does not close the driver it was given.
type Bus struct {
	driver Driver
	opts   busOptions
	reg    *EventRegistry
	pub    *Publisher
	tel    *consumerTelemetry // nil: telemetry off

	mu      sync.Mutex
	routes  map[routeKey]*route
	order   []*route
	started bool
	closed  bool
	runCtx  context.Context
}

type routeKey struct{ topic, group string }

// route is one consumer-group subscription to one topic, shared by every
// handler that group has for the event types on that topic.
type route struct {
	topic, group string
	handlers     map[string]HandlerFunc // by event name; read-only once running
	raw          HandlerFunc            // all messages of the topic, if set
	cfg          SchedulerConfig
	schedSet     bool // cfg came from WithScheduler
	sched        *scheduler
	obs          *observer
	breakers     []*circuit     // WithBreaker, one per handler
	throttles    []*tokenBucket // WithThrottle, one per handler
	batch        *batchPipeline // a batch handler's, which takes the route alone (batch.go)
}

// NewBus returns a Bus that publishes to and subscribes through d. It
// fails with ErrNilDriver when d is nil.
func NewBus(d Driver, opts ...Option) (*Bus, error) {
	if isNil(d) {
		return nil, fmt.Errorf("herald: NewBus: %w", ErrNilDriver)
	}
	o, err := newBusOptions(opts)
	if err != nil {
		return nil, err
	}
	reg := newEventRegistry(o.pub.naming)
	w := Writer(d)
	switch {
	case o.publishWriter != nil:
		w = o.publishWriter
	case o.outbox != nil:
		w = outboxOrDriver{outbox: o.outbox, driver: d}
	}
	b := &Bus{
		driver: d,
		opts:   o,
		reg:    reg,
		pub:    newPublisher(w, reg, o.pub),
		routes: make(map[routeKey]*route),
	}
	b.tel = newConsumerTelemetry(o.pub.telemetry, d, b.schedulers)
	return b, nil
}

// outboxOrDriver is the Bus's writer under WithOutbox: the outbox when
// the context carries a transaction it writes in, the driver otherwise.
type outboxOrDriver struct {
	outbox TransactionalWriter
	driver Writer
}

func (w outboxOrDriver) Write(ctx context.Context, msgs []*Message) error {
	if w.outbox.InTransaction(ctx) {
		return w.outbox.Write(ctx, msgs)
	}
	return w.driver.Write(ctx, msgs)
}

// MessagingSystem names the driver's system: where the messages end up,
// through the outbox's relay or at once.
func (w outboxOrDriver) MessagingSystem() string {
	if s, ok := w.driver.(MessagingSystem); ok {
		return s.MessagingSystem()
	}
	return "herald"
}

// isNil reports whether v is nil or a nil pointer, map, func or channel in
// an interface.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Func, reflect.Chan, reflect.Slice, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

// schedulers returns the running subscriptions' schedulers.
func (b *Bus) schedulers() []*scheduler {
	b.mu.Lock()
	defer b.mu.Unlock()
	var scheds []*scheduler
	for _, r := range b.order {
		if r.sched != nil {
			scheds = append(scheds, r.sched)
		}
	}
	return scheds
}

// Registry returns the bus's event registry.
func (b *Bus) Registry() *EventRegistry { return b.reg }

// Publisher returns the bus's publisher (for NewAsyncPublisher, Encode).
func (b *Bus) Publisher() *Publisher { return b.pub }

// Publish encodes events and writes them in one driver Write (see
// Publisher.Publish).
func (b *Bus) Publish(ctx context.Context, events ...any) error {
	return b.pub.Publish(ctx, events...)
}

// PublishMessages writes ready-made messages (see Publisher.PublishMessages).
func (b *Bus) PublishMessages(ctx context.Context, msgs ...*Message) error {
	return b.pub.PublishMessages(ctx, msgs...)
}

// SubscribeOption configures one subscription.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	retry          *RetryConfig
	retryLater     *RetryLaterConfig
	dedup          *DedupConfig
	deadLetter     *DeadLetterConfig
	middleware     []Middleware
	concurrency    int
	concurrencySet bool
	sched          SchedulerConfig
	schedSet       bool
	breaker        *BreakerConfig
	throttle       *throttleConfig
	guards         guards        // made by Bus.chain from breaker and throttle
	batch          *batchOptions // WithBatch
	table          groupTable    // WithTable
	tableErr       error         // a bad WithTable
}

// validate reports every bad setting of one Subscribe call.
func (o *subscribeOptions) validate() error {
	var errs []error
	if o.retry != nil {
		errs = append(errs, o.retry.validate())
	}
	if o.retryLater != nil {
		errs = append(errs, o.retryLater.validate())
	}
	if o.dedup != nil {
		errs = append(errs, o.dedup.validate())
	}
	if o.deadLetter != nil {
		errs = append(errs, o.deadLetter.validate())
	}
	if o.breaker != nil {
		errs = append(errs, o.breaker.validate())
	}
	if o.throttle != nil {
		errs = append(errs, o.throttle.validate())
	}
	errs = append(errs, o.tableErr)
	if o.concurrencySet {
		errs = append(errs, badIf(o.concurrency < 1, "WithConcurrency", o.concurrency, "want 1 or more"))
	}
	if o.schedSet {
		errs = append(errs, o.sched.validate(),
			badIf(o.concurrencySet && o.sched.Concurrency != 0 && o.sched.Concurrency != o.concurrency,
				"WithConcurrency", o.concurrency, fmt.Sprintf("given with WithScheduler, whose Concurrency is %d", o.sched.Concurrency)))
	}
	return errors.Join(errs...)
}

// WithRetry retries a failing handler within one delivery (see RetryConfig).
func WithRetry(cfg RetryConfig) SubscribeOption {
	return func(o *subscribeOptions) { o.retry = &cfg }
}

// WithDedup skips messages this group has already processed, keeping the
// processed set in s (see DedupConfig; default lease and window).
func WithDedup(s dedup.Storage) SubscribeOption {
	return WithDedupConfig(DedupConfig{Storage: s})
}

// WithDedupConfig is WithDedup with settings.
func WithDedupConfig(cfg DedupConfig) SubscribeOption {
	return func(o *subscribeOptions) { o.dedup = &cfg }
}

// WithDeadLetter sends messages the handler gave up on to topic + ".dlq"
// through the bus's driver (see DeadLetterConfig).
func WithDeadLetter() SubscribeOption { return WithDeadLetterConfig(DeadLetterConfig{}) }

// WithDeadLetterConfig is WithDeadLetter with settings.
func WithDeadLetterConfig(cfg DeadLetterConfig) SubscribeOption {
	return func(o *subscribeOptions) { o.deadLetter = &cfg }
}

// WithMiddleware adds user middleware inside the built-in ones: it runs
// once per attempt, under Recover (see the order in middleware.go).
func WithMiddleware(mws ...Middleware) SubscribeOption {
	return func(o *subscribeOptions) { o.middleware = append(o.middleware, mws...) }
}

// WithConcurrency runs up to n handlers of the subscription at once, with
// per-key order kept (default 1). Handlers of several event types on one
// topic and group share one pool; the largest n given wins.
func WithConcurrency(n int) SubscribeOption {
	return func(o *subscribeOptions) { o.concurrency, o.concurrencySet = n, true }
}

// WithScheduler sets every scheduler setting of the subscription's (topic,
// group) pool at once (see SchedulerConfig); OnError defaults to the bus's
// error handler. Handlers of several event types on one topic and group
// share the pool: a second Subscribe of that topic and group that gives
// other settings is an error, as is a WithConcurrency that disagrees with
// the config's Concurrency.
func WithScheduler(cfg SchedulerConfig) SubscribeOption {
	return func(o *subscribeOptions) { o.sched, o.schedSet = cfg, true }
}

// Subscribe runs h for every event of type E published to E's topic, as a
// member of group. Messages of other event types on a shared topic are
// acknowledged for this group without running h. The handler receives the
// decoded value; a payload that cannot be decoded goes to the dead-letter
// topic with the reason (even without WithDeadLetter). Subscribing after
// Start starts the subscription at once, unless its (topic, group) is
// already consuming (ErrSubscriptionRunning).
func Subscribe[E any](b *Bus, group string, h func(ctx context.Context, e E, m *Message) error, opts ...SubscribeOption) error {
	if h == nil {
		return fmt.Errorf("herald: subscribe group %q: %w", group, ErrNilHandler)
	}
	et, err := b.reg.Lookup(reflect.TypeFor[E]())
	if err != nil {
		return err
	}
	return b.add(et.Topic, group, et.Name, decodeHandler(b.pub, et, h), opts)
}

// Handle runs h for every message published to topic, as a member of
// group, whatever its event type: for raw messages and foreign producers.
// A topic and group with a raw handler take no typed handler.
func (b *Bus) Handle(topic, group string, h HandlerFunc, opts ...SubscribeOption) error {
	return b.add(topic, group, "", h, opts)
}

// decodeHandler decodes each message for h with the codec of its content
// type: the one p encodes et with (codecFor) when it matches, else the
// one p knows for it.
func decodeHandler[E any](p *Publisher, et *EventType, h func(context.Context, E, *Message) error) HandlerFunc {
	decode := decoder[E](p, et)
	return func(ctx context.Context, m *Message) error {
		e, err := decode(m)
		if err != nil {
			return err
		}
		return h(ctx, e, m)
	}
}

// decoder decodes a message as E (see decodeHandler); its error is a
// *DecodeError.
func decoder[E any](p *Publisher, et *EventType) func(m *Message) (E, error) {
	preferred := p.codecFor(et)
	return func(m *Message) (E, error) {
		var e E
		c := preferred
		if m.ContentType != c.ContentType() {
			var err error
			if c, err = p.codecs.Lookup(m.ContentType); err != nil {
				return e, &DecodeError{Topic: m.Topic, MessageID: m.ID, Event: m.Event(), ContentType: m.ContentType, Err: err}
			}
		}
		if err := c.Unmarshal(m.Data, &e); err != nil {
			return e, &DecodeError{Topic: m.Topic, MessageID: m.ID, Event: m.Event(), ContentType: m.ContentType, Err: err}
		}
		return e, nil
	}
}

func (b *Bus) add(topic, group, event string, h HandlerFunc, opts []SubscribeOption) error {
	if h == nil {
		return fmt.Errorf("herald: handle topic %q group %q: %w", topic, group, ErrNilHandler)
	}
	o, err := subscribeOptionsOf(topic, group, opts)
	if err != nil {
		return err
	}
	if o.batch != nil {
		return &OptionError{Option: "WithBatch", Value: o.batch.size, Reason: "only for SubscribeBatch and HandleBatch"}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	r, err := b.routeFor(topic, group)
	if err != nil {
		return err
	}
	if o.table != nil {
		if err := o.table.bind(r, b.driver); err != nil {
			return err
		}
		h = o.table.wrap(h)
	}
	chain, err := b.chain(r, event, h, o)
	if err != nil {
		return err
	}
	if err := r.add(event, chain, o); err != nil {
		return err
	}
	r.guard(o.guards)
	if b.routes[routeKey{topic, group}] == nil {
		b.routes[routeKey{topic, group}] = r
		b.order = append(b.order, r)
	}
	if b.started {
		return b.startRoute(r)
	}
	return nil
}

// subscribeOptionsOf checks the names of a Subscribe, Handle or batch
// call and applies its options.
func subscribeOptionsOf(topic, group string, opts []SubscribeOption) (*subscribeOptions, error) {
	if err := errors.Join(ValidateName("topic", topic), ValidateName("group", group)); err != nil {
		return nil, err
	}
	var o subscribeOptions
	for _, opt := range opts {
		if opt == nil {
			return nil, &OptionError{Option: "SubscribeOption", Value: nil, Reason: "nil option"}
		}
		opt(&o)
	}
	return &o, o.validate()
}

// routeFor returns the route of (topic, group), or a new one not yet
// registered; b.mu held. A route already consuming takes no handler.
func (b *Bus) routeFor(topic, group string) (*route, error) {
	if r := b.routes[routeKey{topic, group}]; r != nil {
		if r.sched != nil {
			return nil, fmt.Errorf("%w: topic %q group %q", ErrSubscriptionRunning, topic, group)
		}
		return r, nil
	}
	var tel *subscriptionTelemetry
	if b.tel != nil {
		tel = b.tel.subscription(topic, group)
	}
	return &route{
		topic: topic, group: group,
		handlers: make(map[string]HandlerFunc),
		obs:      newObserver(topic, group, b.opts.logger, b.opts.onHandled, tel),
	}, nil
}

// add gives r the handler chain of event ("" for a raw handler) and the
// subscription's scheduler settings. It changes nothing when it fails.
func (r *route) add(event string, chain HandlerFunc, o *subscribeOptions) error {
	switch {
	case r.batch != nil:
		return fmt.Errorf("%w: topic %q group %q has a batch handler, which takes the topic and group alone", ErrDuplicateHandler, r.topic, r.group)
	case event == "" && (r.raw != nil || len(r.handlers) > 0),
		event != "" && r.raw != nil:
		return fmt.Errorf("%w: topic %q group %q mixes raw and typed handlers or has two raw ones", ErrDuplicateHandler, r.topic, r.group)
	case event != "" && r.handlers[event] != nil:
		return fmt.Errorf("%w: event %q group %q", ErrDuplicateHandler, event, r.group)
	case o.schedSet && r.schedSet && !r.cfg.same(o.sched):
		return &OptionError{Option: "WithScheduler", Value: o.sched,
			Reason: fmt.Sprintf("topic %q group %q has other scheduler settings from an earlier Subscribe; its handlers share one scheduler", r.topic, r.group)}
	}
	if event == "" {
		r.raw = chain
	} else {
		r.handlers[event] = chain
	}
	if o.schedSet {
		r.cfg, r.schedSet = o.sched, true
	}
	r.cfg.Concurrency = max(r.cfg.Concurrency, o.concurrency)
	return nil
}

// chain wraps h in the middleware that run inside the route's dispatch,
// in the canonical order (see "Middleware order" in the package doc); the
// route's observer is outermost, around the dispatch (routeHandler).
func (b *Bus) chain(r *route, event string, h HandlerFunc, o *subscribeOptions) (HandlerFunc, error) {
	dl, err := b.deadLetterSettings(r, o)
	if err != nil {
		return nil, err
	}
	var later Middleware
	if o.retryLater != nil {
		s, err := b.retryLaterSettings(r, o)
		if err != nil {
			return nil, err
		}
		later = retryLater(s)
	}
	o.guards = newGuards(r, event, o)
	mws := []Middleware{o.guards.gate()}
	if o.dedup != nil {
		mws = append(mws, deduplicate(b.dedupConfig(*o.dedup), r.group, r.obs.report))
	}
	mws = append(mws, deadLetter(dl), later)
	if rc := o.guards.retry; rc != nil {
		mws = append(mws, retry(*rc, r.obs.report))
	}
	mws = append(mws, o.guards.perAttempt()...)
	mws = append(mws, recoverPanics())
	mws = append(mws, o.middleware...)
	return Chain(h, mws...), nil
}

// dedupConfig is cfg with the Bus's defaults.
func (b *Bus) dedupConfig(cfg DedupConfig) DedupConfig {
	if cfg.OnError == nil {
		cfg.OnError = b.opts.onError
	}
	return cfg
}

// deadLetterSettings is the dead-letter middleware's configuration for a
// handler of r: the subscription's, or without WithDeadLetter one that
// takes only undecodable payloads; the driver writes by default.
func (b *Bus) deadLetterSettings(r *route, o *subscribeOptions) (deadLetterSettings, error) {
	dl := deadLetterSettings{group: r.group, onlyUndecodable: true, report: r.obs.report}
	if o.deadLetter != nil {
		dl.DeadLetterConfig, dl.onlyUndecodable = *o.deadLetter, false
	}
	if dl.Writer == nil {
		dl.Writer = b.driver
	}
	topic := DeadLetterTopic(r.topic)
	if dl.Topic != nil {
		topic = dl.Topic(r.topic)
	}
	return dl, ValidateName("dead-letter topic", topic)
}

// routeHandler is what r's scheduler runs: the observer around
// r.dispatch, outermost in the canonical order, so that it sees every
// delivery, skipped ones included.
func (b *Bus) routeHandler(r *route) HandlerFunc {
	h := r.obs.middleware()(r.dispatch)
	return func(ctx context.Context, m *Message) error {
		// ctx is the scheduler's deliveryCtx: it carries m.
		if err := h(ctx, m); err != errSkipped {
			return err
		}
		return nil
	}
}

// Start starts every subscription in the background and returns. Later
// Subscribe calls start their subscription at once. Cancelling ctx stops
// the subscribers abruptly (handler contexts are cancelled); Shutdown is
// the graceful way.
func (b *Bus) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return ErrClosed
	case b.started:
		return errors.New("herald: bus already started")
	}
	b.started, b.runCtx = true, ctx
	for _, r := range b.order {
		if err := b.startRoute(r); err != nil {
			return err
		}
	}
	return nil
}

// startRoute runs r's scheduler; b.mu held.
func (b *Bus) startRoute(r *route) error {
	cfg := r.cfg
	if cfg.OnError == nil {
		cfg.OnError = b.opts.onError
	}
	if r.batch != nil {
		cfg = batchSchedulerConfig(cfg, r.batch)
	}
	s, err := newScheduler(b.driver, r.topic, r.group, b.routeHandler(r), cfg)
	if err != nil {
		return err
	}
	s.batch = r.batch
	r.sched = s
	r.bindStop(s)
	// The handler contexts derive from this one: they carry the route's
	// reporter for ReportDuplicate.
	return s.Start(context.WithValue(b.runCtx, reporterKey{}, reporter(r.obs.report)))
}

// errSkipped is what dispatch returns for a message the group does not
// handle; the route's outer layers count it as skipped and acknowledge it.
var errSkipped = errors.New("herald: skipped")

// dispatch runs the handler of m's event type. A message of an event type
// the group has no handler for (another type on a shared topic) is
// skipped, as is a redriven message or a retry copy addressed to another
// group (HeaderRedriveGroup, HeaderRetryGroup: forOtherGroup): both are
// acknowledged without running anything.
func (r *route) dispatch(ctx context.Context, m *Message) error {
	if forOtherGroup(m, r.group) {
		return errSkipped
	}
	if r.raw != nil {
		return r.raw(ctx, m)
	}
	if h := r.handlers[m.Event()]; h != nil {
		return h(ctx, m)
	}
	if len(r.handlers) == 1 && m.Event() == "" {
		// A foreign producer that sets no event name: a group with one
		// event type on the topic takes it as that type.
		for _, h := range r.handlers {
			return h(ctx, m)
		}
	}
	return errSkipped
}

// Shutdown stops every subscription gracefully (see
// scheduler.Shutdown), all at once, bounded by ctx. Publishing
// still works afterwards; subscribing does not.
func (b *Bus) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	if b.tel != nil {
		b.tel.metrics.Close()
	}
	return parallel.Each(b.schedulers(), func(s *scheduler) error { return s.Shutdown(ctx) })
}
