package outbox

// LockKey exposes the PostgreSQL advisory-lock key of a table, so tests can
// find (and kill) the session of the active relay.
func LockKey(schema, table string) int64 { return lockKey(schema, table) }

// LockName exposes the MySQL GET_LOCK name of a table.
func LockName(database, table string) string { return lockName(database, table) }
