package sqldriver_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqltest"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/sql/sqldriver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var allDialects = sqltest.Dialects

// testDB is one database under test.
type testDB = sqltest.DB

func newTestDB(t testing.TB, d sqldriver.Dialect) *testDB { return sqltest.New(t, d) }

func sqliteDSN(path string) string { return sqltest.SQLiteDSN(path) }

func forEachDialect(t *testing.T, f func(t *testing.T, tdb *testDB)) {
	for _, d := range allDialects {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			f(t, newTestDB(t, d))
		})
	}
}

// newLog makes a log of its own (tests share the servers), migrated, and
// drops its tables when t ends.
func newLog(t testing.TB, tdb *testDB, db *sql.DB, opts ...sqldriver.Option) string {
	t.Helper()
	name := "hl_" + strings.ToLower(rand.Text()[:10])
	drv := newDriver(t, db, tdb.D, append(opts, sqldriver.WithTable(name))...)
	if err := drv.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, suffix := range []string{"", "_offsets", "_members", "_meta", "_redriven", "_delayed"} {
			if _, err := db.Exec("DROP TABLE IF EXISTS " + tdb.Quote(name+suffix)); err != nil {
				t.Errorf("drop %s%s: %v", name, suffix, err)
			}
		}
	})
	return name
}

// newDriver returns a driver closed when t ends, with the test's short
// lease and poll so that hand-overs happen within a test's patience.
func newDriver(t testing.TB, db *sql.DB, d sqldriver.Dialect, opts ...sqldriver.Option) *sqldriver.Driver {
	t.Helper()
	base := []sqldriver.Option{sqldriver.WithLease(2 * time.Second), sqldriver.WithErrorHandler(func(err error) { t.Logf("driver: %v", err) })}
	drv, err := sqldriver.New(db, d, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = drv.Close() })
	return drv
}

// env is one log on one database: drivers made from it share the log,
// as processes of one service would.
type env struct {
	tdb   *testDB
	db    *sql.DB
	table string
}

func newEnv(t testing.TB, d sqldriver.Dialect, opts ...sqldriver.Option) *env {
	tdb := newTestDB(t, d)
	db := tdb.Open(t)
	return &env{tdb: tdb, db: db, table: newLog(t, tdb, db, opts...)}
}

// driver returns another driver on the env's log ("another process").
func (e *env) driver(t testing.TB, opts ...sqldriver.Option) *sqldriver.Driver {
	return newDriver(t, e.db, e.tdb.D, append(opts, sqldriver.WithTable(e.table))...)
}

func msg(topic, key, id string) *herald.Message {
	return &herald.Message{ID: id, Topic: topic, Key: key, Data: []byte(id)}
}
