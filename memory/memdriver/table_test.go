package memdriver_test

import (
	"testing"

	"github.com/heraldbus/herald/drivertest"
)

func TestTables(t *testing.T) {
	drivertest.RunTables(t, drivertest.Config{NewDriver: newDriver})
}
