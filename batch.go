package herald

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// Batch handlers. SubscribeBatch and Bus.HandleBatch run a handler on up
// to WithBatch's size messages at once, for bulk database writes and bulk
// API calls. What they guarantee:
//
//   - Per-key order within and across batches: a key's messages appear in
//     a batch in delivery order, and a key's later message never goes in a
//     batch while an earlier one of that key is unsettled (in another
//     batch, retried, or waiting for redelivery). Messages of one key may
//     share a batch.
//   - A batch whose handler returns nil is acknowledged, every delivery of
//     it. A handler that returns a *BatchError fails only the items it
//     names: the others are acknowledged, once; the failed ones are
//     retried (WithRetry), as a smaller batch of just the failed items,
//     and when their attempts are spent or their error is permanent each
//     one is dead-lettered (WithDeadLetter) on its own record, or left
//     for redelivery in place without WithDeadLetter. Any other error
//     fails every item of the batch the same way.
//   - When an item of a key fails, the later items of that key in the
//     batch are not acknowledged either, whatever the handler said for
//     them: they wait (unattempted, no attempt counted) until the failed
//     one is settled, then run again. So the handler may see a later
//     message of a key again after having seen it once; handlers must be
//     idempotent, as under at-least-once anyway.
//   - Dedup (WithDedup): each message is claimed before the handler runs;
//     a message already handled is left out of the batch (and
//     acknowledged), one held by another delivery waits for redelivery;
//     claims are committed for items handled or dead-lettered and
//     released for the rest.
//   - A typed batch's undecodable messages are dead-lettered one by one
//     before the handler runs (even without WithDeadLetter), as Subscribe
//     does; DeadLetterConfig.MaxDeliveries is checked per message.
//   - One "process <topic>" span per run of a batch (a pass), linked to
//     the span of every message's sender; the metrics, the log lines and
//     the handle hook are per message, as for single handlers.
//
// The handler's context carries the batch's span; Attempt(ctx) is the
// round's attempt (the highest among its items) and DeliveryCount(ctx) the
// highest delivery count among its items.
//
// What they do not: WithMiddleware wraps one message and is refused; the
// handler's context carries no single delivered message, so
// CorrelationID and CausationID do not derive from it (read them from
// each Item's Message). A batch is not a transaction: the driver
// acknowledges its messages one by one after the handler returned, so a
// crash between two acknowledgments redelivers the rest of the batch.

// Item is one message of a typed batch: the decoded event and the message
// it came in.
type Item[E any] struct {
	Event   E
	Message *Message
}

// BatchHandlerFunc handles a batch of raw messages (Bus.HandleBatch).
// Returning nil acknowledges every message; a *BatchError fails only the
// messages it names; any other error fails them all.
type BatchHandlerFunc func(ctx context.Context, msgs []*Message) error

// BatchError is what a batch handler returns to say which items failed:
// Failed maps an index of the slice the handler was given to that item's
// error (a nil error counts as a failure too). The items it does not name
// succeeded. A BatchError that names no item or an index outside the
// batch fails the whole batch, so that a mistake never acknowledges a
// message the handler did not mean to.
type BatchError struct {
	Failed map[int]error
}

// Fail records that item i failed with err, and returns e.
func (e *BatchError) Fail(i int, err error) *BatchError {
	if e.Failed == nil {
		e.Failed = make(map[int]error)
	}
	e.Failed[i] = err
	return e
}

// Err returns e when an item failed and nil when none did, so a handler
// can end with `return failures.Err()`.
func (e *BatchError) Err() error {
	if e == nil || len(e.Failed) == 0 {
		return nil
	}
	return e
}

func (e *BatchError) Error() string {
	idx := make([]int, 0, len(e.Failed))
	for i := range e.Failed {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	var b strings.Builder
	fmt.Fprintf(&b, "herald: %d item(s) of the batch failed", len(idx))
	for n, i := range idx {
		if n == 3 {
			fmt.Fprintf(&b, "; and %d more", len(idx)-n)
			break
		}
		fmt.Fprintf(&b, "; item %d: %v", i, e.Failed[i])
	}
	return b.String()
}

// Unwrap returns the items' errors, so errors.Is and errors.As see them.
func (e *BatchError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failed))
	for _, err := range e.Failed {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// ErrHeldBehind is the outcome (HandleResult.Err) of a message of a batch
// that was left unsettled without counting as an attempt: an earlier
// message of its key in the batch was not settled, so it waits for that
// one's redelivery in place and runs after it. It is logged at debug
// level and not passed to the error handler.
var ErrHeldBehind = errors.New("herald: held behind an earlier message of its key that is not settled")

// errFailedInBatch stands for the nil error of a BatchError item.
var errFailedInBatch = errors.New("herald: failed in its batch")

// Default batch settings (WithBatch).
const (
	DefaultBatchSize   = 100
	DefaultBatchLinger = 20 * time.Millisecond
)

type batchOptions struct {
	size   int
	linger time.Duration
}

// WithBatch sets how a batch handler's batches are made (default
// DefaultBatchSize and DefaultBatchLinger): a batch is handed to the
// handler when it holds size messages, or linger after its first message
// arrived with what has arrived by then (linger 0: what is ready at
// once). While every worker is busy a batch keeps filling up to size.
// Each of WithConcurrency's workers runs one batch at a time. Only
// SubscribeBatch and HandleBatch take it.
func WithBatch(size int, linger time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.batch = &batchOptions{size: size, linger: linger} }
}

func (b batchOptions) validate() error {
	return errors.Join(
		badIf(b.size < 1, "WithBatch size", b.size, "want 1 or more"),
		badIf(b.linger < 0, "WithBatch linger", b.linger, "want 0 (no wait) or more"))
}

// SubscribeBatch runs h on batches of events of type E published to E's
// topic, as a member of group (see "Batch handlers" in batch.go and
// WithBatch). Messages of other event types on a shared topic are
// acknowledged without running h; undecodable ones go to the dead-letter
// topic one by one. A topic and group with a batch handler take no other
// handler.
func SubscribeBatch[E any](b *Bus, group string, h func(ctx context.Context, batch []Item[E]) error, opts ...SubscribeOption) error {
	if h == nil {
		return fmt.Errorf("herald: subscribe batch group %q: %w", group, ErrNilHandler)
	}
	et, err := b.reg.Lookup(reflect.TypeFor[E]())
	if err != nil {
		return err
	}
	decode := decoder[E](b.pub, et)
	spec := batchSpec{
		event: et.Name,
		decode: func(m *Message) (any, error) {
			e, err := decode(m)
			return e, err
		},
		handle: func(ctx context.Context, items []*batchItem) error {
			batch := make([]Item[E], len(items))
			for i, it := range items {
				e, _ := it.val.(E) // a nil interface value stays the zero E
				batch[i] = Item[E]{Event: e, Message: it.d.Message}
			}
			return h(ctx, batch)
		},
	}
	return b.addBatch(et.Topic, group, spec, opts)
}

// HandleBatch runs h on batches of every message published to topic, as a
// member of group, whatever its event type (see SubscribeBatch).
func (b *Bus) HandleBatch(topic, group string, h BatchHandlerFunc, opts ...SubscribeOption) error {
	if h == nil {
		return fmt.Errorf("herald: handle batch topic %q group %q: %w", topic, group, ErrNilHandler)
	}
	spec := batchSpec{handle: func(ctx context.Context, items []*batchItem) error {
		msgs := make([]*Message, len(items))
		for i, it := range items {
			msgs[i] = it.d.Message
		}
		return h(ctx, msgs)
	}}
	return b.addBatch(topic, group, spec, opts)
}

// batchSpec is what SubscribeBatch and HandleBatch give addBatch: the
// event name ("" for raw), the decoder (nil for raw) and the handler.
type batchSpec struct {
	event  string
	decode func(*Message) (any, error)
	handle func(ctx context.Context, items []*batchItem) error
}

// validateBatch reports the settings a batch subscription refuses or
// cannot use.
func (o *subscribeOptions) validateBatch() error {
	errs := []error{o.batch.validate()}
	if len(o.middleware) > 0 {
		errs = append(errs, &OptionError{Option: "WithMiddleware", Value: len(o.middleware),
			Reason: "not for batch handlers: a Middleware wraps one message"})
	}
	if o.retryLater != nil {
		errs = append(errs, &OptionError{Option: "WithRetryLater", Value: o.retryLater.Rounds,
			Reason: "not for batch handlers: a batch settles its items in place"})
	}
	if o.breaker != nil {
		errs = append(errs, &OptionError{Option: "WithBreaker", Value: o.breaker.Failures,
			Reason: "not for batch handlers yet: the breaker guards one message's attempts"})
	}
	if o.throttle != nil {
		errs = append(errs, &OptionError{Option: "WithThrottle", Value: o.throttle.rate,
			Reason: "not for batch handlers yet: the throttle counts one message's runs"})
	}
	if o.table != nil {
		errs = append(errs, &OptionError{Option: "WithTable", Value: "table",
			Reason: "not for batch handlers: a table's state is read and written per message"})
	}
	if o.schedSet && o.sched.MaxInFlight > 0 && o.batch.size > o.sched.MaxInFlight {
		errs = append(errs, &OptionError{Option: "WithBatch size", Value: o.batch.size,
			Reason: fmt.Sprintf("above SchedulerConfig.MaxInFlight %d: a batch could never fill", o.sched.MaxInFlight)})
	}
	return errors.Join(errs...)
}

func (b *Bus) addBatch(topic, group string, spec batchSpec, opts []SubscribeOption) error {
	o, err := subscribeOptionsOf(topic, group, opts)
	if err != nil {
		return err
	}
	if o.batch == nil {
		o.batch = &batchOptions{size: DefaultBatchSize, linger: DefaultBatchLinger}
	}
	if err := o.validateBatch(); err != nil {
		return err
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
	if r.raw != nil || len(r.handlers) > 0 || r.batch != nil {
		return fmt.Errorf("%w: topic %q group %q has a handler already; a batch handler takes the topic and group alone", ErrDuplicateHandler, topic, group)
	}
	p, err := b.batchPipeline(r, spec, o)
	if err != nil {
		return err
	}
	if o.schedSet {
		r.cfg, r.schedSet = o.sched, true
	}
	r.cfg.Concurrency = max(r.cfg.Concurrency, o.concurrency)
	r.batch = p
	b.routes[routeKey{topic, group}] = r
	b.order = append(b.order, r)
	if b.started {
		return b.startRoute(r)
	}
	return nil
}

// batchPipeline builds the batch pipeline of r from spec and o, with the
// settings Bus.chain gives single handlers.
func (b *Bus) batchPipeline(r *route, spec batchSpec, o *subscribeOptions) (*batchPipeline, error) {
	dl, err := b.deadLetterSettings(r, o)
	if err != nil {
		return nil, err
	}
	if dl.Topic == nil {
		dl.Topic = DeadLetterTopic
	}
	if dl.now == nil {
		dl.now = time.Now
	}
	p := &batchPipeline{
		size: o.batch.size, linger: o.batch.linger,
		group: r.group, event: spec.event,
		decode: spec.decode, handle: spec.handle,
		dl: dl, obs: r.obs,
	}
	if o.retry != nil {
		cfg := o.retry.withDefaults()
		p.retry = &cfg
	}
	if o.dedup != nil {
		cfg := b.dedupConfig(*o.dedup).withDefaults()
		p.dedup = &cfg
	}
	return p, nil
}

// batchSchedulerConfig is cfg for a batch subscription: without a
// MaxInFlight of its own, room for a batch per worker and one filling.
func batchSchedulerConfig(cfg SchedulerConfig, p *batchPipeline) SchedulerConfig {
	if cfg.MaxInFlight == 0 {
		c := max(cfg.Concurrency, 1)
		cfg.MaxInFlight = max(4*c, 256, cfg.FetchBatch, (c+1)*p.size)
	}
	return cfg
}
