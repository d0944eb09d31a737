package outbox

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
	"go.opentelemetry.io/otel/trace"
)

// row is one outbox row read by the relay.
type row struct {
	id       int64
	attempts int
	msg      herald.Message
	bad      error // the row could not be decoded: it fails without a write

	traceRead   bool              // traceParent was read from the headers
	traceParent trace.SpanContext // the span that wrote the row, if any
}

// blockKey names what a failing row holds back: its key, or for a row
// without a key, only itself.
type blockKey struct {
	key string // the message key; "" for a keyless row
	id  int64  // the row id of a keyless row; 0 for a keyed one
}

func (rw *row) blockKey() blockKey {
	if rw.msg.Key != "" {
		return blockKey{key: rw.msg.Key}
	}
	return blockKey{id: rw.id}
}

// maxTracked bounds the relay's in-memory failure bookkeeping. Past it the
// bookkeeping starts over, which only costs early retries.
const maxTracked = 10000

// keyState is what the active relay remembers between rounds: keys held
// back after a charged failure and keys suspected after an outage round.
// It lives for one lease; a new active relay starts afresh and relies on
// the attempts column.
type keyState struct {
	blocked  map[blockKey]time.Time // held back until then
	suspects map[blockKey]struct{}  // failed in a round where nothing succeeded
	// afterOutage says the last round was an outage round. The round
	// after one is where the target comes back, possibly in the middle of
	// it: a row refused just before the first success says nothing about
	// the row, so that round charges nothing transient either.
	afterOutage bool
}

func newKeyState() *keyState {
	return &keyState{blocked: make(map[blockKey]time.Time), suspects: make(map[blockKey]struct{})}
}

// expire forgets blocks that have ended.
func (s *keyState) expire(now time.Time) {
	for k, until := range s.blocked {
		if !now.Before(until) {
			delete(s.blocked, k)
		}
	}
}

// nextExpiry returns when the earliest block ends.
func (s *keyState) nextExpiry() (time.Time, bool) {
	var next time.Time
	for _, until := range s.blocked {
		if next.IsZero() || until.Before(next) {
			next = until
		}
	}
	return next, !next.IsZero()
}

// deliverable drops the rows of blocked keys (the read query excludes
// them too, up to a limit) and moves the rows of suspected keys behind the
// others, so that a round probes the target with rows that are not
// suspected first. The order within a key never changes.
func (s *keyState) deliverable(rows []*row, now time.Time) []*row {
	out := rows[:0]
	var suspects []*row
	for _, rw := range rows {
		k := rw.blockKey()
		if until, ok := s.blocked[k]; ok && now.Before(until) {
			continue
		}
		if _, ok := s.suspects[k]; ok {
			suspects = append(suspects, rw)
			continue
		}
		out = append(out, rw)
	}
	return append(out, suspects...)
}

func (s *keyState) block(k blockKey, until time.Time) {
	if len(s.blocked) >= maxTracked {
		clear(s.blocked)
	}
	s.blocked[k] = until
	delete(s.suspects, k)
}

func (s *keyState) suspect(k blockKey) {
	if len(s.suspects) >= maxTracked {
		clear(s.suspects)
	}
	s.suspects[k] = struct{}{}
}

// excluded returns the keys and, for rows without a key, the ids the
// relay holds back (at most maxExcluded of each; the rest are skipped
// after the read, by deliverable).
func (s *keyState) excluded() (keys []string, ids []int64) {
	for k := range s.blocked {
		if k.key != "" && len(keys) < maxExcluded {
			keys = append(keys, k.key)
		} else if k.key == "" && len(ids) < maxExcluded {
			ids = append(ids, k.id)
		}
	}
	return keys, ids
}

// probeLimit is how many keys may fail, each written alone with an error
// that is neither permanent nor a sign of an unreachable target, in a round
// where nothing succeeded, before the relay calls it an outage: the target
// rejects everything, so the failures say nothing about the rows.
const probeLimit = 3

// failure is a row whose write, alone, failed.
type failure struct {
	row *row
	err error
}

// round is the outcome of delivering one batch. Lanes update it
// concurrently.
type round struct {
	mu            sync.Mutex
	sent          []*row
	failed        []failure
	failedKeys    map[blockKey]struct{} // keys with a failed row: their later rows wait
	transientKeys int                   // keys that failed with a non-permanent error
	success       bool                  // the target accepted some write
	aborted       error                 // the target is unreachable or the relay stops
	writeErrs     int
}

// stoppedLocked reports whether the round should write no more; rd.mu held.
func (rd *round) stoppedLocked() bool {
	return rd.aborted != nil || (!rd.success && rd.transientKeys >= probeLimit)
}

// pending drops the rows whose key already failed in this round, and
// returns nil once the round has stopped.
func (rd *round) pending(rows []*row) []*row {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.stoppedLocked() {
		return nil
	}
	if len(rd.failedKeys) == 0 {
		return rows
	}
	out := make([]*row, 0, len(rows))
	for _, rw := range rows {
		if _, ok := rd.failedKeys[rw.blockKey()]; !ok {
			out = append(out, rw)
		}
	}
	return out
}

// outage reports a round that points at the target rather than at rows:
// nothing got through, and the target was unreachable or rejected several
// keys. Its non-permanent failures are not charged.
func (rd *round) outage() bool {
	return !rd.success && (rd.aborted != nil || rd.transientKeys >= probeLimit)
}

func (rd *round) firstError() error {
	if rd.aborted != nil {
		return rd.aborted
	}
	if len(rd.failed) > 0 {
		return rd.failed[0].err
	}
	return nil
}

// permanent reports an error that says the message itself is at fault: it
// is charged to the row even in an outage round.
func permanent(err error) bool {
	return herald.IsPermanent(err) ||
		errors.Is(err, herald.ErrMessageTooLarge) ||
		errors.Is(err, herald.ErrInvalidName) ||
		errors.Is(err, herald.ErrNilEvent)
}

// unreachable reports an error that says the target could not be reached
// or did not answer in time (or that the relay is stopping): it is never
// charged to a row, and ends the round.
func unreachable(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, herald.ErrClosed)
}

// deliver writes rows to the target: one Write per lane, lanes at once.
// A lane whose Write fails is split in halves, in order, down to single
// rows, so that a failure is pinned on the row that causes it while the
// rest of the lane gets through; the rows after a failed row of the same
// key are held back for the next round.
func (r *Relay) deliver(ctx context.Context, rows []*row, s *keyState) *round {
	rd := &round{failedKeys: make(map[blockKey]struct{})}
	if slices.ContainsFunc(rows, func(rw *row) bool { return rw.bad != nil }) {
		// A row that could not be decoded fails without a write, and the
		// later rows of its key wait, as after a failed write.
		good := make([]*row, 0, len(rows))
		for _, rw := range rows {
			k := rw.blockKey()
			switch _, held := rd.failedKeys[k]; {
			case rw.bad != nil:
				rd.failedKeys[k] = struct{}{}
				rd.failed = append(rd.failed, failure{rw, rw.bad})
			case !held:
				good = append(good, rw)
			}
		}
		rows = good
	}
	if r.cfg.Lanes == 1 {
		r.writeRows(ctx, rd, rows)
	} else {
		lanes := make([][]*row, r.cfg.Lanes)
		for _, rw := range rows {
			i := laneOf(rw, len(lanes))
			lanes[i] = append(lanes[i], rw)
		}
		var wg sync.WaitGroup
		for _, lane := range lanes {
			if len(lane) > 0 {
				wg.Go(func() { r.writeRows(ctx, rd, lane) })
			}
		}
		wg.Wait()
	}
	return rd
}

func laneOf(rw *row, n int) int {
	if rw.msg.Key == "" {
		return int(uint64(rw.id) % uint64(n))
	}
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(rw.msg.Key); i++ {
		h ^= uint32(rw.msg.Key[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

func (r *Relay) writeRows(ctx context.Context, rd *round, rows []*row) {
	rows = rd.pending(rows)
	if len(rows) == 0 {
		return
	}
	msgs := make([]*herald.Message, len(rows))
	for i, rw := range rows {
		msgs[i] = &rw.msg
	}
	var spans []trace.Span
	if r.tel != nil {
		spans = r.tel.start(ctx, rows)
	}
	wctx, cancel := context.WithTimeout(ctx, r.cfg.WriteTimeout)
	err := r.target.Write(wctx, msgs)
	cancel()
	endSpans(spans, err)
	rd.mu.Lock()
	if err == nil {
		rd.sent = append(rd.sent, rows...)
		rd.success = true
		rd.mu.Unlock()
		return
	}
	rd.writeErrs++
	if ctx.Err() != nil || unreachable(err) {
		if rd.aborted == nil {
			rd.aborted = err
		}
		rd.mu.Unlock()
		return
	}
	if len(rows) == 1 {
		rw := rows[0]
		k := rw.blockKey()
		if _, seen := rd.failedKeys[k]; !seen && !permanent(err) {
			rd.transientKeys++
		}
		rd.failedKeys[k] = struct{}{}
		rd.failed = append(rd.failed, failure{rw, err})
		rd.mu.Unlock()
		return
	}
	rd.mu.Unlock()
	mid := len(rows) / 2
	r.writeRows(ctx, rd, rows[:mid])
	r.writeRows(ctx, rd, rows[mid:])
}

// settle records the round in the table on the lease's connection: sent
// rows are deleted (or moved to the sent table), failures charged to their
// rows are counted and may quarantine them, and the relay's key state
// learns which keys to hold back.
func (r *Relay) settle(ctx context.Context, conn *sql.Conn, rd *round, s *keyState) error {
	r.failures.Add(uint64(rd.writeErrs))
	if len(rd.sent) > 0 {
		if err := r.removeSent(ctx, conn, rd.sent); err != nil {
			return err
		}
		r.sent.Add(uint64(len(rd.sent)))
		for _, rw := range rd.sent {
			delete(s.suspects, rw.blockKey())
		}
	}
	now := time.Now()
	charged := 0
	outage := rd.outage()
	if len(rd.failed) > 0 {
		r.event(RelayEvent{Kind: RoundFailed, Err: rd.firstError(), Rows: len(rd.failed), Outage: outage})
	}
	spare := outage || s.afterOutage
	s.afterOutage = outage
	for _, f := range rd.failed {
		k := f.row.blockKey()
		if spare && !permanent(f.err) {
			// Charging rows for an outage would quarantine healthy rows.
			// The row becomes a suspect instead: the next round tries
			// other rows first, so a few poison rows at the head of the
			// table cannot pass for an outage for ever (they are charged
			// from the second round after it).
			s.suspect(k)
			continue
		}
		attempts := f.row.attempts + 1
		if r.cfg.MaxAttempts > 0 && attempts >= r.cfg.MaxAttempts {
			if err := r.quarantine(ctx, conn, f.row, attempts, f.err, now); err != nil {
				return err
			}
			r.quarantined.Add(1)
			delete(s.blocked, k)
			delete(s.suspects, k)
			r.log.Error("outbox relay: row quarantined",
				slog.Int64("id", f.row.id), slog.String("message_id", f.row.msg.ID),
				slog.String("topic", f.row.msg.Topic), slog.String("key", f.row.msg.Key),
				slog.Int("attempts", attempts), slog.Any("error", f.err))
			continue
		}
		if err := r.charge(ctx, conn, f.row, f.err); err != nil {
			return err
		}
		charged++
		s.block(k, now.Add(backoff.Exponential(r.cfg.MinBackoff, r.cfg.MaxBackoff, attempts)))
	}
	if charged > 0 {
		r.log.Warn("outbox relay: rows failed; their keys wait for a retry",
			slog.Int("rows", charged), slog.Any("error", rd.firstError()))
	}
	return nil
}
