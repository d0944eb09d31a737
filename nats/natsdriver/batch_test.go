package natsdriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// TestBatch runs the batch-handler checks (herald.SubscribeBatch,
// Bus.HandleBatch) on NATS JetStream.
func TestBatch(t *testing.T) {
	drivertest.RunBatch(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			return newEnv(t).driver(t, natsdriver.WithAckWait(2*time.Second))
		},
	})
}
