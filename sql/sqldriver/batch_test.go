package sqldriver_test

import (
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

// TestBatch runs the batch-handler checks (herald.SubscribeBatch,
// Bus.HandleBatch) on the SQL log, in every dialect under test.
func TestBatch(t *testing.T) {
	for _, d := range allDialects {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, d)
			drivertest.RunBatch(t, drivertest.Config{
				NewDriver: func(t *testing.T) herald.Driver { return e.driver(t) },
			})
		})
	}
}
