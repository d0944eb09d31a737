package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqlcore"

	"github.com/heraldbus/herald/internal/backoff"
)

// Migrate creates the outbox table named table, its quarantine table
// (table + "_quarantine") and its table of sent rows (table + "_sent", used
// only with WithRetention), with their indexes, if they do not exist yet.
// It is idempotent and safe to run from several processes at once: it takes
// the database's own lock around the DDL (an advisory transaction lock on
// PostgreSQL, GET_LOCK on MySQL, the write lock on SQLite).
//
// Run it once at deploy or start-up, on its own, never inside a business
// transaction (MySQL commits DDL implicitly). It does not alter tables that
// already exist. The schema of each dialect is documented in the package
// doc.
//
// On SQLite the first connections to a new file race to switch it to WAL
// (the journal_mode pragma of the recommended DSN), and the losers get
// SQLITE_BUSY at once, whatever the busy timeout: Migrate retries that for
// up to sqliteBusyWait, so that instances starting together on a new file
// all migrate. Once one has, the file is in WAL mode for good and later
// connections, the first writes included, no longer switch it.
func Migrate(ctx context.Context, db *sql.DB, d Dialect, table string) error {
	t, err := newTable(d, table)
	if err != nil {
		return err
	}
	if db == nil {
		return fmt.Errorf("outbox: migrate %s: nil *sql.DB", table)
	}
	deadline := time.Now().Add(sqliteBusyWait)
	retry := backoff.New(time.Millisecond, 100*time.Millisecond)
	for {
		err = migrateOnce(ctx, db, t)
		if err == nil || d != SQLite || !sqlcore.IsSQLiteBusy(err) || time.Now().After(deadline) {
			return err
		}
		if !backoff.Sleep(ctx, retry.Next()) {
			return err
		}
	}
}

// sqliteBusyWait bounds how long Migrate retries SQLITE_BUSY on SQLite.
const sqliteBusyWait = 30 * time.Second

func migrateOnce(ctx context.Context, db *sql.DB, t table) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("outbox: migrate %s: %w", t.name, err)
	}
	defer conn.Close()
	if err := migrate(ctx, conn, t); err != nil {
		return fmt.Errorf("outbox: migrate %s (%v): %w", t.name, t.dialect, err)
	}
	return nil
}

func migrate(ctx context.Context, conn *sql.Conn, t table) error {
	stmts := schema(t)
	switch t.dialect {
	case MySQL:
		// DDL commits implicitly in MySQL, so a session lock serializes
		// concurrent migrations instead of a transaction.
		var schemaName sql.NullString
		if err := conn.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&schemaName); err != nil {
			return err
		}
		name := lockName(schemaName.String, t.name+":migrate")
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 60)", name).Scan(&got); err != nil {
			return err
		}
		if got.Int64 != 1 {
			return fmt.Errorf("could not take migration lock %q within 60s", name)
		}
		// The lock also ends with the session; releasing it early lets a
		// concurrent migration go on without waiting for the pool.
		defer func() { _, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT RELEASE_LOCK(?)", name) }()
		return execAll(ctx, conn, stmts)
	case Postgres:
		var schemaName string
		if err := conn.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schemaName); err != nil {
			return err
		}
		return sqlcore.InTx(ctx, conn, t.dialect, func(tx sqlcore.Execer) error {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey(schemaName, t.name+"\x00migrate")); err != nil {
				return err
			}
			return execAll(ctx, tx, stmts)
		})
	default: // SQLite: BEGIN IMMEDIATE takes the write lock first
		return sqlcore.InTx(ctx, conn, t.dialect, func(tx sqlcore.Execer) error { return execAll(ctx, tx, stmts) })
	}
}

func execAll(ctx context.Context, x sqlcore.Execer, stmts []string) error {
	for _, s := range stmts {
		if _, err := x.ExecContext(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// SchemaVersion is the version of the tables Schema and Migrate create.
// It is 1 since the first release. A release that changes the tables
// raises it, says so under Breaking in the CHANGELOG, and ships the change
// as statements that take each earlier version to the new one (outbox
// functions named for the versions, which Migrate also applies, under the
// same lock), so that teams with their own migration tool copy them as
// they copied Schema.
const SchemaVersion = 1

// Schema returns the statements that create the outbox table named table,
// its quarantine table and its table of sent rows, with their index, for
// dialect d: exactly what Migrate runs (inside its lock), for teams whose
// migrations are run by a tool (golang-migrate, goose, Atlas, Flyway) to
// put in a migration of their own. Each statement is idempotent (CREATE
// ... IF NOT EXISTS) and ends without a semicolon; run them in order,
// outside business transactions. The table name is checked like
// Migrate's.
func Schema(d Dialect, table string) ([]string, error) {
	t, err := newTable(d, table)
	if err != nil {
		return nil, err
	}
	return schema(t), nil
}

// schema returns the DDL of the three tables. The column set is shared by
// every dialect; only the types differ:
//
//	id            monotonic row id (identity / AUTO_INCREMENT / AUTOINCREMENT)
//	message_id    Message.ID
//	topic         Message.Topic
//	msg_key       Message.Key ('' for none)
//	headers       Message.Headers as a JSON object, NULL for none
//	content_type  Message.ContentType
//	payload       Message.Data
//	created_at    Message.Time (microseconds; Unix microseconds on SQLite)
//	attempts      failed deliveries charged to the row so far
//	last_error    the error of the last failed delivery
func schema(t table) []string {
	switch t.dialect {
	case Postgres:
		cols := `
	message_id   TEXT NOT NULL,
	topic        TEXT NOT NULL,
	msg_key      TEXT NOT NULL DEFAULT '',
	headers      JSON,
	content_type TEXT NOT NULL DEFAULT '',
	payload      BYTEA,
	created_at   TIMESTAMPTZ NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	last_error   TEXT`
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.main + ` (
	id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,` + cols + `
)`,
			`CREATE TABLE IF NOT EXISTS ` + t.quarantine + ` (
	id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	outbox_id BIGINT NOT NULL,` + cols + `,
	quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`,
			`CREATE TABLE IF NOT EXISTS ` + t.sent + ` (
	id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
	outbox_id BIGINT NOT NULL,` + cols + `,
	sent_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`,
			`CREATE INDEX IF NOT EXISTS ` + t.sentIndex + ` ON ` + t.sent + ` (sent_at)`,
		}
	case MySQL:
		// utf8mb4_bin: keys compare byte for byte, as they do in Go.
		cols := `
	message_id   VARCHAR(255) NOT NULL,
	topic        VARCHAR(200) NOT NULL,
	msg_key      TEXT NOT NULL,
	headers      JSON NULL,
	content_type VARCHAR(255) NOT NULL,
	payload      LONGBLOB NULL,
	created_at   DATETIME(6) NOT NULL,
	attempts     INT NOT NULL DEFAULT 0,
	last_error   TEXT NULL`
		opts := ` ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`
		stmts := []string{
			`CREATE TABLE IF NOT EXISTS ` + t.main + ` (
	id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,` + cols + `
)` + opts,
			`CREATE TABLE IF NOT EXISTS ` + t.quarantine + ` (
	id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
	outbox_id BIGINT NOT NULL,` + cols + `,
	quarantined_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
)` + opts,
			`CREATE TABLE IF NOT EXISTS ` + t.sent + ` (
	id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
	outbox_id BIGINT NOT NULL,` + cols + `,
	sent_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
	INDEX ` + t.sentIndex + ` (sent_at)
)` + opts,
		}
		return stmts
	default: // SQLite
		cols := `
	message_id   TEXT NOT NULL,
	topic        TEXT NOT NULL,
	msg_key      TEXT NOT NULL DEFAULT '',
	headers      TEXT,
	content_type TEXT NOT NULL DEFAULT '',
	payload      BLOB,
	created_at   INTEGER NOT NULL,
	attempts     INTEGER NOT NULL DEFAULT 0,
	last_error   TEXT`
		// AUTOINCREMENT: ids are never reused, even after the newest
		// rows were deleted, so an id names one message for good.
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + t.main + ` (
	id INTEGER PRIMARY KEY AUTOINCREMENT,` + cols + `
)`,
			`CREATE TABLE IF NOT EXISTS ` + t.quarantine + ` (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	outbox_id INTEGER NOT NULL,` + cols + `,
	quarantined_at INTEGER NOT NULL
)`,
			`CREATE TABLE IF NOT EXISTS ` + t.sent + ` (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	outbox_id INTEGER NOT NULL,` + cols + `,
	sent_at INTEGER NOT NULL
)`,
			`CREATE INDEX IF NOT EXISTS ` + t.sentIndex + ` ON ` + t.sent + ` (sent_at)`,
		}
	}
}
