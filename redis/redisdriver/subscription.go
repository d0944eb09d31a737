package redisdriver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/internal/errsink"
)

// handBackTime is the delivery time (ms since the epoch) Close gives the
// entries it hands back: so long ago that every member's XAUTOCLAIM takes
// them at its next scan, whatever its claim min idle. Redis replaces a
// delivery time in the future by "now", so a fixed point in the past is
// the one value that works whatever the server's clock says.
const handBackTime = 1

// ackChunk bounds the IDs of one XACK.
const ackChunk = 1000

// subscription is one consumer of a group; it implements herald.Subscription.
//
// Fetch runs on the caller's goroutine (one at a time). One background
// goroutine flushes acknowledgments (XACK, batched) and keeps in-flight
// entries claimed (touchScript, every third of the claim min idle).
type subscription struct {
	d        *Driver
	client   goredis.UniversalClient
	cfg      *config
	topic    string
	group    string
	stream   string
	consumer string
	report   errsink.Sink // ReportErrorsTo's function; before it, cfg.onError

	fetchMu       sync.Mutex // held by Fetch; Close takes it to wait for a Fetch to end
	readArgs      goredis.XReadGroupArgs
	nextReclaim   time.Time // fetchMu
	reclaimCursor string    // fetchMu; where the XAUTOCLAIM scan goes on

	mu       sync.Mutex
	closed   bool
	seq      uint64
	inflight map[uint64]tracked // delivered, not acknowledged, by Delivery.Seq
	acks     []string           // acknowledged, not flushed
	spare    []string           // the other ack buffer

	closing  chan struct{} // closed when Close starts
	wake     chan struct{} // capacity 1: acknowledgments wait to be flushed
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bgDone   chan struct{}

	closeOnce sync.Once
	closeErr  error
}

type tracked struct {
	id       string // stream entry ID
	lost     bool   // another consumer took it over; no longer touched
	released bool   // never started (herald.Releaser): its hand-back does not count
}

func newSubscription(d *Driver, topic, group, consumer string) *subscription {
	s := &subscription{
		d:             d,
		client:        d.client,
		cfg:           &d.cfg,
		topic:         topic,
		group:         group,
		stream:        d.StreamKey(topic),
		consumer:      consumer,
		reclaimCursor: "0-0",
		inflight:      make(map[uint64]tracked),
		closing:       make(chan struct{}),
		wake:          make(chan struct{}, 1),
		bgDone:        make(chan struct{}),
	}
	s.readArgs = goredis.XReadGroupArgs{Group: group, Consumer: consumer, Streams: []string{s.stream, ">"}}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	return s
}

// createGroup creates the group (and the stream) at start, unless it
// exists. A group at the end ("$") is created with its read count set, so
// that Redis can count its lag (createAtEndScript).
func (s *subscription) createGroup(ctx context.Context, start string) error {
	var err error
	if start == "$" {
		err = createAtEndScript.Run(ctx, s.client, []string{s.stream}, s.group).Err()
	} else {
		err = s.client.XGroupCreateMkStream(ctx, s.stream, s.group, start).Err()
	}
	if err != nil && !goredis.HasErrorPrefix(err, "BUSYGROUP") {
		return fail("create group", s.topic, s.group, fmt.Sprintf("(stream %q)", s.stream), err)
	}
	return nil
}

// recreateGroup creates the group again after it vanished under a running
// consumer (a restart of a server without persistence, a deleted stream, an
// XGROUP DESTROY). It starts at the beginning of the stream whatever the
// start position: "$" would skip what was written between the loss and now,
// silently. What the stream still holds from before is delivered again.
func (s *subscription) recreateGroup(ctx context.Context) error {
	return s.createGroup(ctx, "0")
}

// Fetch first takes over entries that other consumers left idle for the
// claim min idle time (XAUTOCLAIM, on the reclaim interval), then reads new
// entries (XREADGROUP >), blocking for at most the block time per read.
func (s *subscription) Fetch(ctx context.Context, dst []herald.Delivery) (int, error) {
	if len(dst) == 0 {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if s.isClosing() {
			return 0, fail("fetch", s.topic, s.group, "", herald.ErrClosed)
		}
		now := time.Now()
		if !now.Before(s.nextReclaim) {
			n, err := s.reclaim(ctx, dst)
			if err != nil {
				return 0, err
			}
			if n > 0 {
				return n, nil
			}
			if s.reclaimCursor != "0-0" {
				continue // the scan has more pending entries to look at
			}
		}

		block := min(s.cfg.block, time.Until(s.nextReclaim))
		if deadline, ok := ctx.Deadline(); ok {
			// go-redis does not see ctx while a read blocks; keep the
			// read within the caller's deadline.
			block = min(block, time.Until(deadline))
		}
		block = max(block, time.Millisecond) // 0 would block forever
		s.readArgs.Count = int64(len(dst))
		s.readArgs.Block = block
		streams, err := s.client.XReadGroup(ctx, &s.readArgs).Result()
		switch {
		case errors.Is(err, goredis.Nil):
			continue
		case err != nil && ctx.Err() != nil:
			return 0, ctx.Err()
		case err != nil && isGroupGone(err):
			if err := s.recreateGroup(ctx); err != nil {
				return 0, err
			}
			continue
		case err != nil:
			return 0, fail("read", s.topic, s.group, "", err)
		}
		if len(streams) == 0 || len(streams[0].Messages) == 0 {
			continue
		}
		return s.deliver(streams[0].Messages, nil, dst)
	}
}

// reclaim takes over up to len(dst) entries idle for the claim min idle
// time, with their delivery counts, and ends a scan of the pending entries
// list by removing departed consumers.
func (s *subscription) reclaim(ctx context.Context, dst []herald.Delivery) (int, error) {
	msgs, next, deleted, err := s.client.XAutoClaimWithDeleted(ctx, &goredis.XAutoClaimArgs{
		Stream:   s.stream,
		Group:    s.group,
		Consumer: s.consumer,
		MinIdle:  s.cfg.claimMinIdle,
		Start:    s.reclaimCursor,
		Count:    int64(len(dst)),
	}).Result()
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if isGroupGone(err) {
			s.reclaimCursor = "0-0"
			return 0, s.recreateGroup(ctx)
		}
		return 0, fail("reclaim", s.topic, s.group, "", err)
	}
	s.reclaimCursor = next
	if next == "0-0" {
		s.nextReclaim = time.Now().Add(s.cfg.reclaimInterval)
		s.removeDeparted(ctx)
	}
	if len(deleted) > 0 {
		// Redis 7 drops these from the pending list itself.
		s.onError(&EntriesError{Topic: s.topic, Group: s.group, IDs: deleted, Err: ErrTrimmed})
	}
	if len(msgs) == 0 {
		return 0, nil
	}

	s.mu.Lock()
	mine := make(map[string]bool, len(s.inflight)+len(s.acks))
	for _, e := range s.inflight {
		mine[e.id] = true
	}
	for _, id := range s.acks {
		mine[id] = true
	}
	s.mu.Unlock()
	live := msgs[:0]
	var gone []string
	for _, m := range msgs {
		switch {
		case mine[m.ID]:
			// This subscription still handles it: its touches failed for
			// a while (Redis was unreachable), and XAUTOCLAIM gave it back
			// to the same consumer. Delivering it again would run it twice.
		case m.Values == nil:
			gone = append(gone, m.ID) // Redis 6.2's way of saying "deleted"
		default:
			live = append(live, m)
		}
	}
	if len(gone) > 0 {
		s.onError(&EntriesError{Topic: s.topic, Group: s.group, IDs: gone, Err: ErrTrimmed})
		if err := s.client.XAck(ctx, s.stream, s.group, gone...).Err(); err != nil {
			s.onError(fail("ack", s.topic, s.group, fmt.Sprintf("(%d deleted entries)", len(gone)), err))
		}
	}
	if len(live) == 0 {
		return 0, nil
	}

	// XAUTOCLAIM counted the delivery but does not return the count; the
	// entries are this consumer's now, so reading the counts next is exact.
	counts := make([]int, len(live))
	pipe := s.client.Pipeline()
	cmds := make([]*goredis.XPendingExtCmd, len(live))
	for i, m := range live {
		cmds[i] = pipe.XPendingExt(ctx, &goredis.XPendingExtArgs{
			Stream: s.stream, Group: s.group, Start: m.ID, End: m.ID, Count: 1, Consumer: s.consumer,
		})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		s.onError(fail("reclaim", s.topic, s.group,
			fmt.Sprintf("delivery counts of %d entries (delivering them with count unknown)", len(live)), err))
	}
	for i, c := range cmds {
		counts[i] = 0 // unknown
		if p, err := c.Result(); err == nil && len(p) == 1 {
			counts[i] = int(p[0].RetryCount)
		}
	}
	return s.deliver(live, counts, dst)
}

// deliver decodes msgs into dst and tracks them as in flight. counts nil
// means first deliveries. After Close began it delivers nothing: the
// entries stay pending, and Close hands them back.
func (s *subscription) deliver(msgs []goredis.XMessage, counts []int, dst []herald.Delivery) (int, error) {
	n := min(len(msgs), len(dst))
	for i := range n {
		count := 1
		if counts != nil {
			count = counts[i]
		}
		dst[i] = herald.Delivery{Message: decodeEntry(s.topic, msgs[i].ID, msgs[i].Values), Count: count, Ref: s}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		clear(dst[:n])
		return 0, fail("fetch", s.topic, s.group, "", herald.ErrClosed)
	}
	for i := range n {
		s.seq++
		s.inflight[s.seq] = tracked{id: msgs[i].ID}
		dst[i].Seq = s.seq
	}
	return n, nil
}

// removeDeparted deletes consumers of the group that hold no pending
// entries and were silent for the consumer idle time. deleteConsumerScript
// re-checks the pending entries atomically, so a consumer that read
// something since XINFO is kept.
func (s *subscription) removeDeparted(ctx context.Context) {
	consumers, err := s.client.XInfoConsumers(ctx, s.stream, s.group).Result()
	if err != nil {
		if !isGroupGone(err) && ctx.Err() == nil {
			s.onError(fail("list consumers", s.topic, s.group, "", err))
		}
		return
	}
	for _, c := range consumers {
		if c.Name == s.consumer || c.Pending > 0 || c.Idle < s.cfg.consumerIdle {
			continue
		}
		if err := deleteConsumerScript.Run(ctx, s.client, []string{s.stream}, s.group, c.Name).Err(); err != nil {
			s.onError(fail("remove departed consumer", s.topic, s.group, fmt.Sprintf("%q", c.Name), err))
			return
		}
	}
}

// Ack queues the entry's XACK for the background flush and returns; the
// flush batches the XACKs of concurrent Acks into one command. An
// acknowledgment that was not flushed when the process dies is lost, and
// the entry is delivered again (at-least-once).
func (s *subscription) Ack(ctx context.Context, d herald.Delivery) error {
	if d.Ref != any(s) {
		return fail("ack", s.topic, s.group, "message "+messageID(d), errors.New("the delivery belongs to another subscription"))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fail("ack", s.topic, s.group, "message "+messageID(d), herald.ErrClosed)
	}
	e, ok := s.inflight[d.Seq]
	if !ok {
		s.mu.Unlock()
		return fail("ack", s.topic, s.group, "message "+messageID(d), errors.New("not in flight (acknowledged twice?)"))
	}
	delete(s.inflight, d.Seq)
	s.acks = append(s.acks, e.id)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

func messageID(d herald.Delivery) string {
	if d.Message == nil {
		return "<nil>"
	}
	return d.Message.ID
}

// background flushes acknowledgments as they come, and touches in-flight
// entries every third of the claim min idle time, until Close.
func (s *subscription) background() {
	defer close(s.bgDone)
	touch := time.NewTicker(s.cfg.claimMinIdle / 3)
	defer touch.Stop()
	retry := backoff.New(50*time.Millisecond, 5*time.Second)
	for {
		select {
		case <-s.closing:
			return
		case <-touch.C:
			s.touch(s.bgCtx)
		case <-s.wake:
			if err := s.flush(s.bgCtx); err != nil {
				if s.isClosing() {
					return // Close flushes again, and reports
				}
				s.onError(err)
				t := time.NewTimer(retry.Next())
				select {
				case <-s.closing:
					t.Stop()
					return
				case <-t.C:
				}
				select {
				case s.wake <- struct{}{}:
				default:
				}
				continue
			}
			retry.Reset()
		}
	}
}

// flush sends the queued acknowledgments. On failure the unsent ones are
// queued again, ahead of newer ones.
func (s *subscription) flush(ctx context.Context) error {
	s.mu.Lock()
	ids := s.acks
	s.acks, s.spare = s.spare, nil
	s.mu.Unlock()
	rest := ids
	for len(rest) > 0 {
		chunk := rest[:min(len(rest), ackChunk)]
		err := s.client.XAck(ctx, s.stream, s.group, chunk...).Err()
		if err != nil && !isGroupGone(err) {
			s.mu.Lock()
			s.acks = append(rest, s.acks...)
			s.mu.Unlock()
			return fail("ack", s.topic, s.group, fmt.Sprintf("(%d entries)", len(rest)), err)
		}
		if err != nil {
			// The group vanished (a restart without persistence, a deleted
			// stream): there is nothing left to acknowledge.
			s.onError(fail("ack", s.topic, s.group, fmt.Sprintf("(%d entries) dropped, the group is gone", len(rest)), err))
			break
		}
		rest = rest[len(chunk):]
	}
	clear(ids)
	s.mu.Lock()
	if s.spare == nil {
		s.spare = ids[:0]
	}
	s.mu.Unlock()
	return nil
}

// touch keeps this consumer's in-flight entries claimed (touchScript) and
// reports the ones another consumer took over.
func (s *subscription) touch(ctx context.Context) {
	s.mu.Lock()
	ids := make([]any, 0, 2+len(s.inflight)+len(s.acks))
	for _, e := range s.inflight {
		if !e.lost {
			ids = append(ids, e.id)
		}
	}
	for _, id := range s.acks {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	var lost []string
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), maxScriptIDs)]
		ids = ids[len(chunk):]
		args := append([]any{s.group, s.consumer}, chunk...)
		res, err := touchScript.Run(ctx, s.client, []string{s.stream}, args...).StringSlice()
		if err != nil {
			if !isGroupGone(err) && ctx.Err() == nil {
				s.onError(fail("claim keep-alive", s.topic, s.group, fmt.Sprintf("(%d in-flight entries)", len(chunk)), err))
			}
			return
		}
		lost = append(lost, res...)
	}
	if len(lost) == 0 {
		return
	}
	gone := make(map[string]bool, len(lost))
	for _, id := range lost {
		gone[id] = true
	}
	var reported []string
	s.mu.Lock()
	for seq, e := range s.inflight {
		if gone[e.id] && !e.lost {
			e.lost = true
			s.inflight[seq] = e
			reported = append(reported, e.id)
		}
	}
	s.mu.Unlock()
	if len(reported) > 0 {
		s.onError(&EntriesError{Topic: s.topic, Group: s.group, IDs: reported, Err: ErrClaimLost})
	}
}

// Close stops a running Fetch (within the block time), flushes the queued
// acknowledgments, and hands this consumer's pending entries back to the
// group: they get a delivery time far in the past, so the next XAUTOCLAIM
// of any member takes them, with their delivery count going up by one.
// A consumer left with no pending entries is deleted from the group; one
// whose entries could not be handed back stays until another member has
// taken them over. Later calls return the first call's result.
func (s *subscription) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closeErr = s.close(ctx)
		s.d.forget(s)
	})
	return s.closeErr
}

func (s *subscription) close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	close(s.closing)
	s.bgCancel()
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	<-s.bgDone

	var errs []error
	if err := s.flush(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := s.handBack(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Release marks deliveries the scheduler fetched and never started
// (herald.Releaser): Close hands them back with the delivery count they
// had before this consumer read them, so the next member's XAUTOCLAIM
// counts the same attempt again instead of one more.
func (s *subscription) Release(ds []herald.Delivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		if e, ok := s.inflight[d.Seq]; ok && d.Ref == any(s) {
			e.released = true
			s.inflight[d.Seq] = e
		}
	}
}

// handBack makes this consumer's pending entries claimable by any member at
// once, and deletes the consumer when it holds none. An entry's delivery
// count stays as it is, so the next XAUTOCLAIM counts one more delivery
// (a handler may have run); a released entry's goes one down first.
func (s *subscription) handBack(ctx context.Context) error {
	s.mu.Lock()
	released := make(map[string]bool)
	for _, e := range s.inflight {
		if e.released {
			released[e.id] = true
		}
	}
	s.mu.Unlock()
	start := "-"
	for {
		pending, err := s.client.XPendingExt(ctx, &goredis.XPendingExtArgs{
			Stream: s.stream, Group: s.group, Start: start, End: "+", Count: ackChunk, Consumer: s.consumer,
		}).Result()
		if err != nil {
			if isGroupGone(err) {
				return nil // nothing of the group is left to hand back
			}
			return fail("hand back", s.topic, s.group, "(listing the pending entries)", err)
		}
		if len(pending) == 0 {
			break
		}
		// One XCLAIM per delivery count to set (-1: leave it as it is).
		byCount := make(map[int64][]any)
		for _, p := range pending {
			count := int64(-1)
			if released[p.ID] {
				count = max(p.RetryCount-1, 0)
			}
			byCount[count] = append(byCount[count], p.ID)
		}
		for count, ids := range byCount {
			args := make([]any, 0, 12+len(ids))
			args = append(args, "XCLAIM", s.stream, s.group, s.consumer, 0)
			args = append(args, ids...)
			args = append(args, "TIME", handBackTime)
			if count >= 0 {
				args = append(args, "RETRYCOUNT", count)
			}
			args = append(args, "JUSTID")
			if err := s.client.Do(ctx, args...).Err(); err != nil {
				return fail("hand back", s.topic, s.group, fmt.Sprintf("(%d pending entries)", len(ids)), err)
			}
		}
		if len(pending) < ackChunk {
			break
		}
		start = "(" + pending[len(pending)-1].ID
	}
	if err := deleteConsumerScript.Run(ctx, s.client, []string{s.stream}, s.group, s.consumer).Err(); err != nil && !isGroupGone(err) {
		return fail("leave group", s.topic, s.group, "", err)
	}
	return nil
}

func (s *subscription) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// ReportErrorsTo sends the errors the subscription meets in the background
// to report instead of the driver's error handler (herald.ErrorReporter):
// the herald scheduler passes its own, so they reach the Bus's handler.
func (s *subscription) ReportErrorsTo(report func(error)) { s.report.Set(report) }

func (s *subscription) onError(err error) { s.report.Report(err, s.cfg.onError) }
