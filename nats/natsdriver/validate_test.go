package natsdriver

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

func TestValidateOptions(t *testing.T) {
	if err := ValidateOptions(WithStreamPrefix("APP_"), WithAckWait(time.Second)); err != nil {
		t.Errorf("good options: %v", err)
	}
	err := ValidateOptions(WithStreamPrefix("BAD.PREFIX"), WithAckWait(-time.Second))
	if !errors.Is(err, herald.ErrInvalidOption) || !strings.Contains(err.Error(), `stream prefix "BAD.PREFIX"`) || !strings.Contains(err.Error(), "ack wait") {
		t.Errorf("bad options: %v", err)
	}
}
