package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqlcore"

	"github.com/heraldbus/herald"
)

// Quarantine gives operators the rows a relay gave up on: it counts and
// lists them, replays them into the outbox, or discards them. It works on
// the table's "_quarantine" companion that Migrate creates, through the
// *sql.DB; it is safe for concurrent use, also while relays run.
type Quarantine struct {
	db *sql.DB
	t  table
}

// NewQuarantine returns access to the quarantine of the outbox table.
func NewQuarantine(db *sql.DB, d Dialect, table string) (*Quarantine, error) {
	t, err := newTable(d, table)
	if err != nil {
		return nil, err
	}
	if db == nil {
		return nil, errors.New("outbox: quarantine: nil *sql.DB")
	}
	return &Quarantine{db: db, t: t}, nil
}

// QuarantinedMessage is one row of the quarantine table.
type QuarantinedMessage struct {
	// ID identifies the row in the quarantine table (for Replay, Discard).
	ID int64
	// OutboxID was the row's id in the outbox table.
	OutboxID int64
	// Message is the message as it was written, ID included.
	Message *herald.Message
	// Attempts is how many failed deliveries were charged to it.
	Attempts int
	// LastError is the error of the last failed delivery.
	LastError string
	// QuarantinedAt is when the relay gave up on it.
	QuarantinedAt time.Time
}

// Count returns the number of quarantined rows.
func (q *Quarantine) Count(ctx context.Context) (int64, error) {
	var n int64
	if err := q.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+q.t.quarantine).Scan(&n); err != nil {
		return 0, fmt.Errorf("outbox: count %s_quarantine: %w", q.t.name, err)
	}
	return n, nil
}

// List returns up to limit quarantined rows with an ID above after, in ID
// order (page with the last ID of the previous page). A row whose headers
// are not a JSON object of strings is listed without headers.
func (q *Quarantine) List(ctx context.Context, after int64, limit int) ([]QuarantinedMessage, error) {
	if limit <= 0 {
		return nil, nil
	}
	p := func(n int) string {
		if q.t.dialect == Postgres {
			return fmt.Sprintf("$%d", n)
		}
		return "?"
	}
	rs, err := q.db.QueryContext(ctx, "SELECT id, outbox_id, "+copyColumns+", attempts, last_error, quarantined_at FROM "+
		q.t.quarantine+" WHERE id > "+p(1)+" ORDER BY id LIMIT "+p(2), after, limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: list %s_quarantine: %w", q.t.name, err)
	}
	defer rs.Close()
	var out []QuarantinedMessage
	for rs.Next() {
		var qm QuarantinedMessage
		m := &herald.Message{}
		var headers []byte
		var lastError sql.NullString
		if err := rs.Scan(&qm.ID, &qm.OutboxID, &m.ID, &m.Topic, &m.Key, &headers, &m.ContentType, &m.Data,
			sqlcore.TimeDest{T: &m.Time}, &qm.Attempts, &lastError, sqlcore.TimeDest{T: &qm.QuarantinedAt}); err != nil {
			return nil, fmt.Errorf("outbox: list %s_quarantine: %w", q.t.name, err)
		}
		if len(headers) > 0 && json.Unmarshal(headers, &m.Headers) != nil {
			// Headers the relay could not decode are why the row is here
			// (LastError says so); listing it must still work.
			m.Headers = nil
		}
		qm.Message, qm.LastError = m, lastError.String
		out = append(out, qm)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("outbox: list %s_quarantine: %w", q.t.name, err)
	}
	return out, nil
}

// Replay moves the quarantined rows with the given IDs back into the
// outbox, in one transaction, with their message IDs kept and their
// attempts reset. They get new outbox ids, so they are delivered after
// every row already waiting, including later rows of their own keys. It
// returns how many rows moved; unknown IDs are ignored.
func (q *Quarantine) Replay(ctx context.Context, ids ...int64) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	return q.replay(ctx, ids, 0)
}

// ReplayAll moves every row quarantined so far back into the outbox (see
// Replay) and returns how many moved.
func (q *Quarantine) ReplayAll(ctx context.Context) (int64, error) {
	var top sql.NullInt64
	if err := q.db.QueryRowContext(ctx, "SELECT MAX(id) FROM "+q.t.quarantine).Scan(&top); err != nil {
		return 0, fmt.Errorf("outbox: replay %s_quarantine: %w", q.t.name, err)
	}
	if !top.Valid {
		return 0, nil
	}
	return q.replay(ctx, nil, top.Int64)
}

// replay moves the rows with ids, or with ids up to upTo when ids is nil.
// An explicit bound (rather than "every row") keeps the INSERT and the
// DELETE on the same rows while relays quarantine more.
func (q *Quarantine) replay(ctx context.Context, ids []int64, upTo int64) (int64, error) {
	d := q.t.dialect
	var where string
	var args []any
	switch {
	case ids == nil && d == Postgres:
		where, args = "id <= $1", []any{upTo}
	case ids == nil:
		where, args = "id <= ?", []any{upTo}
	case d == Postgres:
		where, args = "id = ANY($1)", []any{ids}
	default:
		if len(ids) > maxExcluded*10 {
			return 0, fmt.Errorf("outbox: replay %s_quarantine: %d ids, at most %d per call", q.t.name, len(ids), maxExcluded*10)
		}
		where = "id IN " + inList(len(ids))
		for _, id := range ids {
			args = append(args, id)
		}
	}
	tx, err := q.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("outbox: replay %s_quarantine: %w", q.t.name, err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, "INSERT INTO "+q.t.main+" ("+copyColumns+") SELECT "+copyColumns+" FROM "+
		q.t.quarantine+" WHERE "+where+" ORDER BY id", args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: replay %s_quarantine: %w", q.t.name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("outbox: replay %s_quarantine: %w", q.t.name, err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+q.t.quarantine+" WHERE "+where, args...); err != nil {
		return 0, fmt.Errorf("outbox: replay %s_quarantine: %w", q.t.name, err)
	}
	if d == Postgres && n > 0 {
		if _, err := tx.ExecContext(ctx, "SELECT pg_notify($1, '')", q.t.channel); err != nil {
			return 0, fmt.Errorf("outbox: replay %s_quarantine: notify: %w", q.t.name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("outbox: replay %s_quarantine: %w", q.t.name, err)
	}
	return n, nil
}

// Discard deletes the quarantined rows with the given IDs for good and
// returns how many it deleted.
func (q *Quarantine) Discard(ctx context.Context, ids ...int64) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var res sql.Result
	var err error
	if q.t.dialect == Postgres {
		res, err = q.db.ExecContext(ctx, "DELETE FROM "+q.t.quarantine+" WHERE id = ANY($1)", ids)
	} else {
		if len(ids) > maxExcluded*10 {
			return 0, fmt.Errorf("outbox: discard from %s_quarantine: %d ids, at most %d per call", q.t.name, len(ids), maxExcluded*10)
		}
		args := make([]any, len(ids))
		for i, id := range ids {
			args[i] = id
		}
		res, err = q.db.ExecContext(ctx, "DELETE FROM "+q.t.quarantine+" WHERE id IN "+inList(len(ids)), args...)
	}
	if err != nil {
		return 0, fmt.Errorf("outbox: discard from %s_quarantine: %w", q.t.name, err)
	}
	return res.RowsAffected()
}
