package dlqtest

import (
	"errors"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/drivertest"
)

func testBadInput(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	const bad = "no spaces"
	if _, _, err := s.List(ctx, bad, "", 10); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("List: %v", err)
	}
	if _, err := s.Get(ctx, bad, "x"); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Get: %v", err)
	}
	if err := s.MarkRedriven(ctx, bad, nil); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("MarkRedriven: %v", err)
	}
	if _, err := dlq.Redrive(ctx, s, d, bad, dlq.RedriveOptions{}); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Redrive: %v", err)
	}
	topic := drivertest.Name(t, "t") + ".dlq"
	if _, _, err := s.List(ctx, topic, "", 0); err == nil {
		t.Error("List accepted limit 0")
	}
	if _, _, err := s.List(ctx, topic, "not a cursor", 10); err == nil {
		t.Error("List accepted a malformed cursor")
	}
	if err := s.MarkRedriven(ctx, topic, []dlq.Entry{{Position: "nowhere"}}); err == nil {
		t.Error("MarkRedriven accepted a malformed position")
	}
	if _, err := dlq.Redrive(ctx, s, d, topic, dlq.RedriveOptions{BatchSize: -1}); err == nil {
		t.Error("Redrive accepted a negative batch size")
	}
}
