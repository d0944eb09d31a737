package sqlcore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/heraldbus/herald/internal/backoff"
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

// LockKey is the PostgreSQL advisory-lock key of the table in the
// given schema. Advisory locks are per database; the schema is part of the
// key so that tables of one name in two schemas do not exclude each other.
func LockKey(schema, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("herald-outbox\x00" + schema + "\x00" + name))
	return int64(h.Sum64())
}

// LockName is the MySQL GET_LOCK name of the table in the given
// database. GET_LOCK names are server-wide and at most 64 characters.
func LockName(database, name string) string {
	n := "herald-outbox:" + database + "." + name
	if len(n) <= 64 {
		return n
	}
	sum := sha256.Sum256([]byte(n))
	return "herald-outbox:" + hex.EncodeToString(sum[:20])
}

// MigrateLocked runs stmts (idempotent DDL) on conn under the database's
// own lock for the table name, so that processes migrating at once take
// turns: GET_LOCK on MySQL (DDL commits implicitly there, so a session
// lock, not a transaction), an advisory transaction lock on PostgreSQL,
// the write lock of BEGIN IMMEDIATE on SQLite.
func MigrateLocked(ctx context.Context, conn *sql.Conn, d Dialect, name string, stmts []string) error {
	switch d {
	case MySQL:
		var schemaName sql.NullString
		if err := conn.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&schemaName); err != nil {
			return err
		}
		lock := LockName(schemaName.String, name+":migrate")
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 60)", lock).Scan(&got); err != nil {
			return err
		}
		if got.Int64 != 1 {
			return fmt.Errorf("could not take migration lock %q within 60s", lock)
		}
		// The lock also ends with the session; releasing it early lets a
		// concurrent migration go on without waiting for the pool.
		defer func() { _, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT RELEASE_LOCK(?)", lock) }()
		return execAll(ctx, conn, stmts)
	case Postgres:
		var schemaName string
		if err := conn.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schemaName); err != nil {
			return err
		}
		return InTx(ctx, conn, d, func(tx Execer) error {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", LockKey(schemaName, name+"\x00migrate")); err != nil {
				return err
			}
			return execAll(ctx, tx, stmts)
		})
	default:
		return InTx(ctx, conn, d, func(tx Execer) error { return execAll(ctx, tx, stmts) })
	}
}

// SQLiteBusyWait bounds how long Migrate retries SQLITE_BUSY on SQLite.
const SQLiteBusyWait = 30 * time.Second

// Migrate runs stmts with MigrateLocked on a connection of db. On SQLite
// the first connections to a new file race to switch it to WAL (the
// journal_mode pragma of the recommended DSN), and the losers get
// SQLITE_BUSY at once, whatever the busy timeout: Migrate retries that
// for up to SQLiteBusyWait, so that instances starting together on a new
// file all migrate.
func Migrate(ctx context.Context, db *sql.DB, d Dialect, name string, stmts []string) error {
	return MigrateWith(ctx, db, d, func(conn *sql.Conn) error { return MigrateLocked(ctx, conn, d, name, stmts) })
}

// MigrateWith is Migrate for a migration that looks at the table before
// it picks its statements (an upgrade from an earlier schema): it calls
// migrate with a connection of db, which should end in MigrateLocked, and
// retries SQLITE_BUSY as Migrate does.
func MigrateWith(ctx context.Context, db *sql.DB, d Dialect, migrate func(*sql.Conn) error) error {
	deadline := time.Now().Add(SQLiteBusyWait)
	retry := backoff.New(time.Millisecond, 100*time.Millisecond)
	for {
		err := migrateOnce(ctx, db, migrate)
		if err == nil || d != SQLite || !IsSQLiteBusy(err) || time.Now().After(deadline) {
			return err
		}
		if !backoff.Sleep(ctx, retry.Next()) {
			return err
		}
	}
}

func migrateOnce(ctx context.Context, db *sql.DB, migrate func(*sql.Conn) error) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return migrate(conn)
}

func execAll(ctx context.Context, x Execer, stmts []string) error {
	for _, s := range stmts {
		if _, err := x.ExecContext(ctx, s); err != nil {
			return err
		}
	}
	return nil
}
