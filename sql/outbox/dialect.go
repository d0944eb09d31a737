package outbox

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/heraldbus/herald"
)

// Dialect is the SQL dialect of the database that holds the outbox. It
// decides the schema Migrate creates, the placeholders and limits of the
// Writer's INSERT, and how relays exclude each other.
type Dialect int

// The supported dialects.
const (
	// Postgres is PostgreSQL 11 or later through jackc/pgx/v5 (its
	// database/sql driver "pgx", or a native pgx.Tx for the Writer).
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

func (d Dialect) check() error {
	switch d {
	case Postgres, MySQL, SQLite:
		return nil
	}
	return fmt.Errorf("%w: %v", ErrUnknownDialect, d)
}

// maxParams is the most bind parameters one statement may carry.
func (d Dialect) maxParams() int {
	if d == SQLite {
		return 32766 // SQLITE_MAX_VARIABLE_NUMBER since SQLite 3.32
	}
	return 65535 // PostgreSQL's and MySQL's protocol limit
}

// quote quotes an identifier that validateTable has already accepted; the
// escaping is a second line of defence, not the first.
func (d Dialect) quote(ident string) string {
	if d == MySQL {
		return "`" + strings.ReplaceAll(ident, "`", "``") + "`"
	}
	return `"` + strings.ReplaceAll(ident, `"`, `""`) + `"`
}

// MaxTableNameLength bounds an outbox table name. The quarantine and sent
// tables and their indexes append suffixes of up to 20 bytes, and
// PostgreSQL truncates identifiers at 63 bytes.
const MaxTableNameLength = 40

// DefaultTable is the table name the herald command uses when none is given.
const DefaultTable = "herald_outbox"

// ValidateTable checks an outbox table name: 1 to MaxTableNameLength bytes
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

// table holds the quoted names derived from one validated outbox table name.
type table struct {
	dialect    Dialect
	name       string // as given, validated
	main       string // quoted outbox table
	quarantine string // quoted quarantine table
	sent       string // quoted table of sent rows kept for retention
	sentIndex  string // quoted index on sent.sent_at
	channel    string // PostgreSQL NOTIFY channel, unquoted
}

func newTable(d Dialect, name string) (table, error) {
	if err := d.check(); err != nil {
		return table{}, err
	}
	if err := ValidateTable(name); err != nil {
		return table{}, err
	}
	return table{
		dialect:    d,
		name:       name,
		main:       d.quote(name),
		quarantine: d.quote(name + "_quarantine"),
		sent:       d.quote(name + "_sent"),
		sentIndex:  d.quote(name + "_sent_sent_at_idx"),
		channel:    "herald_outbox_" + name,
	}, nil
}

// lockKey is the PostgreSQL advisory-lock key of the outbox table in the
// given schema. Advisory locks are per database; the schema is part of the
// key so that outboxes of one name in two schemas do not exclude each other.
func lockKey(schema, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("herald-outbox\x00" + schema + "\x00" + name))
	return int64(h.Sum64())
}

// lockName is the MySQL GET_LOCK name of the outbox table in the given
// database. GET_LOCK names are server-wide and at most 64 characters.
func lockName(database, name string) string {
	n := "herald-outbox:" + database + "." + name
	if len(n) <= 64 {
		return n
	}
	sum := sha256.Sum256([]byte(n))
	return "herald-outbox:" + hex.EncodeToString(sum[:20])
}

// quoteLiteral quotes a string literal for PostgreSQL; it is only used for
// the NOTIFY channel, which is derived from a validated table name.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
