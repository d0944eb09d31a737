package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqlcore"

	"github.com/heraldbus/herald"
)

// rowColumns are the columns the relay reads, in scan order.
const rowColumns = "id, " + insertColumns + ", attempts"

// sqliteReadColumns adds what modernc.org/sqlite does not tell apart: it
// returns an empty BLOB as nil, like NULL.
const sqliteReadColumns = rowColumns + ", payload IS NULL"

// copyColumns are the columns copied to the quarantine and sent tables
// from a row of the outbox table (whose id becomes outbox_id).
const copyColumns = insertColumns

// maxExcluded bounds the keys and ids one read query excludes; rows of
// further blocked keys are read and skipped in Go.
const maxExcluded = 1000

// queries holds the relay's fixed statements; the ones with id lists are
// built per call on MySQL and SQLite.
type queries struct {
	t        table
	cols     string // the columns read, in scan order
	read     string // PostgreSQL and the others without exclusions
	readExcl string // PostgreSQL with key and id exclusions
	charge   string
	stats    string
	qcount   string
	nextDue  string // the first due time of the delayed rows, and the database's clock
	dueIDs   string // the due rows, in due order (MySQL, SQLite)
	promote  string // promotes the due rows (PostgreSQL)
}

func newQueries(t table) queries {
	d := t.dialect
	q := queries{t: t}
	q.cols = rowColumns
	if d == SQLite {
		q.cols = sqliteReadColumns
	}
	if d == Postgres {
		// id > 0: the delayed rows lie below zero (SchemaVersion 3), so a
		// read by the primary key starts past them.
		q.read = "SELECT " + rowColumns + " FROM " + t.main + " WHERE id > 0 AND deliver_at IS NULL ORDER BY id LIMIT $1"
		q.readExcl = "SELECT " + rowColumns + " FROM " + t.main +
			" WHERE id > 0 AND deliver_at IS NULL AND msg_key <> ALL($2::text[]) AND id <> ALL($3::bigint[]) ORDER BY id LIMIT $1"
		q.charge = "UPDATE " + t.main + " SET attempts = attempts + 1, last_error = $1 WHERE id = $2"
	} else {
		q.read = "SELECT " + q.cols + " FROM " + t.main + " WHERE deliver_at IS NULL ORDER BY id LIMIT ?"
		q.charge = "UPDATE " + t.main + " SET attempts = attempts + 1, last_error = ? WHERE id = ?"
	}
	q.stats = "SELECT COUNT(*) - COUNT(deliver_at), COUNT(deliver_at), MIN(CASE WHEN deliver_at IS NULL THEN created_at END) FROM " + t.main
	q.qcount = "SELECT COUNT(*) FROM " + t.quarantine
	q.delayQueries(t)
	return q
}

// inList writes "(?,?,...)" for n parameters (MySQL and SQLite).
func inList(n int) string {
	return "(" + strings.TrimSuffix(strings.Repeat("?,", n), ",") + ")"
}

// read returns the first rows of the table in id order, leaving out the
// keys the relay holds back and the delayed rows (deliver_at set). It keeps no position between calls: every
// read starts at the smallest id left, so a row whose transaction commits
// after rows with larger ids were read is found by the next read.
func (r *Relay) read(ctx context.Context, conn *sql.Conn, s *keyState) ([]*row, error) {
	keys, ids := s.excluded()
	query, args := r.readQuery(keys, ids)
	r.reads.Add(1)
	rs, err := conn.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	return r.scanRows(rs)
}

// readQuery is the query of one read that leaves out keys and ids, with
// its arguments.
func (r *Relay) readQuery(keys []string, ids []int64) (string, []any) {
	limit := r.cfg.BatchSize
	switch {
	case len(keys)+len(ids) == 0:
		return r.q.read, []any{limit}
	case r.t.dialect == Postgres:
		if keys == nil {
			keys = []string{}
		}
		if ids == nil {
			ids = []int64{}
		}
		return r.q.readExcl, []any{limit, keys, ids}
	}
	var b strings.Builder
	var args []any
	b.WriteString("SELECT " + r.q.cols + " FROM " + r.t.main + " WHERE deliver_at IS NULL AND ")
	if len(keys) > 0 {
		b.WriteString("msg_key NOT IN " + inList(len(keys)))
		for _, k := range keys {
			args = append(args, k)
		}
	}
	if len(ids) > 0 {
		if len(keys) > 0 {
			b.WriteString(" AND ")
		}
		b.WriteString("id NOT IN " + inList(len(ids)))
		for _, id := range ids {
			args = append(args, id)
		}
	}
	b.WriteString(" ORDER BY id LIMIT ?")
	return b.String(), append(args, limit)
}

// scanRows reads up to one batch of rows. Rows are allocated in small
// chunks as they arrive: a read that finds a few rows allocates a few,
// and a message a target keeps holds only its chunk alive, not a
// batch-sized array.
func (r *Relay) scanRows(rs *sql.Rows) ([]*row, error) {
	limit := r.cfg.BatchSize
	var slab []row
	var out []*row
	var headers []byte
	var payloadNull bool
	dest := make([]any, 9, 10)
	if r.t.dialect == SQLite {
		dest = append(dest, &payloadNull)
	}
	for rs.Next() && len(out) < limit {
		if len(slab) == 0 {
			slab = make([]row, min(limit-len(out), 64))
		}
		rw := &slab[0]
		slab = slab[1:]
		m := &rw.msg
		headers = nil
		dest[0], dest[1], dest[2], dest[3], dest[4] = &rw.id, &m.ID, &m.Topic, &m.Key, &headers
		dest[5], dest[6], dest[7], dest[8] = &m.ContentType, &m.Data, sqlcore.TimeDest{T: &m.Time}, &rw.attempts
		if err := rs.Scan(dest...); err != nil {
			return nil, err
		}
		if m.Data == nil && r.t.dialect == SQLite && !payloadNull {
			m.Data = []byte{}
		}
		if len(headers) > 0 {
			rw.decodeHeaders(headers)
		}
		out = append(out, rw)
	}
	return out, rs.Err()
}

// decodeHeaders sets the message's headers from their JSON column. Only a
// row written by hand fails here; it is a poison row like any other (see
// deliver), not a reason to stop.
func (rw *row) decodeHeaders(headers []byte) {
	h, err := sqlcore.DecodeHeaders(headers)
	rw.msg.Headers = h
	if err != nil {
		rw.bad = herald.Permanent(fmt.Errorf("outbox: headers of row %d are not a JSON object of strings: %w", rw.id, err))
		rw.msg.Headers = nil
	}
}

// removeSent deletes the sent rows, or moves them to the sent table when
// rows are retained.
func (r *Relay) removeSent(ctx context.Context, conn *sql.Conn, rows []*row) error {
	ids := make([]int64, len(rows))
	for i, rw := range rows {
		ids[i] = rw.id
	}
	now := r.t.dialect.TimeArg(time.Now())
	if r.t.dialect == Postgres {
		var err error
		if r.cfg.Retention > 0 {
			_, err = conn.ExecContext(ctx, "WITH moved AS (DELETE FROM "+r.t.main+" WHERE id = ANY($1) RETURNING "+rowColumns+", last_error) "+
				"INSERT INTO "+r.t.sent+" (outbox_id, "+copyColumns+", attempts, last_error, sent_at) "+
				"SELECT id, "+copyColumns+", attempts, last_error, $2 FROM moved", ids, now)
		} else {
			_, err = conn.ExecContext(ctx, "DELETE FROM "+r.t.main+" WHERE id = ANY($1)", ids)
		}
		if err != nil {
			return fmt.Errorf("delete %d sent rows: %w", len(ids), err)
		}
		return nil
	}
	for start := 0; start < len(ids); start += maxExcluded {
		chunk := ids[start:min(start+maxExcluded, len(ids))]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		in := inList(len(chunk))
		if r.cfg.Retention == 0 {
			if _, err := conn.ExecContext(ctx, "DELETE FROM "+r.t.main+" WHERE id IN "+in, args...); err != nil {
				return fmt.Errorf("delete %d sent rows: %w", len(chunk), err)
			}
			continue
		}
		err := sqlcore.InTx(ctx, conn, r.t.dialect, func(tx sqlcore.Execer) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+r.t.sent+" (outbox_id, "+copyColumns+", attempts, last_error, sent_at) "+
				"SELECT id, "+copyColumns+", attempts, last_error, ? FROM "+r.t.main+" WHERE id IN "+in+" ORDER BY id",
				append([]any{now}, args...)...); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "DELETE FROM "+r.t.main+" WHERE id IN "+in, args...)
			return err
		})
		if err != nil {
			return fmt.Errorf("move %d sent rows to %s_sent: %w", len(chunk), r.t.name, err)
		}
	}
	return nil
}

// charge counts a failed delivery against a row.
func (r *Relay) charge(ctx context.Context, conn *sql.Conn, rw *row, cause error) error {
	if _, err := conn.ExecContext(ctx, r.q.charge, sqlcore.ErrorText(cause), rw.id); err != nil {
		return fmt.Errorf("record failure of row %d: %w", rw.id, err)
	}
	return nil
}

// quarantine moves a row to the quarantine table, atomically.
func (r *Relay) quarantine(ctx context.Context, conn *sql.Conn, rw *row, attempts int, cause error, now time.Time) error {
	ts := r.t.dialect.TimeArg(now)
	text := sqlcore.ErrorText(cause)
	var err error
	if r.t.dialect == Postgres {
		_, err = conn.ExecContext(ctx, "WITH moved AS (DELETE FROM "+r.t.main+" WHERE id = $1 RETURNING id, "+copyColumns+") "+
			"INSERT INTO "+r.t.quarantine+" (outbox_id, "+copyColumns+", attempts, last_error, quarantined_at) "+
			"SELECT id, "+copyColumns+", $2, $3, $4 FROM moved", rw.id, attempts, text, ts)
	} else {
		err = sqlcore.InTx(ctx, conn, r.t.dialect, func(tx sqlcore.Execer) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+r.t.quarantine+" (outbox_id, "+copyColumns+", attempts, last_error, quarantined_at) "+
				"SELECT id, "+copyColumns+", ?, ?, ? FROM "+r.t.main+" WHERE id = ?", attempts, text, ts, rw.id); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "DELETE FROM "+r.t.main+" WHERE id = ?", rw.id)
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("quarantine row %d: %w", rw.id, err)
	}
	return nil
}

// purge deletes sent rows older than the retention, a batch at a time, at
// most ten batches per call so that delivery is not held up.
func (r *Relay) purge(ctx context.Context, conn *sql.Conn) error {
	cutoff := r.t.dialect.TimeArg(time.Now().Add(-r.cfg.Retention))
	var query string
	switch r.t.dialect {
	case Postgres:
		query = "DELETE FROM " + r.t.sent + " WHERE id IN (SELECT id FROM " + r.t.sent + " WHERE sent_at < $1 LIMIT $2)"
	case MySQL:
		query = "DELETE FROM " + r.t.sent + " WHERE sent_at < ? LIMIT ?"
	default:
		query = "DELETE FROM " + r.t.sent + " WHERE id IN (SELECT id FROM " + r.t.sent + " WHERE sent_at < ? LIMIT ?)"
	}
	for range 10 {
		res, err := conn.ExecContext(ctx, query, cutoff, r.cfg.PurgeBatch)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n < int64(r.cfg.PurgeBatch) {
			return err
		}
	}
	return nil
}
