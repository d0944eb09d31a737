package natsdriver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/errsink"
)

// subscription is one member of a group: a view of the group's durable
// pull consumer. It keeps the deliveries it handed out and not yet
// acknowledged (held), to signal the server that they are in progress and
// to hand them back on Close.
type subscription struct {
	d            *Driver
	topic, group string
	cons         jetstream.Consumer
	stream       string
	consumer     string
	kv           jetstream.KeyValue // release records

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	closed atomic.Bool
	once   sync.Once
	wg     sync.WaitGroup // the in-progress ticker

	mu   sync.Mutex
	held map[*held]struct{}
	// acks are the acknowledgments sent and not yet confirmed, by token
	// (see acks.go); acksIdle is closed when the last one settles.
	acks     map[string]pendingAck
	ackSeq   uint64
	acksIdle chan struct{}
	ackInbox string
	ackSub   *nats.Subscription

	fetchMu sync.Mutex             // Fetch, and Close after it
	batch   jetstream.MessageBatch // the pull request under way, or nil
	// batchEnd is when the pull request under way should have ended: a
	// request the server lost (it restarted) is abandoned after it.
	batchEnd *time.Timer

	report errsink.Sink
}

// held is a delivery handed out and not yet acknowledged.
type held struct {
	msg          jetstream.Msg
	touched      time.Time // fetched, or last signalled in progress
	numDelivered uint64
	seq          uint64 // in the stream
	key          string // of its release record
	released     uint64 // hand-backs not counted, as its record says
}

var (
	_ herald.Subscription  = (*subscription)(nil)
	_ herald.LagReporter   = (*subscription)(nil)
	_ herald.ErrorReporter = (*subscription)(nil)
	_ herald.Releaser      = (*subscription)(nil)
)

func newSubscription(d *Driver, topic, group string, cons jetstream.Consumer, kv jetstream.KeyValue) *subscription {
	ctx, cancel := context.WithCancel(context.Background())
	info := cons.CachedInfo()
	return &subscription{d: d, topic: topic, group: group, cons: cons, stream: info.Stream, consumer: info.Name, kv: kv,
		ctx: ctx, cancel: cancel, held: make(map[*held]struct{}), acks: make(map[string]pendingAck)}
}

func (s *subscription) fail(op, detail string, err error) error {
	return fail(op, s.topic, s.group, detail, err)
}

// start listens for acknowledgment confirmations and runs the
// in-progress ticker until Close.
func (s *subscription) start() error {
	if err := s.listenAcks(); err != nil {
		return err
	}
	s.wg.Go(func() {
		t := time.NewTicker(s.d.cfg.ackWait / 4)
		defer t.Stop()
		for {
			select {
			case <-s.ctx.Done():
				return
			case now := <-t.C:
				s.touch(now)
				s.expireAcks(now)
			}
		}
	})
	return nil
}

// touch tells the server that deliveries held for more than half the
// AckWait are still being worked on, so that it does not deliver them
// again while their handlers run.
func (s *subscription) touch(now time.Time) {
	s.mu.Lock()
	var due []*held
	for h := range s.held {
		if now.Sub(h.touched) >= s.d.cfg.ackWait/2 {
			h.touched = now
			due = append(due, h)
		}
	}
	s.mu.Unlock()
	for _, h := range due {
		if err := h.msg.InProgress(); err != nil {
			s.onError(s.fail("in progress", "", err))
		}
	}
}

// Fetch pulls up to len(dst) messages from the group's consumer, waiting
// until at least one is there, ctx is done or the subscription is closed,
// and returns as soon as it has some. Delivery.Count is the server's
// count less the hand-backs that were not attempts (see "Delivery counts"
// in the package documentation); NumDelivered has the server's own.
//
// A pull request is not cancelled with ctx: the server may have sent its
// messages already, and a cancelled request would drop them until the
// AckWait ends, behind later messages of their keys. What it brings after
// ctx ended goes to the next Fetch, or back to the server on Close.
func (s *subscription) Fetch(ctx context.Context, dst []herald.Delivery) (int, error) {
	if s.closed.Load() {
		return 0, s.fail("fetch", "", herald.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if len(dst) == 0 {
		return 0, nil
	}
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	for {
		if s.batch == nil {
			b, err := s.cons.Fetch(len(dst), jetstream.FetchMaxWait(s.d.cfg.fetchWait))
			if err != nil {
				return 0, s.fail("fetch", "", err)
			}
			s.batch = b
			s.batchEnd = time.NewTimer(s.d.cfg.fetchWait + batchSlack)
		}
		select {
		case msg, ok := <-s.batch.Messages():
			if !ok {
				if err := s.endBatch(); err != nil {
					return 0, s.fail("fetch", "", err)
				}
				continue
			}
			return s.collect(msg, dst), nil
		case <-s.batchEnd.C:
			// Overdue: what it brought before the end comes first.
			if msg, ok := s.buffered(); ok {
				s.batchEnd.Reset(0) // and look again next time
				return s.collect(msg, dst), nil
			}
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.ctx.Done():
			return 0, s.fail("fetch", "", herald.ErrClosed)
		}
	}
}

// buffered returns a message the pull request under way has brought
// already, without waiting. When there is none it forgets the request:
// it ended (its error is reported) or it is lost, and then what the server
// sent for it comes back after the AckWait.
func (s *subscription) buffered() (jetstream.Msg, bool) {
	select {
	case msg, ok := <-s.batch.Messages():
		if ok {
			return msg, true
		}
		if err := s.endBatch(); err != nil {
			s.onError(s.fail("fetch", "", err))
		}
	default:
		s.batch = nil
	}
	return nil, false
}

// batchSlack is how long after its expiry a pull request may still end
// on its own: the server's answer on its way.
const batchSlack = time.Second

// endBatch forgets the pull request that ended and returns its error,
// if it is one (an expired request is not).
func (s *subscription) endBatch() error {
	err := s.batch.Error()
	s.batch = nil
	s.batchEnd.Stop()
	if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// collect fills dst with first and whatever else the pull request has
// already brought, without waiting.
func (s *subscription) collect(first jetstream.Msg, dst []herald.Delivery) int {
	n := 0
	add := func(msg jetstream.Msg) {
		if d, ok := s.hold(msg); ok {
			dst[n] = d
			n++
		}
	}
	add(first)
	for n < len(dst) && s.batch != nil {
		select {
		case msg, ok := <-s.batch.Messages():
			if !ok {
				if err := s.endBatch(); err != nil {
					s.onError(s.fail("fetch", "", err))
				}
				return n
			}
			add(msg)
		default:
			return n
		}
	}
	return n
}

// hold records msg as held and returns its delivery.
func (s *subscription) hold(msg jetstream.Msg) (herald.Delivery, bool) {
	meta, err := msg.Metadata()
	if err != nil {
		s.onError(s.fail("fetch", "a message without JetStream metadata was dropped", err))
		return herald.Delivery{}, false
	}
	h := s.newHeld(msg, meta)
	count := s.count(h)
	s.mu.Lock()
	s.held[h] = struct{}{}
	s.mu.Unlock()
	return herald.Delivery{Message: decode(s.topic, msg.Headers(), msg.Data()), Count: count, Ref: h, Seq: h.seq}, true
}

func (s *subscription) newHeld(msg jetstream.Msg, meta *jetstream.MsgMetadata) *held {
	return &held{msg: msg, touched: time.Now(), numDelivered: meta.NumDelivered, seq: meta.Sequence.Stream,
		key: releaseKey(s.stream, s.consumer, meta.Sequence.Stream)}
}

// NumDelivered returns how many times the server has delivered d's
// message to its group, this time included, or 0 for a delivery of
// another driver. Unlike Delivery.Count it counts hand-backs of
// deliveries no handler started too.
func NumDelivered(d herald.Delivery) uint64 {
	if h, ok := d.Ref.(*held); ok {
		return h.numDelivered
	}
	return 0
}

// Ack sends d's acknowledgment and returns without waiting for the
// server: the confirmation is collected in the background, and then d's
// release record, if any, is deleted. An acknowledgment the server does
// not confirm within the AckWait (lost with the connection, or with the
// process) is reported, and its message is delivered again. Close waits
// for the confirmations. Ack fails for a delivery this subscription does
// not hold (acknowledged already, handed back by Close, or of another
// subscription), and when the connection cannot take the publish.
func (s *subscription) Ack(_ context.Context, d herald.Delivery) error {
	h, ok := d.Ref.(*held)
	var token string
	s.mu.Lock()
	if ok {
		_, ok = s.held[h]
		delete(s.held, h)
	}
	if ok {
		token = s.registerAck(h)
	}
	s.mu.Unlock()
	if !ok {
		err := errors.New("delivery not held by this subscription")
		if s.closed.Load() {
			err = herald.ErrClosed
		}
		return s.fail("ack", messageDetail(d), err)
	}
	if err := s.sendAck(token, h); err != nil {
		return s.fail("ack", messageDetail(d), err)
	}
	return nil
}

func messageDetail(d herald.Delivery) string {
	if d.Message == nil {
		return fmt.Sprintf("stream sequence %d", d.Seq)
	}
	return fmt.Sprintf("message %s (stream sequence %d)", d.Message.ID, d.Seq)
}

// Lag returns the messages of the group's consumer not yet delivered
// plus those delivered and not acknowledged, from one consumer info
// request (herald.LagReporter). With several members it is the group's
// lag, the same for each.
func (s *subscription) Lag(ctx context.Context) (int64, error) {
	if s.closed.Load() {
		return 0, s.fail("lag", "", herald.ErrClosed)
	}
	info, err := s.cons.Info(ctx)
	if err != nil {
		return 0, s.fail("lag", "", err)
	}
	return int64(info.NumPending) + int64(info.NumAckPending), nil
}

// Close leaves the group: it stops the in-progress signals, waits for a
// pull request under way to end (at most the fetch wait, bounded by ctx),
// waits for the server to confirm the acknowledgments sent (bounded by
// ctx and the AckWait; one left unconfirmed is reported, and its message
// may be delivered again) and hands every delivery it holds back to the
// server, in stream order (a negative acknowledgment, so that the group's
// next member receives them at once rather than after the AckWait),
// waiting for the server to have the hand-backs, bounded by ctx. A hand-back the server does not get
// is delivered again after the AckWait. The consumer stays. Later calls
// return nil.
func (s *subscription) Close(ctx context.Context) error {
	err := error(nil)
	s.once.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.wg.Wait()
		s.fetchMu.Lock()
		late := s.drainBatch(ctx)
		s.fetchMu.Unlock()
		s.mu.Lock()
		back := make([]*held, 0, len(s.held))
		for h := range s.held {
			back = append(back, h)
		}
		s.held = make(map[*held]struct{})
		s.mu.Unlock()
		s.awaitAcks(ctx)
		slices.SortFunc(back, func(a, b *held) int { return cmp.Compare(a.seq, b.seq) })
		s.releaseLate(ctx, late)
		err = s.handBack(ctx, append(msgsOf(back), late...))
		s.d.forget(s)
	})
	return err
}

// drainBatch waits for the pull request under way to end and returns the
// messages it still brought.
func (s *subscription) drainBatch(ctx context.Context) []jetstream.Msg {
	if s.batch == nil {
		return nil
	}
	var late []jetstream.Msg
	for {
		select {
		case msg, ok := <-s.batch.Messages():
			if !ok {
				s.batch = nil
				return late
			}
			late = append(late, msg)
		case <-s.batchEnd.C:
			for s.batch != nil {
				if msg, ok := s.buffered(); ok {
					late = append(late, msg)
				}
			}
			return late
		case <-ctx.Done():
			return late
		}
	}
}

// releaseLate records that the messages a pull request brought after the
// last Fetch are handed back unstarted: the scheduler never saw them.
// Close calls it after cancelling the subscription's context, so the
// records are read and written under ctx, Close's; a record that cannot
// be read is reported, and that hand-back counts.
func (s *subscription) releaseLate(ctx context.Context, late []jetstream.Msg) {
	for _, msg := range late {
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		h := s.newHeld(msg, meta)
		r, err := s.released(ctx, h.key, h.numDelivered)
		if err != nil {
			s.onError(s.fail("release", "reading the release record of stream sequence "+strconv.FormatUint(h.seq, 10)+" (its hand-back counts)", err))
			continue
		}
		h.released = r
		s.release(ctx, h)
	}
}

func msgsOf(hs []*held) []jetstream.Msg {
	out := make([]jetstream.Msg, len(hs))
	for i, h := range hs {
		out[i] = h.msg
	}
	return out
}

func (s *subscription) handBack(ctx context.Context, msgs []jetstream.Msg) error {
	if len(msgs) == 0 {
		return nil
	}
	var errs []error
	for _, m := range msgs {
		if err := m.Nak(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.d.js.Conn().FlushWithContext(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return s.fail("close", fmt.Sprintf("handing back %d deliveries (they come back after the ack wait)", len(msgs)), err)
	}
	return nil
}

// ReportErrorsTo sends the subscription's background errors to report
// (herald.ErrorReporter).
func (s *subscription) ReportErrorsTo(report func(error)) { s.report.Set(report) }

func (s *subscription) onError(err error) { s.report.Report(err, s.d.cfg.onError) }
