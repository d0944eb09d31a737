package kafkadriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			brokers, real := cluster(t)
			return newDriver(t, brokers, real, conformanceTiers)
		},
		MaxMessageBytes: kafkadriver.DefaultMaxMessageBytes,
		DeliveryCounts:  true,
		Lag:             true,
		Revocation:      true,
		ErrorReporting:  true,
		Delay:           true,
	})
}

// conformanceTiers is the ladder of the conformance runs: the delays of
// the suite are a few seconds, and three tiers instead of the default
// seven keep the movers' group members (one per tier and Driver) from
// loading the shared test machine and kfake.
var conformanceTiers = kafkadriver.WithDelayTiers(time.Second, 5*time.Second, 30*time.Second)
