package sqlcore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

type txKey struct{}

// TxExecer runs one statement in the caller's transaction: what WithTx and
// WithPgxTx put in a context.
type TxExecer interface {
	Exec(ctx context.Context, query string, args []any) error
	Query(ctx context.Context, query string, args []any, scan func(Rows) error) error
	// Pgx reports whether the transaction is a native pgx.Tx.
	Pgx() bool
}

// Rows is the part of *sql.Rows and pgx.Rows a scan function uses.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
}

type sqlTx struct{ tx *sql.Tx }

func (s sqlTx) Exec(ctx context.Context, query string, args []any) error {
	_, err := s.tx.ExecContext(ctx, query, args...)
	return err
}

func (s sqlTx) Query(ctx context.Context, query string, args []any, scan func(Rows) error) error {
	rs, err := s.tx.QueryContext(ctx, query, args...)
	return scanSQL(rs, err, scan)
}

func (sqlTx) Pgx() bool { return false }

type pgxTx struct{ tx pgx.Tx }

func (p pgxTx) Exec(ctx context.Context, query string, args []any) error {
	_, err := p.tx.Exec(ctx, query, args...)
	return err
}

func (p pgxTx) Query(ctx context.Context, query string, args []any, scan func(Rows) error) error {
	rs, err := p.tx.Query(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	return errors.Join(scan(rs), rs.Err())
}

func (pgxTx) Pgx() bool { return true }

// scanSQL runs scan over the result of a database/sql query.
func scanSQL(rs *sql.Rows, err error, scan func(Rows) error) error {
	if err != nil {
		return err
	}
	defer rs.Close()
	return errors.Join(scan(rs), rs.Err())
}

type dbExecer struct{ db *sql.DB }

func (x dbExecer) Exec(ctx context.Context, query string, args []any) error {
	_, err := x.db.ExecContext(ctx, query, args...)
	return err
}

func (x dbExecer) Query(ctx context.Context, query string, args []any, scan func(Rows) error) error {
	rs, err := x.db.QueryContext(ctx, query, args...)
	return scanSQL(rs, err, scan)
}

func (dbExecer) Pgx() bool { return false }

// DBExecer runs statements on the pool, each in autocommit.
func DBExecer(db *sql.DB) TxExecer { return dbExecer{db} }

// SQLTx wraps a *sql.Tx as a TxExecer.
func SQLTx(tx *sql.Tx) TxExecer { return sqlTx{tx} }

// PgxTx wraps a pgx.Tx as a TxExecer.
func PgxTx(tx pgx.Tx) TxExecer { return pgxTx{tx} }

// WithTx returns a context that carries tx; a nil tx carries nothing.
func WithTx(ctx context.Context, tx *sql.Tx) context.Context {
	if tx == nil {
		return ctx
	}
	return context.WithValue(ctx, txKey{}, TxExecer(sqlTx{tx}))
}

// WithPgxTx is WithTx for a native pgx transaction.
func WithPgxTx(ctx context.Context, tx pgx.Tx) context.Context {
	if tx == nil {
		return ctx
	}
	return context.WithValue(ctx, txKey{}, TxExecer(pgxTx{tx}))
}

// TxFrom returns the transaction ctx carries, or nil.
func TxFrom(ctx context.Context) TxExecer {
	x, _ := ctx.Value(txKey{}).(TxExecer)
	return x
}

// CtxErr is ctx.Err(), or context.DeadlineExceeded once ctx's deadline
// has passed although its timer has not fired yet: a database driver's
// dial bounded by the deadline fails with "i/o timeout" a moment before
// ctx says it is done, and the caller must still see the deadline.
func CtxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}
