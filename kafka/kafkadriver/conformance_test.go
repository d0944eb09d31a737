package kafkadriver_test

import (
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			brokers, real := cluster(t)
			return newDriver(t, brokers, real)
		},
		MaxMessageBytes: kafkadriver.DefaultMaxMessageBytes,
		DeliveryCounts:  true,
		Lag:             true,
		Revocation:      true,
		ErrorReporting:  true,
		Delay:           true,
	})
}
