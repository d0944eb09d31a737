package inbox_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"strings"
	"testing"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/heraldbus/herald/sql/inbox"
	"github.com/heraldbus/herald/sql/internal/sqltest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type testDB = sqltest.DB

// forEachDialect runs f on every dialect, in parallel subtests.
func forEachDialect(t *testing.T, f func(t *testing.T, tdb *testDB)) {
	for _, d := range sqltest.Dialects {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			f(t, sqltest.New(t, d))
		})
	}
}

// tableName returns a new table name (tests of other packages share the
// servers) and drops the table when t ends.
func tableName(t testing.TB, tdb *testDB, db *sql.DB, prefix string) string {
	t.Helper()
	name := prefix + strings.ToLower(rand.Text()[:12])
	t.Cleanup(func() {
		if _, err := db.Exec("DROP TABLE IF EXISTS " + tdb.Quote(name)); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return name
}

// newInbox returns a migrated inbox on a table of its own.
func newInbox(t testing.TB, tdb *testDB, db *sql.DB, opts ...inbox.Option) *inbox.Inbox {
	t.Helper()
	name := tableName(t, tdb, db, "hi_")
	ib, err := inbox.New(db, tdb.D, append([]inbox.Option{inbox.WithTable(name)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ib
}

// effects is a table of handler effects without a key of its own, so
// that an effect made twice shows as two rows.
type effects struct {
	t     testing.TB
	tdb   *testDB
	db    *sql.DB
	table string
}

func newEffects(t testing.TB, tdb *testDB, db *sql.DB) effects {
	t.Helper()
	e := effects{t: t, tdb: tdb, db: db, table: tableName(t, tdb, db, "he_")}
	if _, err := db.Exec("CREATE TABLE " + tdb.Quote(e.table) + " (msg VARCHAR(255) NOT NULL, grp VARCHAR(200) NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return e
}

// insert makes the effect of message id for group in tx.
func (e effects) insert(ctx context.Context, tx *sql.Tx, id, group string) error {
	_, err := tx.ExecContext(ctx, "INSERT INTO "+e.tdb.Quote(e.table)+" (msg, grp) VALUES ("+ph(e.tdb, 1)+", "+ph(e.tdb, 2)+")", id, group)
	return err
}

// count returns how many effects message id has (any group).
func (e effects) count(id string) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow("SELECT COUNT(*) FROM "+e.tdb.Quote(e.table)+" WHERE msg = "+ph(e.tdb, 1), id).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// counts returns the number of effects of each message.
func (e effects) counts() map[string]int {
	e.t.Helper()
	rs, err := e.db.Query("SELECT msg, COUNT(*) FROM " + e.tdb.Quote(e.table) + " GROUP BY msg")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rs.Close()
	out := map[string]int{}
	for rs.Next() {
		var id string
		var n int
		if err := rs.Scan(&id, &n); err != nil {
			e.t.Fatal(err)
		}
		out[id] = n
	}
	if err := rs.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func ph(tdb *testDB, i int) string {
	if tdb.D == inbox.Postgres {
		return "$" + string(rune('0'+i))
	}
	return "?"
}
