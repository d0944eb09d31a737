package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Migrate creates the outbox table named table, its quarantine table
// (table + "_quarantine") and its table of sent rows (table + "_sent", used
// only with WithRetention), with their indexes, if they do not exist yet.
// It is idempotent and safe to run from several processes at once: it takes
// the database's own lock around the DDL (an advisory transaction lock on
// PostgreSQL, GET_LOCK on MySQL, the write lock on SQLite).
//
// Run it once at deploy or start-up, on its own, never inside a business
// transaction (MySQL commits DDL implicitly). It upgrades an outbox table
// of an earlier SchemaVersion in place, keeping its rows (version 1 to 2:
// it adds the deliver_at column and its indexes; 2 to 3, on PostgreSQL:
// see SchemaUpgrade2To3); it alters nothing else.
// The schema of each dialect is documented in the package doc.
//
// On SQLite the first connections to a new file race to switch it to WAL
// (the journal_mode pragma of the recommended DSN), and the losers get
// SQLITE_BUSY at once, whatever the busy timeout: Migrate retries that for
// up to 30 seconds, so that instances starting together on a new file
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
	err = sqlcore.MigrateWith(ctx, db, d, func(conn *sql.Conn) error { return migrate(ctx, conn, t) })
	if err != nil {
		return fmt.Errorf("outbox: migrate %s (%v): %w", t.name, t.dialect, err)
	}
	return nil
}

func migrate(ctx context.Context, conn *sql.Conn, t table) error {
	err := migrateV2(ctx, conn, t)
	if err != nil && t.dialect != Postgres && isDuplicateColumn(err) {
		// Another process added deliver_at between our look and our
		// ALTER (the look is outside the lock): look again.
		err = migrateV2(ctx, conn, t)
	}
	return err
}

// migrateV2 runs the schema, preceded on MySQL and SQLite, whose ALTER
// TABLE has no IF NOT EXISTS for columns, by the upgrade from version 1
// when the outbox table exists without deliver_at. PostgreSQL's schema
// upgrades by itself (ADD COLUMN IF NOT EXISTS).
func migrateV2(ctx context.Context, conn *sql.Conn, t table) error {
	stmts := schema(t)
	if t.dialect != Postgres {
		old, err := isV1(ctx, conn, t)
		if err != nil {
			return fmt.Errorf("look for deliver_at: %w", err)
		}
		if old {
			stmts = append(upgrade1To2(t), stmts...)
		}
	}
	return sqlcore.MigrateLocked(ctx, conn, t.dialect, t.name, stmts)
}

// isV1 reports whether the outbox table exists without deliver_at
// (MySQL, SQLite).
func isV1(ctx context.Context, conn *sql.Conn, t table) (bool, error) {
	var tables, cols int
	var err error
	if t.dialect == MySQL {
		err = conn.QueryRowContext(ctx, "SELECT COUNT(*), COALESCE(SUM(column_name = 'deliver_at'), 0) FROM information_schema.columns "+
			"WHERE table_schema = DATABASE() AND table_name = ?", t.name).Scan(&tables, &cols)
	} else {
		err = conn.QueryRowContext(ctx, "SELECT COUNT(*), COALESCE(SUM(name = 'deliver_at'), 0) FROM pragma_table_info(?)", t.name).Scan(&tables, &cols)
	}
	return tables > 0 && cols == 0, err
}

func isDuplicateColumn(err error) bool {
	return strings.Contains(strings.ToLower(err.Error()), "duplicate column")
}

// SchemaUpgrade1To2 returns the statements that take an outbox table of
// SchemaVersion 1 to version 2 for dialect d: they add deliver_at (the
// due time of a delayed message, see the package doc) and the indexes the
// relay reads by. Migrate applies them by itself; they are for teams whose
// migrations are run by a tool. On PostgreSQL they are idempotent; on
// MySQL and SQLite they are not (ADD COLUMN fails on a table that has the
// column): run them once, on a version 1 table, then Schema's statements
// (which on PostgreSQL take the table on to version 3).
func SchemaUpgrade1To2(d Dialect, table string) ([]string, error) {
	return statementsOf(d, table, upgrade1To2)
}

// statementsOf returns the statements f makes for the outbox table named
// table of dialect d, once the name is checked.
func statementsOf(d Dialect, table string, f func(table) []string) ([]string, error) {
	t, err := newTable(d, table)
	if err != nil {
		return nil, err
	}
	return f(t), nil
}

func upgrade1To2(t table) []string {
	switch t.dialect {
	case Postgres:
		return append([]string{`ALTER TABLE ` + t.main + ` ADD COLUMN IF NOT EXISTS deliver_at BIGINT`}, delayIndexes(t)...)
	case MySQL:
		return []string{`ALTER TABLE ` + t.main + ` ADD COLUMN deliver_at BIGINT NULL, ADD INDEX ` + t.dueIndex + ` (deliver_at, id)`}
	default:
		return []string{`ALTER TABLE ` + t.main + ` ADD COLUMN deliver_at INTEGER`}
	}
}

// delayIndexes are the partial indexes of PostgreSQL and SQLite: the rows
// the relay forwards, in id order (without it, every read would step over
// the delayed rows ahead of them), and the delayed rows in due order,
// which only delayed rows enter. MySQL has no partial indexes: one index
// on (deliver_at, id) serves both reads there.
func delayIndexes(t table) []string {
	return []string{
		`CREATE INDEX IF NOT EXISTS ` + t.readyIndex + ` ON ` + t.main + ` (id) WHERE deliver_at IS NULL`,
		`CREATE INDEX IF NOT EXISTS ` + t.dueIndex + ` ON ` + t.main + ` (deliver_at, id) WHERE deliver_at IS NOT NULL`,
	}
}

// SchemaUpgrade2To3 returns the statements that take an outbox table of
// SchemaVersion 2 to version 3 for dialect d: on PostgreSQL they create
// the sequence of the delayed rows' ids, give the delayed rows ids below
// zero from it (in their order), and drop the index of the rows not
// delayed, which the relay no longer needs (it reads id > 0 by the
// primary key); MySQL and SQLite have nothing to change. Migrate applies
// them itself; they are idempotent, and safe while version 2 writers and
// relays still run (a delayed row a version 2 writer adds later keeps a
// positive id: the relay's mover still promotes it when it is due, and
// the relay's reads step over it until then).
func SchemaUpgrade2To3(d Dialect, table string) ([]string, error) {
	return statementsOf(d, table, upgrade2To3)
}

func upgrade2To3(t table) []string {
	if t.dialect != Postgres {
		return nil
	}
	return []string{
		`CREATE SEQUENCE IF NOT EXISTS ` + t.delayedSeq,
		// The ids are drawn in id order, so the delayed rows keep their
		// order among themselves.
		`UPDATE ` + t.main + ` SET id = renumbered.id FROM (SELECT d.id AS old_id, nextval(` + sqlcore.QuoteLiteral(t.delayedSeq) + `) - ` + delayedIDBase +
			` AS id FROM (SELECT id FROM ` + t.main + ` WHERE deliver_at IS NOT NULL AND id > 0 ORDER BY id) d) renumbered WHERE ` + t.main + `.id = renumbered.old_id`,
		`DROP INDEX IF EXISTS ` + t.readyIndex,
	}
}

// SchemaVersion is the version of the tables Schema and Migrate create.
// It is 1 since the first release. A release that changes the tables
// raises it, says so under Breaking in the CHANGELOG, and ships the change
// as statements that take each earlier version to the new one (outbox
// functions named for the versions, which Migrate also applies, under the
// same lock), so that teams with their own migration tool copy them as
// they copied Schema.
//
// Version 2 adds the outbox table's deliver_at column and its indexes
// (SchemaUpgrade1To2), for delayed delivery. Version 3 gives delayed
// rows on PostgreSQL ids below zero, from a sequence of their own, and
// drops the index of the rows not delayed (SchemaUpgrade2To3): an
// ordinary row then updates one index, the primary key, instead of two.
const SchemaVersion = 3

// Schema returns the statements that create the outbox table named table,
// its quarantine table and its table of sent rows, with their index, for
// dialect d: exactly what Migrate runs (inside its lock), for teams whose
// migrations are run by a tool (golang-migrate, goose, Atlas, Flyway) to
// put in a migration of their own. Each statement is idempotent (CREATE
// ... IF NOT EXISTS) and ends without a semicolon; run them in order,
// outside business transactions. The table name is checked like
// Migrate's.
func Schema(d Dialect, table string) ([]string, error) {
	return statementsOf(d, table, schema)
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
//
// and, in the outbox table only, since version 2:
//
//	deliver_at    NULL, or the due time of a delayed message not yet due, in
//	              Unix milliseconds rounded up; the relay sets it to NULL
//	              (re-inserting the row) when it is due
//
// and since version 3, on PostgreSQL, the sequence table + "_delayed_id_seq"
// of the delayed rows' ids, which lie below zero (see SchemaUpgrade2To3).
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
		return append([]string{
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
			`ALTER TABLE ` + t.main + ` ADD COLUMN IF NOT EXISTS deliver_at BIGINT`,
			delayIndexes(t)[1], // the due index; version 3 drops the other
		}, upgrade2To3(t)...)
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
	id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,` + cols + `,
	deliver_at   BIGINT NULL,
	INDEX ` + t.dueIndex + ` (deliver_at, id)
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
	id INTEGER PRIMARY KEY AUTOINCREMENT,` + cols + `,
	deliver_at   INTEGER
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
			delayIndexes(t)[0], delayIndexes(t)[1],
		}
	}
}
