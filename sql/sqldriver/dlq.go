package sqldriver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// RedrivenSuffix names the table where the dead-letter store records
// redriven positions: "<table>_redriven", created by Migrate.
const RedrivenSuffix = "_redriven"

const (
	// markChunk bounds the positions one statement of MarkRedriven, or
	// of the sweep of forgotten marks, carries.
	markChunk = 500
	// sweepEvery is how often a store looks, per topic, for the marks of
	// rows retention deleted.
	sweepEvery = time.Minute
)

// redriven is the quoted name of the table of redriven positions.
func (n names) redriven() string { return n.d.Quote(n.name + RedrivenSuffix) }

// DeadLetters returns a dlq.Store over the log's topics, where
// herald.WithDeadLetter writes "<topic>.dlq" like any other topic. It is
// safe for concurrent use, and fails with herald.ErrClosed once the driver
// is closed and with ErrNoLog before Migrate.
//
// A position is "partition:position" ("3:1042"): the row's partition and
// its position in it, the number a group's position counts (the seq the
// sequencer gave the row on PostgreSQL and MySQL, the row id on SQLite;
// see the package doc). Positions are never reused. List goes through the
// partitions in order, each in position order, so the entries of one key
// come in the order they were dead-lettered; its cursor is the position of
// the last entry returned. On PostgreSQL and MySQL, List and Get first run
// one round of the sequencer, so that the rows committed before the call
// have positions even when no process subscribes. The round is best
// effort: for a database user that may not write, List and Get see the
// rows the service's own processes have sequenced. Get by message ID reads
// the topic's rows (message IDs have no index).
//
// The log is never rewritten: MarkRedriven records positions in the table
// "<table>_redriven" (RedrivenSuffix), and List and Get skip the positions
// recorded there, across processes and restarts. Dead-letter rows are
// deleted like any other by retention (WithRetention; by age alone when
// no group reads the dead-letter topic), and the store deletes the marks
// of rows that are gone, looking for them at most once a minute per topic
// when it marks.
func (d *Driver) DeadLetters() dlq.Store {
	return &deadLetters{d: d, swept: make(map[string]time.Time)}
}

type deadLetters struct {
	d *Driver

	mu    sync.Mutex
	swept map[string]time.Time // by topic: when marks of deleted rows were last looked for
}

// position is where an entry sits: a partition and a position in it.
type position struct {
	part int
	pos  int64
}

func (p position) String() string { return strconv.Itoa(p.part) + ":" + strconv.FormatInt(p.pos, 10) }

// parsePosition reads "partition:position": two unsigned decimal numbers.
func parsePosition(s string) (position, bool) {
	partText, posText, ok := strings.Cut(s, ":")
	if !ok {
		return position{}, false
	}
	part, err1 := strconv.ParseUint(partText, 10, 31)
	pos, err2 := strconv.ParseUint(posText, 10, 63)
	if err1 != nil || err2 != nil {
		return position{}, false
	}
	return position{int(part), int64(pos)}, true
}

// check validates the topic and the driver's state for operation op.
func (s *deadLetters) check(op, topic string) error {
	if err := herald.ValidateName("topic", topic); err != nil {
		return fail(op, topic, "", "", err)
	}
	if s.d.closed.Load() {
		return fail(op, topic, "", "", herald.ErrClosed)
	}
	return nil
}

// List implements dlq.Store.
func (s *deadLetters) List(ctx context.Context, topic, cursor string, limit int) ([]dlq.Entry, string, error) {
	const op = "list dead letters"
	if err := s.check(op, topic); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		return nil, "", fail(op, topic, "", fmt.Sprintf("limit %d", limit), fmt.Errorf("want at least 1: %w", herald.ErrInvalidOption))
	}
	var after position // positions start at 1: (0, 0) is before every entry
	if cursor != "" {
		var ok bool
		if after, ok = parsePosition(cursor); !ok {
			return nil, "", fail(op, topic, "", fmt.Sprintf("cursor %q (want partition:position)", cursor), dlq.ErrBadPosition)
		}
	}
	s.catchUp(ctx)
	n := s.d.n
	fetch := limit
	if fetch < math.MaxInt {
		fetch++ // one entry more than asked tells whether another page follows
	}
	entries, err := s.query(ctx, topic, "(l.part, l."+n.pos+") > ("+n.ph(2)+", "+n.ph(3)+")", fetch, after.part, after.pos)
	if err != nil {
		return nil, "", fail(op, topic, "", "", s.explain(ctx, err))
	}
	next := ""
	if len(entries) > limit {
		entries = entries[:limit]
		next = entries[limit-1].Position
	}
	return entries, next, nil
}

// Get implements dlq.Store.
func (s *deadLetters) Get(ctx context.Context, topic, positionOrID string) (dlq.Entry, error) {
	const op = "get dead letter"
	detail := "entry " + positionOrID
	if err := s.check(op, topic); err != nil {
		return dlq.Entry{}, err
	}
	s.catchUp(ctx)
	n := s.d.n
	if p, ok := parsePosition(positionOrID); ok {
		found, err := s.query(ctx, topic, "l.part = "+n.ph(2)+" AND l."+n.pos+" = "+n.ph(3), 1, p.part, p.pos)
		if err != nil {
			return dlq.Entry{}, fail(op, topic, "", detail, s.explain(ctx, err))
		}
		if len(found) == 1 {
			return found[0], nil
		}
	}
	found, err := s.query(ctx, topic, "l.message_id = "+n.ph(2), 1, positionOrID)
	if err != nil {
		return dlq.Entry{}, fail(op, topic, "", detail, s.explain(ctx, err))
	}
	if len(found) == 0 {
		return dlq.Entry{}, fail(op, topic, "", detail, dlq.ErrNotFound)
	}
	return found[0], nil
}

// MarkRedriven implements dlq.Store: it records the entries' positions,
// all of them or none, in the table of redriven positions. Marking a
// position twice is harmless. A position whose row retention deleted has
// nothing left to hide, and its mark goes with the next sweep.
func (s *deadLetters) MarkRedriven(ctx context.Context, topic string, entries []dlq.Entry) error {
	const op = "mark dead letters redriven"
	if err := s.check(op, topic); err != nil {
		return err
	}
	seen := make(map[position]bool, len(entries))
	positions := make([]position, 0, len(entries))
	for _, e := range entries {
		p, ok := parsePosition(e.Position)
		if !ok {
			return fail(op, topic, "", fmt.Sprintf("position %q (want partition:position)", e.Position), dlq.ErrBadPosition)
		}
		if !seen[p] {
			seen[p] = true
			positions = append(positions, p)
		}
	}
	if len(positions) == 0 {
		return nil
	}
	if err := s.mark(ctx, topic, positions); err != nil {
		return fail(op, topic, "", fmt.Sprintf("%d entries from %s", len(positions), positions[0]), s.explain(ctx, err))
	}
	// The marks are recorded: a failed sweep is only reported, and the
	// next one tries again.
	if err := s.sweep(ctx, topic); err != nil && ctx.Err() == nil {
		s.d.report(fail(op, topic, "", "delete the marks of deleted rows", err))
	}
	return nil
}

// catchUp runs one sequencer round on PostgreSQL and MySQL (SQLite has
// none), so that rows committed before it have positions. Its error is
// dropped on purpose: the round is an optimisation for a process that
// does not subscribe (see DeadLetters), and a log that cannot be read
// fails the query that follows with the reason.
func (s *deadLetters) catchUp(ctx context.Context) {
	if s.d.n.d != sqlcore.SQLite {
		_, _, _ = s.d.sequence(ctx)
	}
}

// explain returns ErrNoLog (wrapped) when a statement failed because the
// log's tables are missing, and err otherwise.
func (s *deadLetters) explain(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	if _, perr := s.d.partitions(ctx); errors.Is(perr, ErrNoLog) {
		return perr
	}
	return err
}

// query returns up to limit entries of topic that are not marked
// redriven and match where (which may use the placeholders 2 and up for
// args), in List order.
func (s *deadLetters) query(ctx context.Context, topic, where string, limit int, args ...any) ([]dlq.Entry, error) {
	n := s.d.n
	query := "SELECT l.part, l." + n.pos + ", " + messageColumns +
		" FROM " + n.log + " l WHERE l.topic = " + n.ph(1) + " AND l." + n.pos + " IS NOT NULL AND " + where +
		" AND NOT EXISTS (SELECT 1 FROM " + n.redriven() + " r WHERE r.topic = l.topic AND r.part = l.part AND r.pos = l." + n.pos + ")" +
		" ORDER BY l.part, l." + n.pos + " LIMIT " + strconv.Itoa(limit)
	rs, err := s.d.db.QueryContext(ctx, query, append([]any{topic}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var entries []dlq.Entry
	for rs.Next() {
		var p position
		m, err := scanMessage(rs, topic, &p.part, &p.pos)
		if err != nil {
			return nil, err
		}
		entries = append(entries, dlq.NewEntry(p.String(), m))
	}
	return entries, rs.Err()
}

// mark inserts the marks of positions in one transaction, markChunk rows
// a statement, leaving the marks that exist.
func (s *deadLetters) mark(ctx context.Context, topic string, positions []position) error {
	n := s.d.n
	tx, err := s.d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	for start := 0; start < len(positions); start += markChunk {
		chunk := positions[start:min(start+markChunk, len(positions))]
		var b strings.Builder
		head, tail := n.insertIgnore()
		b.WriteString(head)
		b.WriteString(n.redriven() + " (topic, part, pos, redriven_at) VALUES ")
		args := make([]any, 0, 3*len(chunk))
		for i, p := range chunk {
			if i > 0 {
				b.WriteByte(',')
			}
			j := len(args)
			fmt.Fprintf(&b, "(%s, %s, %s, %s)", n.ph(j+1), n.ph(j+2), n.ph(j+3), n.nowMillis())
			args = append(args, topic, p.part, p.pos)
		}
		b.WriteString(tail)
		if _, err := tx.ExecContext(ctx, b.String(), args...); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// sweep deletes topic's marks whose rows are gone, unless it did so less
// than sweepEvery ago. It reads them with a plain (non-locking) query and
// deletes them by key, so that it never locks rows of the log.
func (s *deadLetters) sweep(ctx context.Context, topic string) error {
	s.mu.Lock()
	due := time.Since(s.swept[topic]) >= sweepEvery
	if due {
		s.swept[topic] = time.Now()
	}
	s.mu.Unlock()
	if !due {
		return nil
	}
	n := s.d.n
	find := "SELECT r.part, r.pos FROM " + n.redriven() + " r WHERE r.topic = " + n.ph(1) +
		" AND NOT EXISTS (SELECT 1 FROM " + n.log + " l WHERE l.topic = r.topic AND l.part = r.part AND l." + n.pos + " = r.pos)" +
		" LIMIT " + strconv.Itoa(markChunk)
	for {
		rs, err := s.d.db.QueryContext(ctx, find, topic)
		if err != nil {
			return err
		}
		var gone []position
		for rs.Next() {
			var p position
			if err := rs.Scan(&p.part, &p.pos); err != nil {
				rs.Close()
				return err
			}
			gone = append(gone, p)
		}
		rs.Close()
		if err := rs.Err(); err != nil {
			return err
		}
		if len(gone) == 0 {
			return nil
		}
		var b strings.Builder
		b.WriteString("DELETE FROM " + n.redriven() + " WHERE topic = " + n.ph(1) + " AND (")
		args := []any{topic}
		for i, p := range gone {
			if i > 0 {
				b.WriteString(" OR ")
			}
			fmt.Fprintf(&b, "(part = %s AND pos = %s)", n.ph(len(args)+1), n.ph(len(args)+2))
			args = append(args, p.part, p.pos)
		}
		b.WriteByte(')')
		if _, err := s.d.db.ExecContext(ctx, b.String(), args...); err != nil {
			return err
		}
		if len(gone) < markChunk {
			return nil
		}
	}
}
