// Package sqltest is the test support the SQL packages share: a database
// under test (the real PostgreSQL or MariaDB server the environment
// names, or an SQLite file), opened and quoted one way, and the child
// processes of the crash tests (Child).
package sqltest

import (
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Dialects are the dialects every SQL test runs on.
var Dialects = [...]sqlcore.Dialect{sqlcore.Postgres, sqlcore.MySQL, sqlcore.SQLite}

// DB is one database under test.
type DB struct {
	D      sqlcore.Dialect
	Driver string // the database/sql driver name
	DSN    string
	// MaxOpen bounds the connections of each pool Open returns (default 8).
	MaxOpen int
}

// New returns the database of dialect d: HERALD_POSTGRES_DSN or
// HERALD_MYSQL_DSN (the test skips, or fails under CI, when the server is
// down), or a new SQLite file in the test's temporary directory.
func New(t testing.TB, d sqlcore.Dialect) *DB {
	t.Helper()
	switch d {
	case sqlcore.Postgres:
		return Postgres(testenv.PostgresDSN(t))
	case sqlcore.MySQL:
		return &DB{D: d, Driver: "mysql", DSN: testenv.MySQLDSN(t)}
	default:
		return &DB{D: d, Driver: "sqlite", DSN: SQLiteDSN(filepath.Join(t.TempDir(), "test.db"))}
	}
}

// Postgres is the PostgreSQL database at dsn (a private server, say).
func Postgres(dsn string) *DB { return &DB{D: sqlcore.Postgres, Driver: "pgx", DSN: dsn} }

// SQLiteDSN is the DSN herald recommends for an SQLite file: WAL, a busy
// timeout, immediate transactions.
func SQLiteDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)&_txlock=immediate"
}

// Open returns a new *sql.DB on the database, closed when t ends. Tests
// that play several processes open one each.
func (db *DB) Open(t testing.TB) *sql.DB {
	t.Helper()
	pool, err := sql.Open(db.Driver, db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	n := db.MaxOpen
	if n <= 0 {
		n = 8
	}
	pool.SetMaxOpenConns(n)
	t.Cleanup(func() { _ = pool.Close() })
	return pool
}

// Quote quotes a table name the test generated.
func (db *DB) Quote(name string) string {
	if db.D == sqlcore.MySQL {
		return "`" + name + "`"
	}
	return `"` + name + `"`
}
