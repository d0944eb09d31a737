package sqlcore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
)

// Execer is what InTx hands its function: a *sql.Tx, or the *sql.Conn
// itself inside an SQLite BEGIN IMMEDIATE.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// InTx runs f in a transaction on conn. SQLite gets BEGIN IMMEDIATE: a
// deferred transaction that reads before it writes fails at once with
// SQLITE_BUSY when another connection committed in between, whatever the
// busy timeout.
func InTx(ctx context.Context, conn *sql.Conn, d Dialect, f func(Execer) error) error {
	if d == SQLite {
		if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			return err
		}
		if err := f(conn); err != nil {
			_, _ = conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
			return err
		}
		if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
			_, _ = conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
			return err
		}
		return nil
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Discard closes conn's session instead of returning it to the pool, so
// that its session locks and LISTEN registrations end with it.
func Discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// IsSQLiteBusy reports whether err is SQLite's SQLITE_BUSY (primary code
// 5, any extended code), as modernc.org/sqlite reports it.
func IsSQLiteBusy(err error) bool {
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code()&0xff == 5
}
