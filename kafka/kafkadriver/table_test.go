package kafkadriver_test

import (
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

// TestTables runs the group-table checks on Kafka: changelogs are
// compacted topics partitioned like the input, and a partition's state
// moves with the partition in a rebalance.
func TestTables(t *testing.T) {
	drivertest.RunTables(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			brokers, real := cluster(t)
			return newDriver(t, brokers, real)
		},
	})
}
