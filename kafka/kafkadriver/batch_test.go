package kafkadriver_test

import (
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

// TestBatch runs the batch-handler checks (herald.SubscribeBatch,
// Bus.HandleBatch) on Kafka: a batch's acknowledgments commit offsets
// below the lowest unfinished one, as single handlers' do.
func TestBatch(t *testing.T) {
	drivertest.RunBatch(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			brokers, real := cluster(t)
			return newDriver(t, brokers, real)
		},
	})
}
