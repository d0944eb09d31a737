package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// config is the shape of every run, from the command-line flags.
type config struct {
	messages        int           // messages per run (-n)
	runs            int           // runs per case (-runs)
	publishers      int           // publishing goroutines (-publishers)
	payloadBytes    int           // payload size (-payload)
	batch           int           // messages per call in the batched rows (-batch)
	keys            int           // distinct keys in the keyed rows (-keys)
	concurrency     int           // herald handler concurrency of the parallel rows (-concurrency)
	unboundedMax    int           // message cap of configurations without backpressure (-unbounded-max)
	sampleEvery     time.Duration // memory sampling period (-sample)
	runTimeout      time.Duration // liveness bound of one run (-timeout)
	shutdownTimeout time.Duration // bound of one teardown
	isolate         bool          // every run in a fresh child process (-isolate)
	redisAddr       string        // Redis of the redis scenario (HERALD_REDIS_ADDR)
	redisPrefix     string        // key prefix of every stream the redis scenario creates (-redis-prefix)
	kafkaBrokers    []string      // cluster of the kafka scenario (-kafka-brokers, HERALD_KAFKA_BROKERS)
	kafkaLocal      bool          // kafkaBrokers is the in-process kfake cluster this process started
	postgresDSN     string        // PostgreSQL of the outbox and sqldriver scenarios (HERALD_POSTGRES_DSN)
	sqlBacklogs     []sqlBacklog  // backlogs of the sqldriver scenario's consume tables (-sql-backlogs)
	sqlIdle         time.Duration // idle window of the sqldriver scenario's latency rows (-sql-idle; 0: not measured)
	sqlMembers      int           // members of the sqldriver scenario's scale-out row (-sql-members)
	sqlSQLiteRows   int           // backlog of the sqldriver scenario's SQLite consume row (-sql-sqlite-backlog)
	natsURL         string        // NATS server of the nats scenario (HERALD_NATS_URL)
	amqpURL         string        // RabbitMQ broker of the rabbitmq scenario (HERALD_AMQP_URL)
	runToken        string        // names the invocation's topics (-run-token; empty: runToken makes one)
}

// perCall is the messages per publish call of a row: cfg.batch when it is
// batched, else 1.
func (c config) perCall(batched bool) int {
	if batched {
		return c.batch
	}
	return 1
}

// result is what one timed run measured.
type result struct {
	messages       int
	elapsed        time.Duration
	cpu            time.Duration // user + system CPU time of the process during the run; negative if unmeasured
	allocs         uint64        // heap objects allocated during the run (whole process)
	allocBytes     uint64        // heap bytes allocated during the run (whole process)
	peakHeap       uint64        // largest heap-objects size sampled, live and not yet swept
	peakSys        uint64        // largest memory the Go runtime held from the OS (MemStats.Sys), sampled
	peakGoroutines uint64        // most goroutines sampled
	handlerTime    time.Duration // mean time the handler's work took (0 without work)
	latP50, latP99 time.Duration // publish-to-handler latency of a paced run
	latMax         time.Duration // the largest of them
	idleRate       float64       // statements per second per member once idle (rows that count them)
	violations     int64         // messages the handler saw before an earlier one of their key (rows that check)
}

func (r result) msgsPerSec() float64   { return float64(r.messages) / r.elapsed.Seconds() }
func (r result) allocsPerMsg() float64 { return float64(r.allocs) / float64(r.messages) }
func (r result) bytesPerMsg() float64  { return float64(r.allocBytes) / float64(r.messages) }

// cpuPerMsg is the process's CPU time per message in microseconds;
// negative when the run could not measure it.
func (r result) cpuPerMsg() float64 {
	if r.cpu < 0 {
		return -1
	}
	return float64(r.cpu) / 1e3 / float64(r.messages)
}

// ceilingShare is msgs/s as a share of concurrency handlers each taking
// perMessage; 0 when perMessage is.
func (r result) ceilingShare(concurrency int, perMessage time.Duration) float64 {
	if perMessage <= 0 {
		return 0
	}
	return r.msgsPerSec() * perMessage.Seconds() / float64(max(concurrency, 1))
}

// measure runs c once with n messages: set-up and warm-up untimed, then a
// garbage collection, then the timed run with memory sampled every
// cfg.sampleEvery, then the teardown (untimed, but its errors fail the run).
// The process's CPU time is read right before and right after the timed
// part, so it covers what the clock covers.
func measure(ctx context.Context, cfg config, c benchCase, n int, topic string) (result, error) {
	p, err := c.setup(ctx, runParams{cfg: cfg, n: n, topic: topic})
	if err != nil {
		return result{}, fmt.Errorf("%s: set-up: %w", c.id, err)
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := startSampler(cfg.sampleEvery)
	cpuBefore, cpuOK := processCPU()
	start := time.Now()

	// The timed part carries the profiler labels phase=timed and case=id,
	// and so do the goroutines it starts (publishers; the subscriber of a
	// consume-only run): go tool pprof -tagfocus phase=timed leaves set-up
	// and fill out of a -cpuprofile.
	var runErr error
	pprof.Do(ctx, pprof.Labels("phase", "timed", "case", c.id), func(ctx context.Context) {
		runCtx, cancel := context.WithTimeout(ctx, cfg.runTimeout)
		runErr = p.run(runCtx)
		cancel()
	})

	elapsed := time.Since(start)
	cpuAfter, cpuAfterOK := processCPU()
	peak := s.stop()
	runtime.ReadMemStats(&after)

	cpu := cpuAfter - cpuBefore
	if !cpuOK || !cpuAfterOK {
		cpu = -1
	}

	var (
		handlerTime, p50, p99, pMax time.Duration
		violations                  int64
	)
	if p.counter != nil {
		handlerTime = p.counter.meanWork()
		p50, p99, pMax = p.counter.latencies()
		violations = p.counter.violations.Load()
	}
	// The idle window follows the clock: its statements are counted, not
	// timed, and nothing else is measured while it lasts.
	var idle float64
	var idleErr error
	if p.idle != nil && runErr == nil {
		idle, idleErr = p.idle(ctx)
	}

	closeCtx, cancelClose := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
	closeErr := p.close(closeCtx)
	cancelClose()
	if err := errors.Join(runErr, idleErr, closeErr); err != nil {
		return result{}, fmt.Errorf("%s: %w", c.id, err)
	}
	return result{
		handlerTime:    handlerTime,
		latP50:         p50,
		latP99:         p99,
		latMax:         pMax,
		idleRate:       idle,
		violations:     violations,
		messages:       n,
		elapsed:        elapsed,
		cpu:            cpu,
		allocs:         after.Mallocs - before.Mallocs,
		allocBytes:     after.TotalAlloc - before.TotalAlloc,
		peakHeap:       peak.heap,
		peakSys:        peak.sys,
		peakGoroutines: peak.goroutines,
	}, nil
}

// sampler records peak memory and goroutine count through runtime/metrics,
// which unlike ReadMemStats does not stop the world, so sampling every few
// milliseconds barely disturbs the run.
type sampler struct {
	done     chan struct{}
	finished chan struct{}
	peak     peaks
}

type peaks struct{ heap, sys, goroutines uint64 }

func startSampler(every time.Duration) *sampler {
	s := &sampler{done: make(chan struct{}), finished: make(chan struct{})}
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	read := func() {
		metrics.Read(samples)
		s.peak.heap = max(s.peak.heap, samples[0].Value.Uint64())
		s.peak.sys = max(s.peak.sys, samples[1].Value.Uint64())
		s.peak.goroutines = max(s.peak.goroutines, samples[2].Value.Uint64())
	}
	read()
	go func() {
		defer close(s.finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				read()
			case <-s.done:
				read()
				return
			}
		}
	}()
	return s
}

func (s *sampler) stop() peaks {
	close(s.done)
	<-s.finished
	return s.peak
}

// counter is the subscriber side's bookkeeping: it does the handler's
// simulated work, counts handled messages, closes done when the target is
// reached, signals warm when the handler saw a warm-up message, and keeps
// the first problem a handler or a library reported.
type counter struct {
	target  int64
	work    time.Duration
	handled atomic.Int64
	busy    atomic.Int64 // nanoseconds the work really took, summed
	done    chan struct{}
	warm    *signalOnce
	errOnce sync.Once
	err     error
	failed  atomic.Bool
	// sent and seen are, in a paced run, the Unix nanoseconds at which
	// message i was published (its publish call returned, or, for a row
	// that marks it, just before its COMMIT) and its handler started.
	sent, seen []atomic.Int64
	// violations counts messages a handler started after a later message
	// of their key (rows that check per-key order).
	violations atomic.Int64
}

// trackLatency makes the counter record per-message times (paced runs).
func (c *counter) trackLatency() {
	c.sent = make([]atomic.Int64, c.target)
	c.seen = make([]atomic.Int64, c.target)
}

// published records that message i was published: publishPaced calls it
// when the publish call returned, and a row whose latency starts just
// before COMMIT calls it there first. The first mark counts.
func (c *counter) published(i int) {
	if i >= 0 && i < len(c.sent) {
		c.sent[i].CompareAndSwap(0, time.Now().UnixNano())
	}
}

// seenID records that the handler started on the message whose ID is the
// decimal index a paced run gave it; other IDs (warm-up) are ignored.
func (c *counter) seenID(id string) {
	if c.seen == nil {
		return
	}
	if i, err := strconv.Atoi(id); err == nil && i >= 0 && i < len(c.seen) {
		c.seen[i].CompareAndSwap(0, time.Now().UnixNano())
	}
}

// latencies returns the p50, p99 and maximum of seen - sent over the
// messages of a paced run (zeros otherwise). A handler that starts before
// the publish call returned (the commit acknowledgment travels while the
// relay reads) counts as 0.
func (c *counter) latencies() (p50, p99, most time.Duration) {
	if c.sent == nil {
		return 0, 0, 0
	}
	ds := make([]time.Duration, 0, len(c.sent))
	for i := range c.sent {
		s, h := c.sent[i].Load(), c.seen[i].Load()
		if s == 0 || h == 0 {
			continue
		}
		ds = append(ds, time.Duration(max(h-s, 0)))
	}
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return at(0.50), at(0.99), ds[len(ds)-1]
}

func newCounter(target int, work time.Duration) *counter {
	return &counter{target: int64(target), work: work, done: make(chan struct{}), warm: newSignalOnce()}
}

// receive is the handler's part for one message with a size-byte payload
// in a run whose payloads have want bytes: an empty payload is a warm-up
// message, which it signals; one of want bytes it handles; any other size
// fails the run, and counts, so that the run still ends.
func (c *counter) receive(size, want int) {
	switch size {
	case 0:
		c.warm.fire()
	case want:
		c.handle()
	default:
		c.fail(fmt.Errorf("handler got a %d-byte payload, want %d", size, want))
		c.add()
	}
}

// handle is the handler's part for one message of the right size: the
// work (a sleep, measured, because a sleep takes longer than asked for),
// then the count.
func (c *counter) handle() { c.handleThen(nil) }

// handleThen is handle with a step between the work and the count: a
// hand-written consumer acknowledges there, after its handler's work and
// before the message counts, as a library does.
func (c *counter) handleThen(after func()) {
	if c.work > 0 {
		start := time.Now()
		time.Sleep(c.work)
		c.busy.Add(int64(time.Since(start)))
	}
	if after != nil {
		after()
	}
	c.add()
}

// meanWork is the mean time the work of one message really took.
func (c *counter) meanWork() time.Duration {
	n := c.handled.Load()
	if c.work <= 0 || n == 0 {
		return 0
	}
	return time.Duration(c.busy.Load() / n)
}

func (c *counter) add() {
	if c.handled.Add(1) == c.target {
		close(c.done)
	}
}

// fail records a handler-side problem (a wrong payload, a decode error);
// the run fails when it ends.
func (c *counter) fail(err error) {
	c.errOnce.Do(func() { c.err = err; c.failed.Store(true) })
}

// wait blocks until every message was handled or ctx ends.
func (c *counter) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("handler saw %d of %d messages: %w", c.handled.Load(), c.target, ctx.Err())
	}
}

// problem returns what fail recorded, if anything.
func (c *counter) problem() error {
	if c.failed.Load() {
		return c.err
	}
	return nil
}

// check reports a handler-side problem or a count other than the target;
// call it after the subscriber stopped.
func (c *counter) check() error {
	if err := c.problem(); err != nil {
		return err
	}
	if got := c.handled.Load(); got != c.target {
		return fmt.Errorf("handler saw %d messages, want exactly %d", got, c.target)
	}
	return nil
}

// publishAll publishes messages 0..n-1 from the given number of
// goroutines, each taking a contiguous share and handing publish up to
// batch consecutive indices per call. It returns the first error.
func publishAll(ctx context.Context, n, publishers, batch int, publish func(ctx context.Context, first, count int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for p := range publishers {
		lo, hi := p*n/publishers, (p+1)*n/publishers
		wg.Go(func() {
			for first := lo; first < hi; first += batch {
				if err := publish(ctx, first, min(batch, hi-first)); err != nil {
					cancel(fmt.Errorf("publish message %d: %w", first, err))
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// warmUp sends one warm-up message at a time until the handler reports
// one, so that the subscription exists and its first-use costs are paid
// before the clock starts. A system that drops messages published before
// the subscriber joined may need more than one.
func warmUp(ctx context.Context, send func(ctx context.Context) error, seen <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if err := send(ctx); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		select {
		case <-seen:
			return nil
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("warm-up message never reached the handler: %w", ctx.Err())
		}
	}
}

// signalOnce closes a channel the first time it is called.
type signalOnce struct {
	once sync.Once
	ch   chan struct{}
}

func newSignalOnce() *signalOnce { return &signalOnce{ch: make(chan struct{})} }

func (s *signalOnce) fire() { s.once.Do(func() { close(s.ch) }) }

// summary is the median of a case's runs, metric by metric.
type summary struct {
	c                benchCase
	messages         int
	runs             int
	msgsPerSec       float64
	minRate, maxRate float64
	cpuPerMsg        float64 // microseconds; negative if a run could not measure it
	allocsPerMsg     float64
	bytesPerMsg      float64
	peakHeap         float64
	peakSys          float64
	peakGoroutines   float64
	handlerTime      float64 // nanoseconds
	nominalShare     float64 // msgs/s over concurrency / work
	latP50, latP99   float64 // nanoseconds, paced runs: medians of the runs
	latMax           float64 // nanoseconds, paced runs: the largest of any run
	idleRate         float64 // statements per second per member once idle, median
	violations       int64   // per-key order violations, summed over the runs
}

func summarize(c benchCase, rs []result) summary {
	metric := func(f func(result) float64) float64 {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = f(r)
		}
		return median(vs)
	}
	rates := make([]float64, len(rs))
	for i, r := range rs {
		rates[i] = r.msgsPerSec()
	}
	return summary{
		c:              c,
		messages:       rs[0].messages,
		runs:           len(rs),
		msgsPerSec:     median(rates),
		minRate:        slices.Min(rates),
		maxRate:        slices.Max(rates),
		cpuPerMsg:      medianCPUPerMsg(rs),
		allocsPerMsg:   metric(result.allocsPerMsg),
		bytesPerMsg:    metric(result.bytesPerMsg),
		peakHeap:       metric(func(r result) float64 { return float64(r.peakHeap) }),
		peakSys:        metric(func(r result) float64 { return float64(r.peakSys) }),
		peakGoroutines: metric(func(r result) float64 { return float64(r.peakGoroutines) }),
		handlerTime:    metric(func(r result) float64 { return float64(r.handlerTime) }),
		latP50:         metric(func(r result) float64 { return float64(r.latP50) }),
		latP99:         metric(func(r result) float64 { return float64(r.latP99) }),
		latMax:         slices.Max(latMaxes(rs)),
		idleRate:       metric(func(r result) float64 { return r.idleRate }),
		violations:     totalViolations(rs),
		nominalShare:   metric(func(r result) float64 { return r.ceilingShare(c.concurrency, c.work) }),
	}
}

// latMaxes are the runs' largest latencies in nanoseconds.
func latMaxes(rs []result) []float64 {
	vs := make([]float64, len(rs))
	for i, r := range rs {
		vs[i] = float64(r.latMax)
	}
	return vs
}

// totalViolations sums the runs' per-key order violations: one in any run
// is one too many.
func totalViolations(rs []result) int64 {
	var n int64
	for _, r := range rs {
		n += r.violations
	}
	return n
}

// medianCPUPerMsg is the median CPU time per message of rs in
// microseconds, or -1 if any run could not measure it (a median of some
// runs would not be the median of the runs the other columns show).
func medianCPUPerMsg(rs []result) float64 {
	vs := make([]float64, len(rs))
	for i, r := range rs {
		if r.cpu < 0 {
			return -1
		}
		vs[i] = r.cpuPerMsg()
	}
	return median(vs)
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// fillBatch is the messages per publish call when a consume-only case
// fills its topic before the clock starts.
const fillBatch = 1000

// stages are the system-specific parts of a run; assemble puts them
// together the same way for every system, according to the mode.
type stages struct {
	mode mode
	// batch is the messages per publish call in the timed part.
	batch int
	// rate is the messages per second of a paced run.
	rate float64
	// publish publishes messages first..first+count-1 in one call.
	publish func(ctx context.Context, first, count int) error
	// warmUp publishes one warm-up message (empty payload), which the
	// handler recognises and does not count.
	warmUp func(ctx context.Context) error
	// subscribe registers the handler, untimed; start starts consuming
	// (timed in consumeOnly) and returns once the subscriber runs. Both are
	// unused in publishOnly.
	subscribe func() error
	start     func(ctx context.Context) error
	// counter is the handler's bookkeeping; the handler tells it of the
	// warm-up message (counter.receive).
	counter *counter
	// stored counts the messages the topic holds, for the publish-only
	// check; nil skips the check.
	stored func(ctx context.Context) (int, error)
	// afterFill, when set, runs after a consume-only run's fill, untimed:
	// more rows the handler ignores (empty payloads, so a backlog larger
	// than the messages counted), or background work the row wants done
	// before the clock starts.
	afterFill func(ctx context.Context) error
	// statements, when set, counts the statements the subscriber's
	// connections have sent so far (see countingConnector); the run then
	// measures the idle rate per member after its timed part, over
	// cfg.sqlIdle, members being how many subscribers share the count.
	statements func() int64
	members    int
	// teardown stops what was started and releases the run's resources
	// (connections, the topic); it must work at any stage of the set-up.
	teardown func(ctx context.Context) error
}

// assemble finishes the set-up of a run as its mode needs (warm-up, fill)
// and returns the timed part and the checks. When the set-up fails it tears
// down what was built.
func assemble(ctx context.Context, p runParams, s stages) (*pipeline, error) {
	cfg := p.cfg
	abandon := func(err error) (*pipeline, error) {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
		defer cancel()
		return nil, errors.Join(err, s.teardown(closeCtx))
	}
	publishN := func(ctx context.Context, batch int) error {
		return publishBounded(ctx, p.n, cfg.publishers, batch, s.publish)
	}
	// consuming is the pipeline of a mode whose timed part does first,
	// then waits until the handler has seen every message.
	consuming := func(first func(ctx context.Context) error) *pipeline {
		return &pipeline{
			run: func(ctx context.Context) error {
				if err := first(ctx); err != nil {
					return err
				}
				return s.counter.wait(ctx)
			},
			close: func(ctx context.Context) error {
				return errors.Join(s.teardown(ctx), s.counter.check())
			},
			counter: s.counter,
		}
	}

	switch s.mode {
	case publishOnly:
		if err := s.warmUp(ctx); err != nil {
			return abandon(fmt.Errorf("warm-up: %w", err))
		}
		return &pipeline{
			run: func(ctx context.Context) error { return publishN(ctx, s.batch) },
			close: func(ctx context.Context) error {
				// Count before the teardown, which deletes the topic.
				stored := checkStored(ctx, s.stored, p.n+1)
				return errors.Join(stored, s.counter.problem(), s.teardown(ctx))
			},
		}, nil

	case consumeOnly:
		if err := s.subscribe(); err != nil {
			return abandon(err)
		}
		if err := publishN(ctx, fillBatch); err != nil {
			return abandon(fmt.Errorf("fill the topic: %w", err))
		}
		if s.afterFill != nil {
			if err := s.afterFill(ctx); err != nil {
				return abandon(fmt.Errorf("after the fill: %w", err))
			}
		}
		return withIdle(consuming(s.start), cfg, s), nil

	case paced:
		s.counter.trackLatency()
		if err := subscribeAndWarm(ctx, s); err != nil {
			return abandon(err)
		}
		return withIdle(consuming(func(ctx context.Context) error {
			return publishPaced(ctx, p.n, s.rate, s.publish, s.counter)
		}), cfg, s), nil

	case endToEnd:
		if err := subscribeAndWarm(ctx, s); err != nil {
			return abandon(err)
		}
		return withIdle(consuming(func(ctx context.Context) error { return publishN(ctx, s.batch) }), cfg, s), nil

	default:
		return abandon(fmt.Errorf("unknown mode %d", s.mode))
	}
}

// idleSettle is how long a run waits after its timed part before the idle
// window opens: long enough for adaptive polls to back off to their
// slowest and for the last positions to be committed.
const idleSettle = 2 * time.Second

// withIdle gives p the idle measurement when the stages count statements
// and cfg.sqlIdle asks for one.
func withIdle(p *pipeline, cfg config, s stages) *pipeline {
	if s.statements == nil || cfg.sqlIdle <= 0 {
		return p
	}
	members := max(s.members, 1)
	p.idle = func(ctx context.Context) (float64, error) {
		return idleRate(ctx, idleSettle, cfg.sqlIdle, s.statements, members)
	}
	return p
}

// idleRate waits settle, then counts the statements sent during window,
// per second and per member.
func idleRate(ctx context.Context, settle, window time.Duration, statements func() int64, members int) (float64, error) {
	wait := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("idle window: %w", ctx.Err())
		}
	}
	if err := wait(settle); err != nil {
		return 0, err
	}
	before := statements()
	if err := wait(window); err != nil {
		return 0, err
	}
	return float64(statements()-before) / window.Seconds() / float64(members), nil
}

// subscribeAndWarm subscribes, starts the subscriber and warms it up.
func subscribeAndWarm(ctx context.Context, s stages) error {
	if err := s.subscribe(); err != nil {
		return err
	}
	if err := s.start(ctx); err != nil {
		return err
	}
	return warmUp(ctx, s.warmUp, s.counter.warm.ch)
}

// publishBounded is publishAll bounded by ctx even when a publish call does
// not take a context (Watermill's Publish): it returns when ctx ends, and
// the run's teardown unblocks the calls still running.
func publishBounded(ctx context.Context, n, publishers, batch int, publish func(ctx context.Context, first, count int) error) error {
	done := make(chan error, 1)
	go func() { done <- publishAll(ctx, n, publishers, batch, publish) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("publishing did not finish: %w", ctx.Err())
	}
}

// publishPaced publishes messages 0..n-1 one per call from one goroutine,
// message i at i/rate seconds after the start, and records when each call
// returned. A call that falls behind is followed by the next at once.
func publishPaced(ctx context.Context, n int, rate float64, publish func(ctx context.Context, first, count int) error, c *counter) error {
	if rate <= 0 {
		return fmt.Errorf("paced run without a rate")
	}
	start := time.Now()
	for i := range n {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return fmt.Errorf("published %d of %d messages: %w", i, n, ctx.Err())
			}
		}
		if err := publish(ctx, i, 1); err != nil {
			return fmt.Errorf("publish message %d: %w", i, err)
		}
		c.published(i)
	}
	return nil
}

// checkStored reports a topic that does not hold exactly want messages.
func checkStored(ctx context.Context, stored func(ctx context.Context) (int, error), want int) error {
	if stored == nil {
		return nil
	}
	got, err := stored(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("count the stored messages: %w", err)
	case got != want:
		return fmt.Errorf("topic holds %d messages, want %d (the run's and one warm-up)", got, want)
	}
	return nil
}
