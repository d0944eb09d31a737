package sqldriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// TestRetryLaterCopySurvivesRestartSQLite: a retry copy (WithRetryLater)
// waits in the SQL log's delayed table (SQLite) while the bus and its
// driver restart, and runs after its backoff in the failing group only
// (drivertest.RetryLaterRestart).
func TestRetryLaterCopySurvivesRestartSQLite(t *testing.T) {
	e := newEnv(t, sqldriver.SQLite)
	drivertest.RetryLaterRestart(t, func(t *testing.T) herald.Driver {
		return e.driver(t, sqldriver.WithDelayPollInterval(20*time.Millisecond), sqldriver.WithPollInterval(5*time.Millisecond, 50*time.Millisecond))
	}, 2*time.Second)
}
