package optcheck

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

func TestProblems(t *testing.T) {
	p := New("kafkadriver")
	if p.Err() != nil {
		t.Fatalf("an empty list = %v, want nil", p.Err())
	}
	Positive(p, "batch size", 0)
	Positive(p, "request timeout", time.Second) // fine
	Shorter(p, "heartbeat interval", 3*time.Second, "session timeout", time.Second)
	Shorter(p, "revoke timeout", 0, "session timeout", time.Second) // unset: fine
	p.If(false, "never")
	p.Add(nil)
	p.Add(errors.New("found earlier"))
	err := p.Err()
	if !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("%v does not wrap ErrInvalidOption", err)
	}
	want := "kafkadriver: batch size must be positive, got 0: herald: invalid option\n" +
		"kafkadriver: heartbeat interval (3s) must be shorter than the session timeout (1s): herald: invalid option\n" +
		"found earlier"
	if err.Error() != want {
		t.Errorf("Err() =\n%s\nwant\n%s", err, want)
	}
	if strings.Contains(err.Error(), "never") {
		t.Error("If recorded a problem that does not hold")
	}
}
