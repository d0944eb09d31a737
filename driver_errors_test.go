package herald_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/heraldbus/herald"
)

func TestDriverErrorSaysWhereAndUnwraps(t *testing.T) {
	cause := errors.New("connection refused")
	err := error(&herald.DriverError{Driver: "redisdriver", Op: "read", Topic: "orders", Group: "billing", Err: cause})
	if got, want := err.Error(), `redisdriver: read topic "orders" group "billing": connection refused`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, cause) {
		t.Error("errors.Is does not see the cause")
	}
	var de *herald.DriverError
	if !errors.As(err, &de) || de.Op != "read" || de.Topic != "orders" || de.Group != "billing" {
		t.Errorf("errors.As = %+v", de)
	}
	bare := &herald.DriverError{Driver: "kafkadriver", Op: "ping", Detail: "(3 brokers)", Err: herald.ErrClosed}
	if got, want := bare.Error(), "kafkadriver: ping (3 brokers): herald: closed"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestWriteErrorListsWhatWasNotWritten(t *testing.T) {
	full := errors.New("OOM command not allowed")
	we := &herald.WriteError{Driver: "redisdriver", Messages: 5, Failed: []*herald.MessageError{
		{Index: 1, ID: "b", Topic: "orders", Partition: -1, Err: full},
		{Index: 3, ID: "d", Topic: "orders", Partition: -1, Err: full},
		{Index: 4, ID: "e", Topic: "audit", Partition: -1, Err: herald.ErrMessageTooLarge},
	}}
	want := `redisdriver: 3 of 5 messages not written; topic "orders": b, d: OOM command not allowed; topic "audit": e: herald: message too large`
	if got := we.Error(); got != want {
		t.Errorf("Error() =\n%q, want\n%q", got, want)
	}
	if !errors.Is(we, full) || !errors.Is(we, herald.ErrMessageTooLarge) {
		t.Error("errors.Is does not see the causes")
	}
	var me *herald.MessageError
	if !errors.As(we, &me) || me.ID != "b" {
		t.Errorf("errors.As = %+v, want the first failure", me)
	}
	for i, written := range []bool{true, false, true, false, false} {
		if we.Written(i) != written {
			t.Errorf("Written(%d) = %v, want %v", i, we.Written(i), written)
		}
	}
	wrapped := fmt.Errorf("moving: %w", we)
	for _, c := range []struct {
		err  error
		want []bool
	}{
		{nil, []bool{false, false, false, false, false}},
		{wrapped, []bool{false, true, false, true, true}},
		{full, []bool{true, true, true, true, true}},
	} {
		if got := herald.NotWritten(c.err, 5); !slices.Equal(got, c.want) {
			t.Errorf("NotWritten(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	kafka := &herald.MessageError{Index: 0, ID: "a", Topic: "orders", Partition: 2, Err: full}
	if got := kafka.Error(); got != `message a (index 0) to topic "orders" partition 2: OOM command not allowed` {
		t.Errorf("Error() = %q", got)
	}
}
