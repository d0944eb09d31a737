package natsdriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// TestRetryLaterCopySurvivesRestart: a retry copy (WithRetryLater) waits
// in the delay stream while the bus and its driver restart, and runs
// after its backoff in the failing group only (drivertest.RetryLaterRestart).
// The copy has the ID of the message the topic's stream holds already:
// it must not be dropped by the duplicate window. The 3 s backoff
// outlasts the first bus's shutdown, which waits out a pull request.
func TestRetryLaterCopySurvivesRestart(t *testing.T) {
	e := newEnv(t)
	drivertest.RetryLaterRestart(t, func(t *testing.T) herald.Driver {
		return e.driver(t, natsdriver.WithDelays())
	}, 3*time.Second)
}
