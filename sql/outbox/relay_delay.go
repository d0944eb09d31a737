package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Delayed rows; see "Delayed delivery" in the package doc.
//
// A delayed row waits in the outbox table with its due time in
// deliver_at, where the relay's reads (deliver_at IS NULL) do not see it,
// so it holds back no row behind it. Once it is due by the database's
// clock, the active relay re-inserts it with deliver_at NULL, and so with
// a new id, in due order, and deletes the old row, in one transaction:
// from then on it is a row like any other, forwarded in id order after
// the rows already waiting.

// promoteBatch bounds the due rows one promotion moves.
const promoteBatch = 500

// nowMillis is the database's clock in Unix milliseconds.
func nowMillis(d Dialect) string {
	switch d {
	case Postgres:
		return "(EXTRACT(EPOCH FROM clock_timestamp())*1000)::BIGINT"
	case MySQL:
		return "CAST(UNIX_TIMESTAMP(NOW(3))*1000 AS SIGNED)"
	default:
		return "CAST((julianday('now') - 2440587.5)*86400000 AS INTEGER)"
	}
}

// promoteDue makes the due delayed rows forwardable, up to promoteBatch
// of them. It returns how many it promoted and, when none was due, when
// the next delayed row is due by the database's clock (zero when none
// waits).
func (r *Relay) promoteDue(ctx context.Context, conn *sql.Conn) (int, time.Time, error) {
	var first sql.NullInt64
	var now int64
	if err := conn.QueryRowContext(ctx, r.q.nextDue).Scan(&first, &now); err != nil {
		return 0, time.Time{}, fmt.Errorf("look for due rows: %w", err)
	}
	switch {
	case !first.Valid:
		return 0, time.Time{}, nil
	case first.Int64 >= now: // deliver_at < now: the clock rounds to the millisecond
		return 0, time.UnixMilli(first.Int64), nil
	}
	n, err := r.promote(ctx, conn, now)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("promote due rows: %w", err)
	}
	return n, time.Time{}, nil
}

// promote moves the rows due before now (the database's clock, read by
// promoteDue: a bound value, unlike the clock function, lets the due
// index bound the scan), in due order, atomically.
func (r *Relay) promote(ctx context.Context, conn *sql.Conn, now int64) (int, error) {
	if r.t.dialect == Postgres {
		res, err := conn.ExecContext(ctx, r.q.promote, now)
		if err != nil {
			return 0, err
		}
		n, err := res.RowsAffected()
		return int(n), err
	}
	rs, err := conn.QueryContext(ctx, r.q.dueIDs, now)
	if err != nil {
		return 0, err
	}
	ids, count, err := sqlcore.IDList(rs)
	if err != nil || count == 0 {
		return 0, err
	}
	in := " WHERE id IN (" + ids + ") AND deliver_at IS NOT NULL"
	cols := insertColumns + ", attempts, last_error"
	err = sqlcore.InTx(ctx, conn, r.t.dialect, func(tx sqlcore.Execer) error {
		// The new ids are allocated in the SELECT's order: the due order.
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+r.t.main+" ("+cols+") SELECT "+cols+" FROM "+r.t.main+in+" ORDER BY deliver_at, id"); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "DELETE FROM "+r.t.main+in)
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(ids), nil
}

// delayQueries sets the statements of delayed rows.
func (q *queries) delayQueries(t table) {
	// MIN skips NULLs anyway; the WHERE lets PostgreSQL and SQLite use
	// their partial due index, and would make MariaDB scan its index.
	q.nextDue = "SELECT MIN(deliver_at), " + nowMillis(t.dialect) + " FROM " + t.main
	if t.dialect != MySQL {
		q.nextDue += " WHERE deliver_at IS NOT NULL"
	}
	ph := "?"
	if t.dialect == Postgres {
		ph = "$1"
	}
	due := "SELECT id FROM " + t.main + " WHERE deliver_at < " + ph + " ORDER BY deliver_at, id LIMIT " + strconv.Itoa(promoteBatch)
	q.dueIDs = due
	cols := insertColumns + ", attempts, last_error"
	q.promote = "WITH moved AS (DELETE FROM " + t.main + " WHERE id IN (" + due + ") RETURNING id, deliver_at, " + cols + ") " +
		"INSERT INTO " + t.main + " (" + cols + ") SELECT " + cols + " FROM moved ORDER BY deliver_at, id"
}
