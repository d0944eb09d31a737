package herald

import (
	"maps"
	"time"
)

// Reserved header names. Every header herald itself sets starts with
// HeaderPrefix; user headers must not use that prefix. W3C trace context
// travels in the standard "traceparent" and "tracestate" headers.
const (
	// HeaderPrefix starts every header that herald reserves for itself.
	HeaderPrefix = "herald-"

	// HeaderEvent carries the registered event name of the payload, so that
	// several event types can share one topic and a subscriber for type E
	// receives only E values.
	HeaderEvent = "herald-event"

	// HeaderID carries Message.ID in drivers whose wire format has no
	// native message-id field (Kafka, Redis Streams, the outbox table).
	HeaderID = "herald-id"

	// HeaderContentType carries Message.ContentType in drivers whose wire
	// format has no native content-type field.
	HeaderContentType = "herald-content-type"

	// HeaderCorrelationID carries the correlation id taken from the
	// publishing context (see WithCorrelationID). A handler's context
	// carries the delivered message's, so what it publishes continues the
	// chain.
	HeaderCorrelationID = "herald-correlation-id"

	// HeaderCausationID carries the ID of the message whose handler
	// published this one (see CausationID): set on every message published
	// with a handler's context.
	HeaderCausationID = "herald-causation-id"

	// HeaderDeadLetterReason is the error text that sent a message to the
	// dead-letter topic.
	HeaderDeadLetterReason = "herald-dlq-reason"

	// HeaderDeadLetterAttempts is how many times the handler ran before the
	// message was dead-lettered (decimal).
	HeaderDeadLetterAttempts = "herald-dlq-attempts"

	// HeaderDeadLetterTopic is the topic the message was read from.
	HeaderDeadLetterTopic = "herald-dlq-topic"

	// HeaderDeadLetterGroup is the subscriber group that gave up on it.
	HeaderDeadLetterGroup = "herald-dlq-group"

	// HeaderDeadLetterTime is when it was dead-lettered (RFC 3339, UTC).
	HeaderDeadLetterTime = "herald-dlq-time"

	// HeaderRedriveGroup addresses a message that a dead-letter redrive
	// wrote back to its topic to the group that had given up on it: the
	// Bus runs it in that group only, and every other group of the topic
	// acknowledges it without running its handler (outcome skipped).
	HeaderRedriveGroup = "herald-redrive-group"

	// HeaderRedriveCount is how many times the message has been redriven to
	// HeaderRedriveGroup (decimal, 1 for the first redrive). It is part of
	// the group's deduplication key, so a redriven message runs again in a
	// group that deduplicates, while a second copy of the same redrive is
	// skipped.
	HeaderRedriveCount = "herald-redrive-count"

	// HeaderRetryGroup addresses a retry copy (see WithRetryLater) to the
	// group whose handler failed on the message: the Bus runs it in that
	// group only, and every other group of the topic acknowledges it
	// without running its handler (outcome skipped), as for
	// HeaderRedriveGroup.
	HeaderRetryGroup = "herald-retry-group"

	// HeaderRetryRound is the round of a retry copy (decimal, 1 for the
	// first re-publish of a failed message) in HeaderRetryGroup. It is part
	// of that group's deduplication key, so the copy runs although the
	// failed delivery was marked done, while a second copy of the same
	// round is skipped. RetryRound reads it in a handler.
	HeaderRetryRound = "herald-retry-round"

	// HeaderRetryAttempts is how many times the handler ran on the message
	// in the rounds before this copy (decimal), so that a dead letter after
	// the last round records every attempt.
	HeaderRetryAttempts = "herald-retry-attempts"

	// HeaderDeliverAt is when a message is due: subscribers must not receive
	// it before that time. The value is the time in Unix nanoseconds, decimal
	// (for example "1796035200000000000"). Set it with DeliverAt or
	// DeliverAfter on the publishing context, or with Message.SetDeliverAt on
	// a raw message. A time that is not after the write delivers at once. It
	// stays on the message when it is delivered, so a handler can see when it
	// was due.
	// Its encoding has one owner, delay.go (SetDeliverAt, DeliverAt, DueAt).
	HeaderDeliverAt = "herald-deliver-at"

	// HeaderDelayTopic is the topic a delayed message is due on while a
	// driver keeps it somewhere else until then (a Kafka delay tier topic,
	// the NATS delay stream). The driver's mover removes it when it
	// forwards the message to that topic.
	HeaderDelayTopic = "herald-delay-topic"
)

// Headers are a message's string key/value metadata.
type Headers map[string]string

// Get returns the value for key, or "" when it is absent (also on a nil map).
func (h Headers) Get(key string) string { return h[key] }

// Message is the unit every driver moves. A Publisher fills every field;
// drivers carry all of them across the wire unchanged.
//
// A Message handed to a handler is shared with the driver and, in the
// memory driver, with other subscriber groups: treat it as read-only and use
// Clone before changing it.
type Message struct {
	// ID identifies the message across redeliveries and is the key of
	// deduplication. KSUID by default.
	ID string
	// Topic is where the message is published.
	Topic string
	// Key orders messages: messages with one key reach a subscriber in
	// publish order and are never handled concurrently. Empty means no
	// ordering constraint.
	Key string
	// Headers are metadata; names starting with HeaderPrefix are reserved.
	Headers Headers
	// ContentType names the codec that encoded Data (for example
	// "application/json").
	ContentType string
	// Data is the encoded payload.
	Data []byte
	// Time is when the message was published (UTC).
	Time time.Time
}

// Clone returns a deep copy of m that shares nothing with it.
func (m *Message) Clone() *Message {
	c := *m
	c.Headers = maps.Clone(m.Headers)
	if m.Data != nil {
		c.Data = append([]byte(nil), m.Data...)
	}
	return &c
}

// Size is what m weighs against a size limit: its payload, key, ID and
// content type, and the name and value of every header. Every limit in
// herald (the Publisher's, each driver's, the outbox Writer's) counts this
// way; a driver may add the overhead of its own wire format.
func (m *Message) Size() int {
	n := len(m.Data) + len(m.Key) + len(m.ID) + len(m.ContentType)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}

// Event returns the registered event name carried in HeaderEvent.
func (m *Message) Event() string { return m.Headers.Get(HeaderEvent) }
