package sqldriver_test

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

func TestConformance(t *testing.T) {
	for _, d := range allDialects {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, d)
			drivertest.Run(t, drivertest.Config{
				NewDriver:       func(t *testing.T) herald.Driver { return e.driver(t) },
				MaxMessageBytes: sqldriver.DefaultMaxMessageBytes,
				Lag:             true,
				Revocation:      true,
				ErrorReporting:  true,
				Delay:           true,
				TimePrecision:   time.Microsecond,
			})
		})
	}
}
