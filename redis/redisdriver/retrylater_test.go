package redisdriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// TestRetryLaterCopySurvivesRestart: a retry copy (WithRetryLater) waits
// in Redis while the bus and its driver restart, and runs after its
// backoff in the failing group only (drivertest.RetryLaterRestart). The
// 3 s backoff outlasts the first bus's shutdown, which waits out a
// blocking read.
func TestRetryLaterCopySurvivesRestart(t *testing.T) {
	env := newEnv(t)
	drivertest.RetryLaterRestart(t, func(t *testing.T) herald.Driver {
		d := env.driver(t, redisdriver.WithDelayPollInterval(20*time.Millisecond))
		t.Cleanup(func() { _ = d.Close() })
		return d
	}, 3*time.Second)
}
