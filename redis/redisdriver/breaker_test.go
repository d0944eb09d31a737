package redisdriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald/drivertest"
)

// TestBreakerOutage: a 2 s downstream outage on Redis Streams dead-letters
// nothing, and the subscription resumes by itself with every event
// handled once, in key order (drivertest.BreakerOutage).
func TestBreakerOutage(t *testing.T) {
	drivertest.BreakerOutage(t, newEnv(t).driver(t), 2*time.Second)
}
