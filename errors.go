package herald

import (
	"errors"
	"fmt"
)

// Sentinel errors. Typed errors below wrap them where it helps callers, so
// errors.Is works on both.
var (
	// ErrNilEvent is returned when a nil event (or a nil pointer) is published.
	ErrNilEvent = errors.New("herald: nil event")
	// ErrUnregisteredEvent is returned for an event type the registry cannot
	// map to a topic.
	ErrUnregisteredEvent = errors.New("herald: unregistered event type")
	// ErrInvalidName is returned for an invalid topic, group or event name.
	ErrInvalidName = errors.New("herald: invalid name")
	// ErrDuplicateEvent is returned when a second type claims a registered
	// event name, or a type is registered twice with different settings.
	ErrDuplicateEvent = errors.New("herald: event already registered")
	// ErrMessageTooLarge is returned by a Writer for a message above its
	// size limit.
	ErrMessageTooLarge = errors.New("herald: message too large")
	// ErrClosed is returned by calls on a closed Bus, Publisher or driver.
	ErrClosed = errors.New("herald: closed")
	// ErrPermanent marks an error that retrying cannot fix. Wrap it (or use
	// Permanent) to stop the retry middleware and go to the dead-letter
	// topic at once.
	ErrPermanent = errors.New("herald: permanent failure")
	// ErrUndecodable is wrapped by DecodeError.
	ErrUndecodable = errors.New("herald: undecodable payload")
	// ErrInProgress is returned by the dedup middleware when another
	// delivery of the same message holds the claim; the scheduler redelivers
	// it later, when it is either done (skipped) or released (run).
	ErrInProgress = errors.New("herald: message is being handled by another delivery")
	// ErrNilDriver is returned by NewBus and NewPublisher for a nil driver
	// or writer.
	ErrNilDriver = errors.New("herald: nil driver")
	// ErrNilHandler is returned when a nil handler is subscribed.
	ErrNilHandler = errors.New("herald: nil handler")
	// ErrSubscriptionRunning is returned when a handler is added to a
	// topic and group that are already consuming.
	ErrSubscriptionRunning = errors.New("herald: subscription already running")
)

// Permanent wraps err so that the retry middleware does not retry it.
// errors.Is(Permanent(err), err) and errors.Is(Permanent(err), ErrPermanent)
// both hold. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() []error {
	return []error{p.err, ErrPermanent}
}

// IsPermanent reports whether err (or anything it wraps) is permanent.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

// NameError reports an invalid topic, group or event name.
type NameError struct {
	Kind   string // "topic", "group", "event name", "table"
	Name   string
	Reason string
}

func (e *NameError) Error() string {
	return fmt.Sprintf("herald: invalid %s %q: %s", e.Kind, e.Name, e.Reason)
}

// Unwrap returns ErrInvalidName.
func (e *NameError) Unwrap() error { return ErrInvalidName }

// DecodeError reports a payload that could not be decoded into the
// subscribed type. It is permanent: the message goes to the dead-letter topic
// with Error() as the reason.
type DecodeError struct {
	Topic       string
	MessageID   string
	Event       string
	ContentType string
	Err         error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("herald: decode message %s (topic %q, event %q, content type %q): %v",
		e.MessageID, e.Topic, e.Event, e.ContentType, e.Err)
}

// Unwrap returns the codec error, ErrUndecodable and ErrPermanent.
func (e *DecodeError) Unwrap() []error { return []error{e.Err, ErrUndecodable, ErrPermanent} }

// UnregisteredError names the event type the registry could not place.
type UnregisteredError struct{ Type string }

func (e *UnregisteredError) Error() string {
	return fmt.Sprintf("herald: event type %s is not registered (call herald.Register, add a Topic() string method, or set a naming strategy)", e.Type)
}

// Unwrap returns ErrUnregisteredEvent.
func (e *UnregisteredError) Unwrap() error { return ErrUnregisteredEvent }

// SubscriptionError is what the scheduler reports to the bus error handler
// when a driver call fails; the scheduler retries with backoff.
type SubscriptionError struct {
	Topic string
	Group string
	Op    string // "subscribe", "fetch", "ack", "close", "handle", "background"
	MsgID string // empty unless the error concerns one message
	Err   error
}

func (e *SubscriptionError) Error() string {
	s := fmt.Sprintf("herald: %s topic %q group %q", e.Op, e.Topic, e.Group)
	if e.MsgID != "" {
		s += " message " + e.MsgID
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the driver or handler error.
func (e *SubscriptionError) Unwrap() error { return e.Err }

// PanicError is what the recover middleware returns for a handler panic.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("herald: handler panic: %v\n%s", e.Value, e.Stack)
}
