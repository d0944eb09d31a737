package outbox

import (
	"errors"

	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Sentinel errors of the package; errors returned by its functions wrap
// them (and the herald sentinels where one fits), so errors.Is works.
var (
	// ErrNoTransaction is returned by Writer.Write when the context carries
	// no transaction (see WithTx and WithPgxTx). The Writer never falls back
	// to an autocommit insert: an event written outside the business
	// transaction would be published even if that transaction rolls back.
	ErrNoTransaction = errors.New("outbox: no transaction in context (use outbox.WithTx or outbox.WithPgxTx)")

	// ErrUnknownDialect is returned for a Dialect value or name that is not
	// Postgres, MySQL or SQLite.
	ErrUnknownDialect = sqlcore.ErrUnknownDialect

	// ErrDialectMismatch is returned when a pgx.Tx is given to a Writer
	// whose dialect is not Postgres.
	ErrDialectMismatch = errors.New("outbox: transaction does not match the writer's dialect")

	// ErrInvalidMessage is returned for a message the outbox cannot store
	// faithfully: an ID, key or content type that is not valid UTF-8,
	// contains a NUL byte, or is too long for its column.
	ErrInvalidMessage = sqlcore.ErrInvalidMessage

	// ErrNoTable is wrapped by Relay.Check when the database answers but
	// one of the relay's tables cannot be read: it does not exist (run
	// Migrate), or the relay's user may not read it.
	ErrNoTable = errors.New("outbox: table missing or not readable")

	// ErrRelayStarted is returned by a second call to Relay.Run.
	ErrRelayStarted = errors.New("outbox: relay already started")
)
