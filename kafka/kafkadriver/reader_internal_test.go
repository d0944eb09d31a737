package kafkadriver

import (
	"errors"
	"fmt"
	"net"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
)

// A final commit that fails because the group moved on, or because
// kafka-go closed the generation's coordinator connection, is not the
// caller's error at Close; any other failure is.
func TestGroupMovedOn(t *testing.T) {
	closedConn := &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("offsets map[2:40]: %w", kafkago.RebalanceInProgress), true},
		{fmt.Errorf("offsets map[2:40]: %w", kafkago.IllegalGeneration), true},
		{fmt.Errorf("offsets map[2:40]: %w", closedConn), true},
		{fmt.Errorf("offsets map[2:40]: %w", kafkago.RequestTimedOut), false},
		{errors.New("connection refused"), false},
	} {
		if got := groupMovedOn(c.err); got != c.want {
			t.Errorf("groupMovedOn(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
