package kafka_test

import (
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/driver/kafka"
	"github.com/heraldbus/herald/drivertest"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		NewDriver: func(t *testing.T) herald.Driver {
			brokers, real := cluster(t)
			return newDriver(t, brokers, real)
		},
		MaxMessageBytes: kafka.DefaultMaxMessageBytes,
		DeliveryCounts:  true,
	})
}
