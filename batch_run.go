package herald

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/internal/telemetry"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// How a batch subscription runs. The scheduler is the same one single
// handlers have: the intake fetches into the in-flight window and
// dispatches each delivery behind its key, so a key has at most one
// delivery in the ready queue or running at a time. In place of the
// workers, a collector takes ready deliveries into a batch, and with each
// one the deliveries of its key waiting behind it (in order: they are
// next), until the batch holds WithBatch's size or its linger has passed
// and a runner is free; Concurrency runners each run one batch at a time.
// A key stays busy from the first of its deliveries in a batch until the
// batch settled; then its next waiting delivery becomes ready. So per-key
// order across batches is the scheduler's, and within a batch the
// pipeline keeps it (see plan and judge).
//
// A run of a batch (a pass) admits each delivery (not for the group:
// skipped; dedup claim; MaxDeliveries; decode), then runs the handler in
// rounds: the first round on every admitted item, each later one, after
// the retry backoff, on the items to retry. Items whose attempts are spent
// are dead-lettered between rounds. Items left unsettled (no dead-letter
// option, a failed dead-letter write, a busy dedup claim, the end of the
// context) are redelivered in place, as a smaller batch, after the
// scheduler's redelivery backoff, their keys still busy.

// batchPipeline is a batch subscription's handler with its settings.
type batchPipeline struct {
	size   int
	linger time.Duration
	group  string
	event  string                      // "" for a raw handler
	decode func(*Message) (any, error) // nil for a raw handler
	handle func(ctx context.Context, items []*batchItem) error
	retry  *RetryConfig // with defaults; nil: one attempt
	dedup  *DedupConfig // with defaults; nil: none
	dl     deadLetterSettings
	obs    *observer
}

type itemState uint8

const (
	itemPending      itemState = iota // to run (or dead-letter) in a coming round
	itemOK                            // the handler succeeded
	itemSkipped                       // not for this group
	itemDuplicate                     // already handled (dedup)
	itemDeadLettered                  // written to the dead-letter topic
	itemUnsettled                     // left for redelivery in place
)

// batchItem is one delivery of a batch and where it stands in a pass.
type batchItem struct {
	d        Delivery
	count    int // DeliveryCount
	val      any // the decoded event
	decoded  bool
	state    itemState
	attempts int   // handler runs of this pass that failed for it
	err      error // why it is unsettled, or its dead-letter reason
	fatal    error // a reason to dead-letter it without running (undecodable, MaxDeliveries)
	claim    string
	token    string
}

// again makes an unsettled item pending for its redelivery in place.
func (it *batchItem) again() {
	it.state, it.attempts, it.err, it.fatal = itemPending, 0, nil, nil
	it.count++
}

// startBatches starts the collector and the runners in place of the
// workers.
func (s *scheduler) startBatches() {
	batches := make(chan []Delivery)
	s.workers.Add(1 + s.cfg.Concurrency)
	go s.collect(batches)
	for range s.cfg.Concurrency {
		go s.runBatches(batches)
	}
}

// collect makes batches of ready deliveries and hands each to a free
// runner when it is full or its linger has passed.
func (s *scheduler) collect(out chan<- []Delivery) {
	defer s.workers.Done()
	size, linger := s.batch.size, s.batch.linger
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var batch []Delivery
	waiting, due := false, false
	for {
		var wake <-chan struct{}
		if len(batch) < size {
			wake = s.wake
			before := len(batch)
			batch = s.gather(batch, size)
			if len(batch) > before && !waiting && !due { // a batch's linger starts with its first delivery
				if linger == 0 {
					due = true
				} else {
					timer.Reset(linger)
					waiting = true
				}
			}
		}
		var send chan<- []Delivery
		if len(batch) > 0 && (due || len(batch) >= size) {
			send = out
		}
		select {
		case <-wake: // look at the ready queue again
		case <-timer.C:
			waiting, due = false, true
			batch = s.topUp(batch, size)
		case send <- batch:
			batch, due = nil, false
			if waiting {
				timer.Stop()
				waiting = false
			}
		case <-s.stop:
			for _, d := range batch {
				s.abandon(d)
				s.slots.give(1)
			}
			return
		}
	}
}

// gather adds to batch what is ready now, each delivery with the ones
// waiting behind its key, up to size.
func (s *scheduler) gather(batch []Delivery, size int) []Delivery {
	for len(batch) < size {
		s.mu.Lock()
		d, ok := s.ready.pop()
		s.mu.Unlock()
		if !ok {
			return batch
		}
		batch = s.takeWaiting(append(batch, d), d.Message.Key, size)
	}
	return batch
}

// topUp adds to batch, up to size, the deliveries that arrived behind
// its keys since they were taken.
func (s *scheduler) topUp(batch []Delivery, size int) []Delivery {
	seen := make(map[string]bool)
	for i := 0; i < len(batch) && len(batch) < size; i++ {
		if k := batch[i].Message.Key; k != "" && !seen[k] {
			seen[k] = true
			batch = s.takeWaiting(batch, k, size)
		}
	}
	return batch
}

// takeWaiting moves deliveries waiting behind key, in order, to batch, up
// to size. The key stays busy: its next delivery is made ready only when
// the batch has settled (passOn).
func (s *scheduler) takeWaiting(batch []Delivery, key string, size int) []Delivery {
	if key == "" || len(batch) >= size {
		return batch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.active[key]
	if q == nil || q.head == len(q.items) {
		return batch
	}
	n := min(size-len(batch), len(q.items)-q.head)
	batch = append(batch, q.items[q.head:q.head+n]...)
	clear(q.items[q.head : q.head+n])
	q.head += n
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head >= 64 && 2*q.head >= len(q.items) {
		m := copy(q.items, q.items[q.head:])
		clear(q.items[m:])
		q.items, q.head = q.items[:m], 0
	}
	return batch
}

// runBatches runs the batches the collector hands over until the
// scheduler stops.
func (s *scheduler) runBatches(in <-chan []Delivery) {
	defer s.workers.Done()
	for {
		var ds []Delivery
		select {
		case ds = <-in:
		case <-s.stop:
			return
		}
		if s.stopping.Load() {
			for _, d := range ds {
				s.abandon(d)
				s.slots.give(1)
			}
			return
		}
		s.runBatch(ds)
		if s.stopping.Load() {
			return
		}
	}
}

// runBatch runs ds until every delivery is settled (acknowledged) or the
// scheduler stops (the unsettled ones are left to the driver), then frees
// their slots and keys.
func (s *scheduler) runBatch(ds []Delivery) {
	items := make([]*batchItem, 0, len(ds))
	rv, _ := s.sub.(Revoker)
	for _, d := range ds {
		if rv == nil || !rv.Revoked(d) {
			items = append(items, &batchItem{d: d, count: max(d.Count, 1)})
		}
	}
	wait := backoff.New(s.cfg.RedeliveryBackoff, s.cfg.MaxRedeliveryBackoff)
	for len(items) > 0 {
		s.batch.pass(s.handlerCtx, items)
		if items = s.settle(items); len(items) == 0 || s.stopping.Load() {
			break
		}
		if !s.pause(wait.Next()) {
			break
		}
		for _, it := range items {
			it.again()
		}
	}
	s.slots.give(len(ds))
	s.passOn(ds)
}

// pause waits d, or until the scheduler stops (then it returns false).
func (s *scheduler) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.stop:
		return false
	}
}

// settle acknowledges the settled items and returns the others, after
// reporting their errors.
func (s *scheduler) settle(items []*batchItem) []*batchItem {
	left := items[:0]
	for _, it := range items {
		if it.state != itemUnsettled {
			if err := s.sub.Ack(s.ackCtx, it.d); err != nil {
				s.report("ack", it.d.Message.ID, err)
			}
			continue
		}
		if !errors.Is(it.err, ErrInProgress) && !errors.Is(it.err, ErrHeldBehind) {
			s.report("handle", it.d.Message.ID, it.err)
		}
		left = append(left, it)
	}
	return left
}

// passOn makes the next waiting delivery of each key of ds ready, or
// frees the key.
func (s *scheduler) passOn(ds []Delivery) {
	seen := make(map[string]bool)
	for _, d := range ds {
		k := d.Message.Key
		if k == "" || seen[k] {
			continue
		}
		seen[k] = true
		if next, ok := s.following(k); ok {
			s.makeReady(next)
		}
	}
}

// pass runs items once through the pipeline: admission, the handler's
// rounds, dead letters, dedup commits, and what the observer records.
// Every item ends settled or unsettled.
func (p *batchPipeline) pass(ctx context.Context, items []*batchItem) {
	ctx, span := p.obs.tel.startBatchSpan(ctx, items)
	in := p.obs.tel.instruments()
	start := time.Now()
	if n := maxCount(items); n > 1 {
		ctx = context.WithValue(ctx, deliveryCountKey{}, n)
	}
	p.admit(ctx, items)
	p.rounds(ctx, items)
	p.finishClaims(ctx, items)
	p.observe(ctx, span, in, time.Since(start), items)
}

func maxCount(items []*batchItem) int {
	n := 1
	for _, it := range items {
		n = max(n, it.count)
	}
	return n
}

// forGroup reports whether the subscription handles m: not a redrive or
// retry copy addressed to another group, and of its event type (or of
// none, from a foreign producer).
func (p *batchPipeline) forGroup(m *Message) bool {
	if forOtherGroup(m, p.group) {
		return false
	}
	return p.event == "" || m.Event() == p.event || m.Event() == ""
}

// admit decides what each item needs before the handler: skipped (not for
// the group), its dedup claim, and a reason to dead-letter it without
// running (MaxDeliveries, undecodable).
func (p *batchPipeline) admit(ctx context.Context, items []*batchItem) {
	for _, it := range items {
		m := it.d.Message
		if !p.forGroup(m) {
			it.state = itemSkipped
			continue
		}
		if p.dedup != nil && m.ID != "" && !p.claim(ctx, it) {
			continue
		}
		if p.dl.MaxDeliveries > 0 && it.count > p.dl.MaxDeliveries {
			it.fatal = fmt.Errorf("herald: delivered %d times, more than the limit of %d", it.count, p.dl.MaxDeliveries)
			continue
		}
		if p.decode != nil && !it.decoded {
			v, err := p.decode(m)
			if err != nil {
				it.fatal = p.reason(err, 1)
				continue
			}
			it.val, it.decoded = v, true
		}
	}
}

// claim claims it's message in the processed set; false when it must not
// run: a duplicate (settled), busy elsewhere or a storage error
// (unsettled).
func (p *batchPipeline) claim(ctx context.Context, it *batchItem) bool {
	m := it.d.Message
	key := p.group + ":" + DedupKey(p.group, m)
	c, err := p.dedup.Storage.Claim(ctx, key, p.dedup.Lease)
	if err != nil {
		it.state, it.err = itemUnsettled, fmt.Errorf("herald: dedup claim %q: %w", key, err)
		return false
	}
	switch c.State {
	case dedup.Done:
		it.state = itemDuplicate
		p.obs.report(ctx, event{kind: eventDuplicate, msg: m})
		if p.dedup.OnDuplicate != nil {
			p.dedup.OnDuplicate(m)
		}
		return false
	case dedup.Busy:
		it.state, it.err = itemUnsettled, ErrInProgress
		return false
	}
	it.claim, it.token = key, c.Token
	return true
}

// finishClaims commits the claims of items handled or dead-lettered and
// releases the others', as the dedup middleware does.
func (p *batchPipeline) finishClaims(ctx context.Context, items []*batchItem) {
	ctx = context.WithoutCancel(ctx)
	for _, it := range items {
		if it.claim == "" {
			continue
		}
		if it.state == itemOK || it.state == itemDeadLettered {
			if err := p.dedup.Storage.Commit(ctx, it.claim, it.token, p.dedup.Window); err != nil {
				p.dedup.OnError(fmt.Errorf("herald: dedup commit %q: %w", it.claim, err))
			}
		} else if err := p.dedup.Storage.Release(ctx, it.claim, it.token); err != nil {
			p.dedup.OnError(fmt.Errorf("herald: dedup release %q: %w", it.claim, err))
		}
		it.claim, it.token = "", ""
	}
}

// reason is what a failure after attempts says as a dead-letter reason
// or an unsettled error: with WithRetry, a *RetryError, as the retry
// middleware gives the dead-letter one.
func (p *batchPipeline) reason(err error, attempts int) error {
	if p.retry == nil {
		return err
	}
	return &RetryError{Attempts: attempts, Err: err}
}

// rounds runs the handler on the pending items until none is pending:
// each round on what plan picks, after a backoff when it retries items.
func (p *batchPipeline) rounds(ctx context.Context, items []*batchItem) {
	maxAttempts := 1
	if p.retry != nil {
		maxAttempts = p.retry.MaxAttempts
	}
	for {
		run, dead, retried := p.plan(items)
		if len(run) == 0 && len(dead) == 0 {
			return
		}
		if retried > 0 && !p.backoff(ctx, run, retried) {
			cutOff(items, ctx.Err())
			return
		}
		if len(run) > 0 {
			dead = append(dead, p.judge(ctx, run, p.call(ctx, run, retried+1), maxAttempts)...)
		}
		p.deadLetter(ctx, dead)
		if ctx.Err() != nil {
			cutOff(items, ctx.Err())
			return
		}
	}
}

// cutOff leaves every pending item unsettled with err: the context ended.
func cutOff(items []*batchItem, err error) {
	for _, it := range items {
		if it.state == itemPending {
			it.state, it.err = itemUnsettled, err
		}
	}
}

// Where a key stands as plan walks a batch.
const (
	keyOpen    = iota // no earlier item of the key is pending
	keyRunning        // earlier items of the key run for the first time this round
	keyWaiting        // an earlier item is retried or dead-lettered this round, or waits
)

// plan picks the next round: the pending items to run (in order) and
// those to dead-letter without running, keeping per-key order: an item
// whose key has an earlier unsettled item is held (unsettled too); one
// behind an earlier item that is retried or dead-lettered this round
// waits for the next; first runs of one key go together. retried is the
// most failed attempts among the items to run.
func (p *batchPipeline) plan(items []*batchItem) (run, dead []*batchItem, retried int) {
	keys := make(map[string]int)
	blocked := make(map[string]bool)
	for _, it := range items {
		k := it.d.Message.Key
		if k != "" && blocked[k] && it.state == itemPending {
			it.state, it.err = itemUnsettled, ErrHeldBehind
		}
		if it.state == itemUnsettled {
			if k != "" {
				blocked[k] = true
			}
			continue
		}
		if it.state != itemPending {
			continue
		}
		at := keys[k]
		switch {
		case it.fatal != nil:
			if k == "" || at == keyOpen {
				it.err = it.fatal
				dead = append(dead, it)
			}
			at = keyWaiting
		case k == "" || at == keyOpen || it.attempts == 0 && at == keyRunning:
			run = append(run, it)
			retried = max(retried, it.attempts)
			if it.attempts > 0 {
				at = keyWaiting
			} else {
				at = max(at, keyRunning)
			}
		default:
			at = keyWaiting
		}
		if k != "" {
			keys[k] = at
		}
	}
	return run, dead, retried
}

// backoff reports each retry and waits the retry backoff before a round
// whose items failed retried times at most; false when ctx ended first.
func (p *batchPipeline) backoff(ctx context.Context, run []*batchItem, retried int) bool {
	for _, it := range run {
		if it.attempts == 0 {
			continue
		}
		p.obs.report(ctx, event{kind: eventRetry, msg: it.d.Message, attempt: it.attempts + 1, err: it.err})
		if p.retry.OnRetry != nil {
			p.retry.OnRetry(ctx, it.d.Message, it.attempts+1, it.err)
		}
	}
	d := backoff.Exponential(p.retry.InitialBackoff, p.retry.MaxBackoff, retried)
	if j := p.retry.Jitter; j > 0 {
		d += time.Duration((rand.Float64()*2 - 1) * j * float64(d))
	}
	return backoff.Sleep(ctx, d)
}

// call runs the handler on run as attempt and returns each item's error.
func (p *batchPipeline) call(ctx context.Context, run []*batchItem, attempt int) []error {
	if attempt > 1 {
		ctx = context.WithValue(ctx, attemptKey{}, attempt)
	}
	if p.retry != nil && p.retry.AttemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.retry.AttemptTimeout)
		defer cancel()
	}
	err := p.safeHandle(ctx, run)
	errs := make([]error, len(run))
	if err == nil {
		return errs
	}
	var be *BatchError
	if errors.As(err, &be) && be.names(len(run)) {
		for i, e := range be.Failed {
			errs[i] = e
			if e == nil {
				errs[i] = errFailedInBatch
			}
		}
		return errs
	}
	for i := range errs {
		errs[i] = err
	}
	return errs
}

// names reports whether e names at least one item and only items of a
// batch of n.
func (e *BatchError) names(n int) bool {
	for i := range e.Failed {
		if i < 0 || i >= n {
			return false
		}
	}
	return len(e.Failed) > 0
}

// safeHandle runs the handler, turning a panic into a *PanicError (which
// fails the whole batch).
func (p *batchPipeline) safeHandle(ctx context.Context, run []*batchItem) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return p.handle(ctx, run)
}

// judge records the outcome of one round and returns the items to
// dead-letter. After an item of a key failed, the later items of the key
// in the round stay pending, their outcome void: they run again once it
// is settled.
func (p *batchPipeline) judge(ctx context.Context, run []*batchItem, errs []error, maxAttempts int) (dead []*batchItem) {
	failed := make(map[string]bool)
	for i, it := range run {
		k := it.d.Message.Key
		if k != "" && failed[k] {
			continue
		}
		err := errs[i]
		if err == nil {
			it.state = itemOK
			continue
		}
		failed[k] = true
		it.attempts++
		it.err = err
		switch {
		case ctx.Err() != nil || errors.Is(err, ErrInProgress):
			it.state = itemUnsettled
		case it.attempts < maxAttempts && p.retry.Retryable(err):
			// pending: retried next round
		case p.dl.onlyUndecodable && !errors.Is(err, ErrUndecodable):
			it.state, it.err = itemUnsettled, p.reason(err, it.attempts)
		default:
			it.err = p.reason(err, it.attempts)
			dead = append(dead, it)
		}
	}
	return dead
}

// deadLetter writes dead to the dead-letter topic, one record each, in one
// Write; when it fails they are all unsettled.
func (p *batchPipeline) deadLetter(ctx context.Context, dead []*batchItem) {
	if len(dead) == 0 {
		return
	}
	now := p.dl.now()
	msgs := make([]*Message, len(dead))
	for i, it := range dead {
		m := it.d.Message
		msgs[i] = deadLetterMessage(m, p.dl.Topic(m.Topic), p.group, it.err, now)
	}
	topics := make([]string, len(msgs))
	for i, m := range msgs {
		topics[i] = m.Topic
	}
	if werr := p.dl.Writer.Write(ctx, msgs); werr != nil {
		for i, it := range dead {
			it.state = itemUnsettled
			it.err = errors.Join(it.err, fmt.Errorf("herald: write to dead-letter topic %q: %w", topics[i], werr))
		}
		return
	}
	for i, it := range dead {
		it.state = itemDeadLettered
		p.obs.report(ctx, event{kind: eventDeadLetter, msg: it.d.Message, err: it.err, topic: topics[i]})
		if p.dl.OnDeadLetter != nil {
			p.dl.OnDeadLetter(it.d.Message, it.err)
		}
	}
}

// observe records a pass: per item the outcome counter, the log line and
// the hook's result; per pass the duration and the span.
func (p *batchPipeline) observe(ctx context.Context, span trace.Span, in *consumerInstruments, took time.Duration, items []*batchItem) {
	o := p.obs
	unsettled := 0
	var first error
	for _, it := range items {
		m := it.d.Message
		skipped := it.state == itemSkipped
		var err error
		if it.state == itemUnsettled {
			err = it.err
			unsettled++
			if first == nil {
				first = err
			}
		}
		o.tel.countOutcome(ctx, in, err, skipped)
		lctx := ctx
		if it.count > 1 {
			lctx = context.WithValue(ctx, deliveryCountKey{}, it.count)
		}
		o.log(lctx, m, took, err, skipped)
		if o.hook != nil {
			o.hook(HandleResult{Topic: o.topic, Group: o.group, Message: m, Duration: took, Err: err, Skipped: skipped})
		}
	}
	var err error
	if unsettled > 0 {
		err = fmt.Errorf("herald: %d of %d messages of the batch not settled, first: %w", unsettled, len(items), first)
	}
	o.tel.settleBatch(ctx, span, in, took, err)
}

// startBatchSpan starts the consumer span of a pass over items, linked to
// the span context each message carries (each distinct one once). Without
// a tracer it starts nothing; t may be nil.
func (t *subscriptionTelemetry) startBatchSpan(ctx context.Context, items []*batchItem) (context.Context, trace.Span) {
	if t == nil {
		return ctx, nil
	}
	tracer := t.Tracer()
	if tracer == nil {
		return ctx, nil
	}
	type id struct {
		trace.TraceID
		trace.SpanID
	}
	seen := make(map[id]bool)
	links := make([]trace.Link, 0, len(items))
	for _, it := range items {
		_, sc := t.Extract(context.Background(), it.d.Message.Headers)
		if k := (id{sc.TraceID(), sc.SpanID()}); sc.IsValid() && !seen[k] {
			seen[k] = true
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	dst := t.sets().dst
	opts := append(dst.Start[:len(dst.Start):len(dst.Start)],
		trace.WithLinks(links...), trace.WithAttributes(semconv.MessagingBatchMessageCount(len(items))))
	return tracer.Start(ctx, dst.SpanName, opts...)
}

// countOutcome adds one message's outcome to the processed counter; in
// nil: not measuring. t may be nil.
func (t *subscriptionTelemetry) countOutcome(ctx context.Context, in *consumerInstruments, err error, skipped bool) {
	if t == nil || in == nil {
		return
	}
	sets := t.sets()
	outcome := sets.ok
	switch {
	case skipped:
		outcome = sets.skipped
	case err != nil:
		outcome = sets.failed
	}
	in.processed.Add(ctx, 1, outcome.Add...)
}

// settleBatch records a pass's duration (failed when a message is left
// unsettled) and ends its span. t may be nil.
func (t *subscriptionTelemetry) settleBatch(ctx context.Context, span trace.Span, in *consumerInstruments, took time.Duration, err error) {
	if t == nil {
		return
	}
	if in != nil {
		dst := t.sets().dst.OK
		if err != nil {
			dst = t.sets().dst.Failed // made by the call above
		}
		in.duration.Record(ctx, took.Seconds(), dst.Record...)
	}
	telemetry.EndSpan(span, err)
}
