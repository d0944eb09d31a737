package outbox

import (
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Dialect is the SQL dialect of the database that holds the outbox. It
// decides the schema Migrate creates, the placeholders and limits of the
// Writer's INSERT, and how relays exclude each other. It is the same type
// as sqldriver.Dialect.
type Dialect = sqlcore.Dialect

// The supported dialects.
const (
	// Postgres is PostgreSQL 11 or later through jackc/pgx/v5 (its
	// database/sql driver "pgx", or a native pgx.Tx for the Writer).
	Postgres = sqlcore.Postgres
	// MySQL is MySQL 8 or MariaDB 10.3 or later through go-sql-driver/mysql.
	MySQL = sqlcore.MySQL
	// SQLite is SQLite through modernc.org/sqlite (driver name "sqlite").
	SQLite = sqlcore.SQLite
)

// ParseDialect returns the dialect named s: "postgres" (or "postgresql",
// "pgx"), "mysql" (or "mariadb"), "sqlite" (or "sqlite3"), any case.
func ParseDialect(s string) (Dialect, error) { return sqlcore.ParseDialect(s) }

// MaxTableNameLength bounds an outbox table name. The quarantine and sent
// tables and their indexes append suffixes of up to 20 bytes, and
// PostgreSQL truncates identifiers at 63 bytes.
const MaxTableNameLength = sqlcore.MaxTableNameLength

// DefaultTable is the table name the herald command uses when none is given.
const DefaultTable = "herald_outbox"

// ValidateTable checks an outbox table name: 1 to MaxTableNameLength bytes
// of lower-case ASCII letters, digits and underscores, not starting with a
// digit. Names are quoted in every statement as well, but only names that
// pass this check ever reach SQL. Schema-qualified names are not accepted:
// choose the schema or database with the connection (search_path, the
// database in the DSN). The error is a *herald.NameError that wraps
// herald.ErrInvalidName.
func ValidateTable(name string) error { return sqlcore.ValidateTable(name) }

// table holds the quoted names derived from one validated outbox table name.
type table struct {
	dialect    Dialect
	name       string // as given, validated
	main       string // quoted outbox table
	quarantine string // quoted quarantine table
	sent       string // quoted table of sent rows kept for retention
	sentIndex  string // quoted index on sent.sent_at
	readyIndex string // quoted index of the rows the relay may forward (deliver_at IS NULL)
	dueIndex   string // quoted index of the delayed rows, by due time
	delayedSeq string // quoted sequence of the delayed rows' ids (PostgreSQL)
	channel    string // PostgreSQL NOTIFY channel, unquoted
}

// delayedIDBase offsets the ids of delayed rows on PostgreSQL below zero
// (SchemaVersion 3): they still increase, in write order, and the
// relay's reads (id > 0, by the primary key) never step over them.
const delayedIDBase = "4611686018427387904" // 2^62

// delayedID is the id a PostgreSQL Writer gives a delayed row.
func (t table) delayedID() string {
	return "nextval(" + sqlcore.QuoteLiteral(t.delayedSeq) + ") - " + delayedIDBase
}

func newTable(d Dialect, name string) (table, error) {
	if err := d.Check(); err != nil {
		return table{}, err
	}
	if err := ValidateTable(name); err != nil {
		return table{}, err
	}
	return table{
		dialect:    d,
		name:       name,
		main:       d.Quote(name),
		quarantine: d.Quote(name + "_quarantine"),
		sent:       d.Quote(name + "_sent"),
		sentIndex:  d.Quote(name + "_sent_sent_at_idx"),
		readyIndex: d.Quote(name + "_ready_idx"),
		dueIndex:   d.Quote(name + "_due_idx"),
		delayedSeq: d.Quote(name + "_delayed_id_seq"),
		channel:    "herald_outbox_" + name,
	}, nil
}
