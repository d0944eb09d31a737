package memdriver_test

import (
	"testing"

	"github.com/heraldbus/herald/drivertest"
)

// TestBatch runs the batch-handler checks (herald.SubscribeBatch,
// Bus.HandleBatch) on the memory driver.
func TestBatch(t *testing.T) {
	drivertest.RunBatch(t, drivertest.Config{NewDriver: newDriver})
}
