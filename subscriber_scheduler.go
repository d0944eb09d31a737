package herald

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald/internal/backoff"
)

// SchedulerConfig configures the scheduler of a subscription
// (WithScheduler): the keyed worker pool that fetches, runs and
// acknowledges its messages (see the package doc). The zero value of every
// field means its default; negative values are errors.
type SchedulerConfig struct {
	// Concurrency is how many handlers run at once (default 1). Messages
	// with one key never run concurrently and run in the order the driver
	// delivered them; messages without a key run on any worker.
	Concurrency int
	// MaxInFlight bounds the deliveries fetched and not yet settled
	// (default 4 x Concurrency, at least 256 and FetchBatch). It is what lets the
	// scheduler find work for idle workers while some keys are busy, and it
	// bounds one Fetch: network drivers read more per round trip with a
	// larger window.
	MaxInFlight int
	// FetchBatch bounds one Fetch call (default min(MaxInFlight, 256)).
	FetchBatch int
	// RedeliveryBackoff and MaxRedeliveryBackoff pace the redelivery of a
	// message whose handler chain returned an error (defaults 100 ms and
	// 10 s, doubling, with jitter). See scheduler.
	RedeliveryBackoff    time.Duration
	MaxRedeliveryBackoff time.Duration
	// OnError receives driver errors and handler errors (as
	// *SubscriptionError). It must not block. Default: drop.
	OnError func(error)
}

func (c SchedulerConfig) withDefaults() SchedulerConfig {
	c.Concurrency = max(c.Concurrency, 1)
	if c.MaxInFlight == 0 {
		c.MaxInFlight = max(4*c.Concurrency, 256, c.FetchBatch)
	}
	if c.FetchBatch == 0 {
		c.FetchBatch = min(c.MaxInFlight, 256)
	}
	if c.RedeliveryBackoff == 0 {
		c.RedeliveryBackoff = 100 * time.Millisecond
	}
	if c.MaxRedeliveryBackoff == 0 {
		c.MaxRedeliveryBackoff = max(10*time.Second, c.RedeliveryBackoff)
	}
	if c.OnError == nil {
		c.OnError = func(error) {}
	}
	return c
}

// validate reports every setting that no default fills: negative values,
// a window smaller than the concurrency or than one fetch, a maximum
// backoff below the first.
func (c SchedulerConfig) validate() error {
	return errors.Join(
		badIf(c.Concurrency < 0, "SchedulerConfig.Concurrency", c.Concurrency, "want 0 (default 1) or more"),
		badIf(c.MaxInFlight < 0, "SchedulerConfig.MaxInFlight", c.MaxInFlight, "want 0 (default) or more"),
		badIf(c.MaxInFlight > 0 && c.MaxInFlight < c.Concurrency, "SchedulerConfig.MaxInFlight", c.MaxInFlight,
			fmt.Sprintf("below Concurrency %d: workers would have nothing to run", c.Concurrency)),
		badIf(c.FetchBatch < 0, "SchedulerConfig.FetchBatch", c.FetchBatch, "want 0 (default) or more"),
		badIf(c.FetchBatch > 0 && c.MaxInFlight > 0 && c.FetchBatch > c.MaxInFlight, "SchedulerConfig.FetchBatch", c.FetchBatch,
			fmt.Sprintf("above MaxInFlight %d", c.MaxInFlight)),
		badIf(c.RedeliveryBackoff < 0, "SchedulerConfig.RedeliveryBackoff", c.RedeliveryBackoff, "want 0 (default) or more"),
		badIf(c.MaxRedeliveryBackoff < 0, "SchedulerConfig.MaxRedeliveryBackoff", c.MaxRedeliveryBackoff, "want 0 (default) or more"),
		badIf(c.MaxRedeliveryBackoff > 0 && c.MaxRedeliveryBackoff < c.RedeliveryBackoff, "SchedulerConfig.MaxRedeliveryBackoff",
			c.MaxRedeliveryBackoff, "below RedeliveryBackoff"))
}

// same reports whether c and o are the same settings (two OnError
// functions count as the same only when both are nil).
func (c SchedulerConfig) same(o SchedulerConfig) bool {
	return c.OnError == nil && o.OnError == nil &&
		c.Concurrency == o.Concurrency && c.MaxInFlight == o.MaxInFlight && c.FetchBatch == o.FetchBatch &&
		c.RedeliveryBackoff == o.RedeliveryBackoff && c.MaxRedeliveryBackoff == o.MaxRedeliveryBackoff
}

// scheduler runs one handler over one consumer-group
// subscription: it fetches deliveries from a Reader, runs them on a pool of
// workers with per-key order, and acknowledges each one after its handler
// returned nil.
//
// Keyed concurrency. A delivery whose key already has a delivery running
// waits behind it; a worker that finishes a message takes the next waiting
// one of the same key. So one slow or failing key holds up only itself.
//
// Redelivery in place. When the handler returns an error the message is
// not acknowledged: the scheduler runs it again after a backoff (doubling
// up to MaxRedeliveryBackoff, with jitter), keeping its key blocked so later
// messages of the key do not overtake it, until it succeeds or the scheduler
// shuts down (then the driver redelivers it to the group). The retry and
// dead-letter middleware decide when to stop trying; without them a message
// that always fails blocks its key, and only its key, and is reported to
// OnError on every failure.
//
// Shutdown stops fetching, lets running handlers finish, abandons fetched
// messages that have not started (the driver redelivers them), and closes
// the subscription.
type scheduler struct {
	reader  Reader
	topic   string
	group   string
	handler HandlerFunc
	cfg     SchedulerConfig

	slots *window // the in-flight slots, one per delivery fetched and not settled
	// serial: one worker runs every delivery, one at a time in the
	// order fetched, which keeps each key's order by itself: dispatch
	// keeps no per-key state (set by Start).
	serial bool
	// inline: serial, and the subscription fetches locally (LocalFetcher):
	// the intake runs each delivery itself, and there is no worker.
	inline bool
	wake   chan struct{} // a delivery became ready; cap = Concurrency; nil when inline

	mu        sync.Mutex
	ready     readyQueue           // deliveries whose key is free
	idle      int                  // workers asleep on wake and not yet woken
	keys      []string             // dispatch's buffer of a fetch's keys (the intake's only)
	active    map[string]*keyQueue // keys with a delivery running; nil value = nothing waiting
	spare     []*keyQueue
	abandoned []Delivery // fetched, never started, dropped by workers while stopping

	started        atomic.Bool
	stopping       atomic.Bool
	stop           chan struct{} // closed when Shutdown starts
	cancelIntake   context.CancelFunc
	handlerCtx     context.Context
	cancelHandlers context.CancelFunc
	ackCtx         context.Context
	sub            Subscription // set by intake before the first delivery
	subMu          sync.Mutex
	workers        sync.WaitGroup // the intake and the workers
	done           chan struct{}
	unwatch        func() bool // stops waiting for Start's ctx
	shutdownOnce   sync.Once
	shutdownErr    error

	health healthState // what intake records for Health

	batch *batchPipeline // nil: one message per handler run (see batch_run.go)
}

// keyQueue holds the deliveries of one key that wait for the running one.
type keyQueue struct {
	items []Delivery
	head  int
}

// newScheduler returns a scheduler for topic and group; Start
// runs it. handler is usually a middleware chain (see Chain).
func newScheduler(r Reader, topic, group string, handler HandlerFunc, cfg SchedulerConfig) (*scheduler, error) {
	if err := errors.Join(ValidateName("topic", topic), ValidateName("group", group)); err != nil {
		return nil, err
	}
	if r == nil || handler == nil {
		return nil, errors.New("herald: scheduler needs a reader and a handler")
	}
	cfg = cfg.withDefaults()
	return &scheduler{
		reader:  r,
		topic:   topic,
		group:   group,
		handler: handler,
		cfg:     cfg,
		slots:   newWindow(cfg.MaxInFlight),
		active:  make(map[string]*keyQueue),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}, nil
}

// Topic returns the topic the scheduler consumes.
func (s *scheduler) Topic() string { return s.topic }

// Group returns the consumer group the scheduler belongs to.
func (s *scheduler) Group() string { return s.group }

// Start subscribes and starts the workers. It makes the first Subscribe
// call itself, so that when it returns the group exists and a message
// published afterwards reaches it; if that call fails, Start reports the
// error to OnError and returns nil while the scheduler keeps retrying in
// the background with backoff, as it does for failing Fetch calls. Cancelling ctx stops the scheduler as a Shutdown whose deadline
// has passed would: handler contexts are cancelled at once. Start may be
// called once.
func (s *scheduler) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("herald: scheduler already started")
	}
	base := context.WithoutCancel(ctx)
	intakeCtx, cancelIntake := context.WithCancel(base)
	s.cancelIntake = cancelIntake
	s.handlerCtx, s.cancelHandlers = context.WithCancel(base)
	s.ackCtx = base
	s.serial = s.batch == nil && s.cfg.Concurrency == 1
	if sub, err := s.reader.Subscribe(ctx, s.topic, s.group); err != nil {
		s.report("subscribe", "", err)
	} else {
		s.adopt(sub)
		lf, ok := sub.(LocalFetcher)
		s.inline = s.serial && ok && lf.FetchesLocally()
	}
	if !s.inline {
		s.wake = make(chan struct{}, s.cfg.Concurrency)
	}
	s.workers.Add(1)
	go s.intake(intakeCtx)
	switch {
	case s.batch != nil:
		s.startBatches()
	case !s.inline:
		s.workers.Add(s.cfg.Concurrency)
		for range s.cfg.Concurrency {
			go s.work()
		}
	}
	// No goroutine waits for ctx: an idle subscription of thousands
	// costs its intake and its workers only.
	s.unwatch = context.AfterFunc(ctx, func() {
		expired, cancel := context.WithCancel(context.Background())
		cancel()
		_ = s.Shutdown(expired)
	})
	return nil
}

// Done is closed when the scheduler has fully stopped.
func (s *scheduler) Done() <-chan struct{} { return s.done }

// Shutdown stops fetching, waits for running handlers to return, and
// closes the subscription, which flushes acknowledgments and hands
// unacknowledged messages back to the group. When ctx ends first, handler
// contexts are cancelled and Shutdown waits for the handlers to return
// (a handler that ignores its context delays it), then returns ctx.Err().
// No goroutine of the scheduler outlives Shutdown. It is safe to call more
// than once; later calls wait for the first and return its result.
func (s *scheduler) Shutdown(ctx context.Context) error {
	if !s.started.Load() {
		return nil
	}
	s.shutdownOnce.Do(func() {
		s.unwatch()
		s.stopping.Store(true)
		close(s.stop)
		s.cancelIntake()
		finished := make(chan struct{})
		go func() {
			s.workers.Wait()
			close(finished)
		}()
		select {
		case <-finished:
		case <-ctx.Done():
			s.cancelHandlers()
			<-finished
			s.shutdownErr = ctx.Err()
		}
		s.cancelHandlers()
		s.subMu.Lock()
		sub := s.sub
		s.subMu.Unlock()
		if r, ok := sub.(Releaser); ok {
			if unstarted := s.unstarted(); len(unstarted) > 0 {
				r.Release(unstarted)
			}
		}
		if sub != nil {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if err := sub.Close(closeCtx); err != nil {
				s.report("close", "", err)
				s.shutdownErr = errors.Join(s.shutdownErr, err)
			}
			cancel()
		}
		close(s.done)
	})
	<-s.done
	return s.shutdownErr
}

// unstarted collects the deliveries that were fetched and never started:
// those still ready, those waiting behind their key, and those the workers
// dropped as they stopped. Called once the workers and the intake are done.
func (s *scheduler) unstarted() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	ds := s.ready.drain(s.abandoned)
	s.abandoned = nil
	for _, q := range s.active {
		if q != nil {
			ds = append(ds, q.items[q.head:]...)
		}
	}
	return ds
}

// adopt makes sub the scheduler's subscription and routes its background
// errors to OnError.
func (s *scheduler) adopt(sub Subscription) {
	if r, ok := sub.(ErrorReporter); ok {
		r.ReportErrorsTo(func(err error) { s.report("background", "", err) })
	}
	s.subMu.Lock()
	s.sub = sub
	s.subMu.Unlock()
}

func (s *scheduler) report(op, msgID string, err error) {
	if op == "subscribe" || op == "fetch" {
		s.health.driverFailed(err)
	}
	s.cfg.OnError(&SubscriptionError{Topic: s.topic, Group: s.group, Op: op, MsgID: msgID, Err: err})
}

// firstFetch is the size of the intake's first fetch buffer.
const firstFetch = 8

// intake subscribes, then fetches as long as there are free slots: it
// takes the free slots (waiting for one if need be), fetches that many
// deliveries at most, hands back the slots it did not use and dispatches
// what came, and backs off after a driver error.
func (s *scheduler) intake(ctx context.Context) {
	defer s.workers.Done()
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	sub, ok := s.subscribe(ctx, &retry)
	if !ok {
		return
	}
	// The buffer starts small and doubles, up to FetchBatch, each time a
	// fetch fills it: an idle subscription (of thousands) holds a few
	// slots, a busy one reaches full batches within a few fetches.
	buf := make([]Delivery, min(firstFetch, s.cfg.FetchBatch))
	var slab ctxSlab // the inline runs' contexts
	for {
		n, ok := s.takeSlots(ctx, len(buf))
		if !ok {
			return
		}
		got, err := sub.Fetch(ctx, buf[:n])
		if s.inline {
			s.runInline(buf[:n], got, &slab)
		} else {
			s.accept(buf[:n], got)
		}
		if got == len(buf) && len(buf) < s.cfg.FetchBatch {
			buf = make([]Delivery, min(2*len(buf), s.cfg.FetchBatch))
		}
		if err == nil {
			s.health.driverOK()
			retry.Reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		s.report("fetch", "", err)
		if !backoff.Sleep(ctx, retry.Next()) {
			return
		}
	}
}

// subscribe returns the subscription Start made, or subscribes until it
// works; ok is false when ctx ended first.
func (s *scheduler) subscribe(ctx context.Context, retry *backoff.Backoff) (sub Subscription, ok bool) {
	defer retry.Reset()
	if s.sub != nil { // set by Start when its Subscribe succeeded
		s.health.driverOK()
		return s.sub, true
	}
	for {
		sub, err := s.reader.Subscribe(ctx, s.topic, s.group)
		if err == nil {
			s.adopt(sub)
			s.health.driverOK()
			return sub, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		s.report("subscribe", "", err)
		if !backoff.Sleep(ctx, retry.Next()) {
			return nil, false
		}
	}
}

// takeSlots takes one slot, waiting while every slot is held by a
// delivery not yet settled (the window is full), then up to most-1 more
// that are free. ok is false when ctx ended while waiting.
func (s *scheduler) takeSlots(ctx context.Context, most int) (n int, ok bool) {
	return s.slots.take(ctx, most, s.health.windowFull)
}

// accept hands back the slots of buf a fetch did not fill and dispatches
// the got deliveries it did.
func (s *scheduler) accept(buf []Delivery, got int) {
	if got < len(buf) {
		s.slots.give(len(buf) - got)
	}
	if got > 0 {
		s.health.fetched()
		s.dispatch(buf[:got])
		clear(buf[:got])
	}
}

// runInline runs the got deliveries of buf one after another on the
// intake's goroutine (inline), giving each one's slot back when it is
// settled and the slots of buf a fetch did not fill at once. Once the
// scheduler stops, what has not started is kept for Release.
func (s *scheduler) runInline(buf []Delivery, got int, slab *ctxSlab) {
	if got < len(buf) {
		s.slots.give(len(buf) - got)
		defer slab.drop() // caught up: keep no handled message alive while Fetch waits
	}
	if got == 0 {
		return
	}
	s.health.fetched()
	for i, d := range buf[:got] {
		if s.stopping.Load() {
			s.abandon(buf[i:got]...)
			s.slots.give(got - i)
			break
		}
		s.health.edge()
		s.runFetched(d, slab)
		s.health.edge()
		s.slots.give(1)
	}
	clear(buf[:got])
}

// runFetched runs d unless the subscription revoked it (Revoker).
func (s *scheduler) runFetched(d Delivery, slab *ctxSlab) {
	if r, isR := s.sub.(Revoker); !isR || !r.Revoked(d) {
		s.run(d, slab)
	}
}

// dispatch queues each delivery behind its key, or makes it ready, and
// wakes as many sleeping workers as deliveries became ready.
func (s *scheduler) dispatch(ds []Delivery) {
	// Read every key first, outside the lock, in a loop of independent
	// loads: each message was just written on a publisher's core, so each
	// read misses the cache, and the processor overlaps misses it can see
	// coming (the map work between them hid the next one).
	keys := s.keys[:0]
	if !s.serial {
		for i := range ds {
			keys = append(keys, ds[i].Message.Key)
		}
	}
	s.mu.Lock()
	ready := 0
	for i, d := range ds {
		if s.serial || keys[i] == "" {
			s.ready.push(d)
			ready++
			continue
		}
		key := keys[i]
		q, busy := s.active[key]
		if !busy {
			s.active[key] = nil
			s.ready.push(d)
			ready++
			continue
		}
		if q == nil {
			q = s.newQueue()
			s.active[key] = q
		}
		q.items = append(q.items, d)
	}
	wake := s.wakeLocked(ready)
	s.mu.Unlock()
	clear(keys)
	s.keys = keys
	s.notify(wake)
}

// makeReady makes d, whose key is now free or still held for it, ready.
func (s *scheduler) makeReady(d Delivery) {
	s.mu.Lock()
	s.ready.push(d)
	wake := s.wakeLocked(1)
	s.mu.Unlock()
	s.notify(wake)
}

// wakeLocked returns how many sleepers to wake now that n more
// deliveries are ready, and counts those workers awake (s.mu held): no
// more than are asleep, so that a burst of small fetches does not send
// tokens nobody waits for (each one a spurious wake-up later). The batch
// collector, the only reader in a batch subscription, gets one.
func (s *scheduler) wakeLocked(n int) int {
	if s.batch != nil {
		return min(n, 1)
	}
	n = min(n, s.idle)
	s.idle -= n
	return n
}

// notify sends n wake tokens. A sleeper registers (s.idle) under the
// mutex after it found the queue empty, so a delivery made ready after
// that finds it counted; the channel holds a token for every worker.
func (s *scheduler) notify(n int) {
	for range n {
		select {
		case s.wake <- struct{}{}:
		default:
			return // every sleeper has a token already
		}
	}
}

func (s *scheduler) newQueue() *keyQueue {
	if n := len(s.spare); n > 0 {
		q := s.spare[n-1]
		s.spare = s.spare[:n-1]
		return q
	}
	return &keyQueue{}
}

// following returns the next waiting delivery of key, or frees the key.
func (s *scheduler) following(key string) (Delivery, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.followingLocked(key)
}

// followingLocked is following with s.mu held. While stopping it frees
// the key and keeps what waited behind it for Release.
func (s *scheduler) followingLocked(key string) (Delivery, bool) {
	q := s.active[key]
	if q == nil || q.head == len(q.items) || s.stopping.Load() {
		if q != nil {
			s.abandoned = append(s.abandoned, q.items[q.head:]...)
		}
		delete(s.active, key)
		if q != nil {
			clear(q.items)
			q.items, q.head = q.items[:0], 0
			s.spare = append(s.spare, q)
		}
		return Delivery{}, false
	}
	d := q.items[q.head]
	q.items[q.head] = Delivery{}
	q.head++
	// A hot key's queue may never drain completely: reuse its front so the
	// backing array stays bounded by MaxInFlight.
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head >= 64 && 2*q.head >= len(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return d, true
}

// abandon records ds, fetched and never started, for Release.
func (s *scheduler) abandon(ds ...Delivery) {
	s.mu.Lock()
	s.abandoned = append(s.abandoned, ds...)
	s.mu.Unlock()
}

func (s *scheduler) work() {
	defer s.workers.Done()
	var slab ctxSlab
	for {
		d, ok := s.take(&slab)
		for ok {
			s.runFetched(d, &slab)
			s.slots.give(1)
			d, ok = s.next(d.Message.Key)
		}
		if s.stopping.Load() {
			return
		}
	}
}

// take returns the first ready delivery, sleeping while there is none;
// ok is false once the scheduler stops (what is still ready stays for
// Release).
func (s *scheduler) take(slab *ctxSlab) (Delivery, bool) {
	for {
		s.mu.Lock()
		if s.stopping.Load() {
			s.mu.Unlock()
			return Delivery{}, false
		}
		d, ok := s.ready.pop()
		if !ok {
			s.idle++ // the next delivery made ready wakes this worker
		}
		s.mu.Unlock()
		if ok {
			return d, true
		}
		slab.drop() // idle: keep no handled message alive
		select {
		case <-s.wake:
		case <-s.stop:
			return Delivery{}, false
		}
	}
}

// next is what a worker that finished a delivery of key runs next
// without sleeping, in one critical section: the key's next waiting
// delivery, else (the key is freed) the first ready one. ok is false when
// there is none, or the scheduler stops.
func (s *scheduler) next(key string) (Delivery, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if key != "" && !s.serial {
		if d, ok := s.followingLocked(key); ok {
			return d, true
		}
	}
	if s.stopping.Load() {
		return Delivery{}, false
	}
	return s.ready.pop()
}

// run handles d until it succeeds (then acknowledges it) or the scheduler
// stops (then abandons it to the driver). Each run's context comes from
// the worker's slab (a deliveryCtx).
func (s *scheduler) run(d Delivery, slab *ctxSlab) {
	count := max(d.Count, 1)
	wait := backoff.New(s.cfg.RedeliveryBackoff, s.cfg.MaxRedeliveryBackoff)
	for {
		err := s.handler(slab.context(s.handlerCtx, s, d, count), d.Message)
		if err == nil {
			if err := s.sub.Ack(s.ackCtx, d); err != nil {
				s.report("ack", d.Message.ID, err)
			}
			return
		}
		if s.stopping.Load() {
			return
		}
		if !errors.Is(err, ErrInProgress) {
			s.report("handle", d.Message.ID, err)
		}
		select {
		case <-time.After(wait.Next()):
		case <-s.stop:
			return
		}
		count++
	}
}

type deliveryCountKey struct{}

// DeliveryCount returns how many times the message being handled has been
// delivered to this group, this delivery included (at least 1). It counts
// the driver's redeliveries and the scheduler's redeliveries in place; the
// retry middleware's attempts within one delivery are counted by Attempt.
func DeliveryCount(ctx context.Context) int {
	if n, ok := ctx.Value(deliveryCountKey{}).(int); ok {
		return n
	}
	return 1
}

// Lag returns how many messages the group has not acknowledged, when the
// subscription's driver knows (see LagReporter); ok is false when it does
// not, or before the scheduler has subscribed.
func (s *scheduler) Lag(ctx context.Context) (n int64, ok bool, err error) {
	s.subMu.Lock()
	sub := s.sub
	s.subMu.Unlock()
	lr, ok := sub.(LagReporter)
	if !ok || s.stopping.Load() {
		return 0, false, nil
	}
	n, err = lr.Lag(ctx)
	if err != nil {
		return 0, false, &SubscriptionError{Topic: s.topic, Group: s.group, Op: "lag", Err: err}
	}
	return n, true, nil
}
