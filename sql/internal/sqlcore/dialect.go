// Package sqlcore is what herald's SQL packages (sql/outbox, sql/sqldriver,
// sql/inbox) share: the dialects and their SQL spellings, table-name
// checks, migrations under the database's lock, the transaction a context
// carries, the message checks and header encoding of a row, time
// scanning, transactions on one connection, and the PostgreSQL LISTEN
// session. Each of those has its owner here.
package sqlcore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/heraldbus/herald"
)

// ErrUnknownDialect is returned for a Dialect value or name that is not
// Postgres, MySQL or SQLite.
var ErrUnknownDialect = errors.New("herald/sql: unknown dialect")

// Dialect is the SQL dialect of the database that holds herald's tables. It
// decides the schema of the tables, the placeholders and limits of the
// INSERT statements, and how processes exclude each other.
type Dialect int

// The supported dialects.
const (
	// Postgres is PostgreSQL 11 or later through jackc/pgx/v5 (its
	// database/sql driver "pgx", or or a native pgx.Tx).
	Postgres Dialect = iota + 1
	// MySQL is MySQL 8 or MariaDB 10.3 or later through go-sql-driver/mysql.
	MySQL
	// SQLite is SQLite through modernc.org/sqlite (driver name "sqlite").
	SQLite
)

// String returns "postgres", "mysql" or "sqlite".
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case MySQL:
		return "mysql"
	case SQLite:
		return "sqlite"
	}
	return "Dialect(" + strconv.Itoa(int(d)) + ")"
}

// ParseDialect returns the dialect named s: "postgres" (or "postgresql",
// "pgx"), "mysql" (or "mariadb"), "sqlite" (or "sqlite3"), any case.
func ParseDialect(s string) (Dialect, error) {
	switch strings.ToLower(s) {
	case "postgres", "postgresql", "pgx":
		return Postgres, nil
	case "mysql", "mariadb":
		return MySQL, nil
	case "sqlite", "sqlite3":
		return SQLite, nil
	}
	return 0, fmt.Errorf("%w: %q (want postgres, mysql or sqlite)", ErrUnknownDialect, s)
}

// Check returns ErrUnknownDialect (wrapped) unless d is a known dialect.
func (d Dialect) Check() error {
	switch d {
	case Postgres, MySQL, SQLite:
		return nil
	}
	return fmt.Errorf("%w: %v", ErrUnknownDialect, d)
}

// MaxParams is the most bind parameters one statement may carry.
func (d Dialect) MaxParams() int {
	if d == SQLite {
		return 32766 // SQLITE_MAX_VARIABLE_NUMBER since SQLite 3.32
	}
	return 65535 // PostgreSQL's and MySQL's protocol limit
}

// Quote quotes an identifier that ValidateTable has already accepted; the
// escaping is a second line of defence, not the first.
func (d Dialect) Quote(ident string) string {
	if d == MySQL {
		return "`" + strings.ReplaceAll(ident, "`", "``") + "`"
	}
	return `"` + strings.ReplaceAll(ident, `"`, `""`) + `"`
}

// MaxTableNameLength bounds a table name given to herald. Its companion
// tables and indexes append suffixes of up to 20 bytes, and PostgreSQL
// truncates identifiers at 63 bytes.
const MaxTableNameLength = 40

// ValidateTable checks a table name: 1 to MaxTableNameLength bytes
// of lower-case ASCII letters, digits and underscores, not starting with a
// digit. Names are quoted in every statement as well, but only names that
// pass this check ever reach SQL. Schema-qualified names are not accepted:
// choose the schema or database with the connection (search_path, the
// database in the DSN). The error is a *herald.NameError that wraps
// herald.ErrInvalidName.
func ValidateTable(name string) error {
	reason := ""
	switch {
	case name == "":
		reason = "empty"
	case len(name) > MaxTableNameLength:
		reason = fmt.Sprintf("longer than %d bytes", MaxTableNameLength)
	case name[0] >= '0' && name[0] <= '9':
		reason = "starts with a digit"
	default:
		for i := 0; i < len(name); i++ {
			c := name[i]
			if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' {
				continue
			}
			reason = "only lower-case letters, digits and _ are allowed"
			break
		}
	}
	if reason != "" {
		return &herald.NameError{Kind: "table", Name: name, Reason: reason}
	}
	return nil
}

// QuoteLiteral quotes a string literal for PostgreSQL; it is only used for
// NOTIFY channels, which are derived from validated table names.
func QuoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// TimeArg converts a time into its bind value: microseconds, UTC; Unix
// microseconds on SQLite, whose schemas store INTEGER.
func (d Dialect) TimeArg(t time.Time) any {
	t = t.UTC().Truncate(time.Microsecond)
	if d == SQLite {
		return t.UnixMicro()
	}
	return t
}

// InsertIgnore returns what goes before and after an INSERT's table and
// rows so that rows whose key exists are left as they are: the statement
// then reports no row affected for them. On MySQL it is INSERT IGNORE,
// which also turns data errors into warnings: check values against their
// columns before.
func (d Dialect) InsertIgnore() (head, tail string) {
	switch d {
	case MySQL:
		return "INSERT IGNORE INTO ", ""
	case SQLite:
		return "INSERT OR IGNORE INTO ", ""
	}
	return "INSERT INTO ", " ON CONFLICT DO NOTHING"
}
