package amqpdriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

// TestBatch runs the batch-handler checks (herald.SubscribeBatch,
// Bus.HandleBatch) on RabbitMQ (one member per group at a time, so the
// per-key order holds).
func TestBatch(t *testing.T) {
	drivertest.RunBatch(t, drivertest.Config{
		NewDriver:     func(t *testing.T) herald.Driver { return newDriver(t) },
		TimePrecision: time.Nanosecond,
	})
}
