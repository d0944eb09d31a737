package redisdriver_test

import (
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

// TestBatch runs the batch-handler checks (herald.SubscribeBatch,
// Bus.HandleBatch) on Redis Streams: acknowledgments are XACKs of each
// entry of a batch, the shutdown hands pending entries to the next member.
func TestBatch(t *testing.T) {
	drivertest.RunBatch(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver { return newEnv(t).driver(t) },
	})
}
