package outbox

import "github.com/heraldbus/herald/sql/internal/sqlcore"

// LockKey exposes the PostgreSQL advisory-lock key of a table, so tests can
// find (and kill) the session of the active relay.
func LockKey(schema, table string) int64 { return sqlcore.LockKey(schema, table) }

// LockName exposes the MySQL GET_LOCK name of a table.
func LockName(database, table string) string { return sqlcore.LockName(database, table) }

// RelayQueries exposes the relay's read (without exclusions), its next-due
// look and its due-row scan (one bind value: the database's now in Unix
// ms), so that tests can EXPLAIN them.
func RelayQueries(d Dialect, table string) (read, nextDue, dueIDs string) {
	t, err := newTable(d, table)
	if err != nil {
		panic(err)
	}
	q := newQueries(t)
	return q.read, q.nextDue, q.dueIDs
}

// DelayedID exposes the id expression of a delayed row on PostgreSQL.
func DelayedID(table string) string {
	t, err := newTable(Postgres, table)
	if err != nil {
		panic(err)
	}
	return t.delayedID()
}
