package outbox

import "github.com/heraldbus/herald/sql/internal/sqlcore"

// LockKey exposes the PostgreSQL advisory-lock key of a table, so tests can
// find (and kill) the session of the active relay.
func LockKey(schema, table string) int64 { return sqlcore.LockKey(schema, table) }

// LockName exposes the MySQL GET_LOCK name of a table.
func LockName(database, table string) string { return sqlcore.LockName(database, table) }
