package memory_test

import (
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/driver/memory"
	"github.com/heraldbus/herald/drivertest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newDriver(t *testing.T) herald.Driver {
	b := memory.New()
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	drivertest.Run(t, drivertest.Config{
		NewDriver:       newDriver,
		MaxMessageBytes: memory.DefaultMaxMessageBytes,
		TimePrecision:   1, // the memory driver keeps the Time it was given
	})
}
