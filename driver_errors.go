package herald

import (
	"errors"
	"fmt"
	"strings"
)

// DriverError is a driver operation that failed, and where: every driver
// returns it from its calls and reports it to error handlers, so that
// errors.As finds the driver, the operation, the topic and the group, and
// errors.Is sees through it to the cause (ErrClosed, ErrMessageTooLarge,
// the client library's errors).
type DriverError struct {
	// Driver is the driver's package name ("kafkadriver", "redisdriver",
	// "memdriver").
	Driver string
	// Op says what failed, in the driver's words: "write", "subscribe",
	// "fetch", "ack", "commit", "close", "lag", ...
	Op string
	// Topic and Group say what it concerned ("" when nothing).
	Topic, Group string
	// Detail, when set, says more (the message, the partition, the
	// consequence), in words.
	Detail string
	// Err is the cause.
	Err error
}

func (e *DriverError) Error() string {
	var b strings.Builder
	b.WriteString(e.Driver)
	b.WriteString(": ")
	b.WriteString(e.Op)
	if e.Topic != "" {
		fmt.Fprintf(&b, " topic %q", e.Topic)
	}
	if e.Group != "" {
		fmt.Fprintf(&b, " group %q", e.Group)
	}
	if e.Detail != "" {
		b.WriteString(" ")
		b.WriteString(e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *DriverError) Unwrap() error { return e.Err }

// MessageError is one message of a Write that was not written.
type MessageError struct {
	Index     int    // position in the slice given to Write
	ID        string // Message.ID
	Topic     string
	Partition int   // the partition it was bound for; -1 for drivers without partitions
	Err       error // the broker's or the network's error
}

func (e *MessageError) Error() string {
	where := fmt.Sprintf("topic %q", e.Topic)
	if e.Partition >= 0 {
		where += fmt.Sprintf(" partition %d", e.Partition)
	}
	return fmt.Sprintf("message %s (index %d) to %s: %v", e.ID, e.Index, where, e.Err)
}

// Unwrap returns the cause.
func (e *MessageError) Unwrap() error { return e.Err }

// WriteError is a Write of which some or all messages were not written;
// the messages not listed in Failed were. A caller that retries only the
// failed ones keeps the others from being written twice.
type WriteError struct {
	Driver   string          // the driver's package name
	Messages int             // how many messages the Write had
	Failed   []*MessageError // in slice order
}

// Error summarises the failures by topic, partition and cause.
func (e *WriteError) Error() string {
	type group struct {
		topic     string
		partition int
		cause     string
		ids       []string
	}
	var groups []*group
	for _, f := range e.Failed {
		cause := f.Err.Error()
		var g *group
		for _, x := range groups {
			if x.topic == f.Topic && x.partition == f.Partition && x.cause == cause {
				g = x
				break
			}
		}
		if g == nil {
			g = &group{topic: f.Topic, partition: f.Partition, cause: cause}
			groups = append(groups, g)
		}
		g.ids = append(g.ids, f.ID)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d of %d messages not written", e.Driver, len(e.Failed), e.Messages)
	for _, g := range groups {
		fmt.Fprintf(&b, "; topic %q", g.topic)
		if g.partition >= 0 {
			fmt.Fprintf(&b, " partition %d", g.partition)
		}
		b.WriteString(": ")
		const shown = 3
		b.WriteString(strings.Join(g.ids[:min(len(g.ids), shown)], ", "))
		if len(g.ids) > shown {
			fmt.Fprintf(&b, " and %d more", len(g.ids)-shown)
		}
		b.WriteString(": ")
		b.WriteString(g.cause)
	}
	return b.String()
}

// Unwrap returns every *MessageError, so errors.Is and errors.As see the
// causes.
func (e *WriteError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f
	}
	return errs
}

// Written reports whether the message at index i of the Write was
// written.
func (e *WriteError) Written(i int) bool {
	for _, f := range e.Failed {
		if f.Index == i {
			return false
		}
	}
	return true
}

// NotWritten reports, for the n messages of a Write that returned err,
// which were not written: none for a nil err, those a *WriteError lists,
// every one for any other error. It is what a caller that retries only
// the failed messages of a batch (a delay mover) asks.
func NotWritten(err error, n int) []bool {
	failed := make([]bool, n)
	var we *WriteError
	switch {
	case err == nil:
	case errors.As(err, &we):
		for _, f := range we.Failed {
			if f.Index >= 0 && f.Index < n {
				failed[f.Index] = true
			}
		}
	default:
		for i := range failed {
			failed[i] = true
		}
	}
	return failed
}
