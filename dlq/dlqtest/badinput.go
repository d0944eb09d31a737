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
	for _, limit := range []int{0, -1} {
		if _, _, err := s.List(ctx, topic, "", limit); !errors.Is(err, herald.ErrInvalidOption) {
			t.Errorf("List with limit %d: %v, want herald.ErrInvalidOption", limit, err)
		}
	}
	for _, pos := range append([]string{"not a cursor", "nowhere", "-1", "1.5", " 1"}, cfg.BadPositions...) {
		if _, _, err := s.List(ctx, topic, pos, 10); !errors.Is(err, dlq.ErrBadPosition) {
			t.Errorf("List with cursor %q: %v, want dlq.ErrBadPosition", pos, err)
		}
		if err := s.MarkRedriven(ctx, topic, []dlq.Entry{{Position: pos}}); !errors.Is(err, dlq.ErrBadPosition) {
			t.Errorf("MarkRedriven of position %q: %v, want dlq.ErrBadPosition", pos, err)
		}
	}
	if _, err := dlq.Redrive(ctx, s, d, topic, dlq.RedriveOptions{BatchSize: -1}); err == nil {
		t.Error("Redrive accepted a negative batch size")
	}
}
