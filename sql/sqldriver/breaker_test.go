package sqldriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// TestBreakerOutageSQLite: a 2 s downstream outage on the SQL log
// (SQLite) dead-letters nothing, and the subscription resumes by itself
// with every event handled once, in key order (drivertest.BreakerOutage).
func TestBreakerOutageSQLite(t *testing.T) {
	e := newEnv(t, sqldriver.SQLite)
	drivertest.BreakerOutage(t, e.driver(t), 2*time.Second)
}
