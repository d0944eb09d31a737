// Package dlq inspects dead-letter topics and redrives their messages back
// to the topics they came from.
//
// The dead-letter middleware (herald.DeadLetter) writes a message the
// handler chain gave up on to "<topic>.dlq" with its original ID, key,
// payload and headers, plus herald-dlq-* headers for the reason, the
// attempts, the original topic, the group and the time. A Store reads such
// a topic back from the broker; Redrive writes its entries to their
// original topic with the same ID (so a subscriber with deduplication skips
// what it already handled) and then marks them redriven.
//
// Redrive is at-least-once: a crash between the write and the mark writes
// the entry again on the next run, never loses it. Running it twice is
// safe: entries already marked are not listed again, and a message written
// twice carries one ID.
//
// A redriven message goes to its original topic, so every group of that
// topic receives it again, not only the group that gave up on it; groups
// that had handled it skip it only when they deduplicate
// (herald.WithDedup).
package dlq

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/heraldbus/herald"
)

// ErrNotFound is returned by Store.Get when no entry has the position or
// message ID asked for (or it was already redriven).
var ErrNotFound = errors.New("dlq: entry not found")

// deadLetterHeaderPrefix starts the headers herald.DeadLetter adds
// (herald.HeaderDeadLetterReason and its siblings); Redrive removes them.
const deadLetterHeaderPrefix = "herald-dlq-"

// NewEntry returns the Entry for the dead-lettered message m found at
// position, with the fields taken from its herald-dlq-* headers. A missing
// or malformed attempts or time header leaves that field zero. Store
// implementations use it; m becomes the entry's Message.
func NewEntry(position string, m *herald.Message) Entry {
	e := Entry{
		Position: position,
		Message:  m,
		Reason:   m.Headers.Get(herald.HeaderDeadLetterReason),
		Topic:    m.Headers.Get(herald.HeaderDeadLetterTopic),
		Group:    m.Headers.Get(herald.HeaderDeadLetterGroup),
	}
	if n, err := strconv.Atoi(m.Headers.Get(herald.HeaderDeadLetterAttempts)); err == nil && n > 0 {
		e.Attempts = n
	}
	if t, err := time.Parse(time.RFC3339Nano, m.Headers.Get(herald.HeaderDeadLetterTime)); err == nil {
		e.Time = t.UTC()
	}
	return e
}

// Original returns the message to write back: a deep copy of the
// dead-lettered message with Topic set to e.Topic and the herald-dlq-*
// headers removed; ID, Key, ContentType, Data, Time and every other header
// (traceparent included) are kept.
func (e Entry) Original() *herald.Message {
	m := e.Message.Clone()
	m.Topic = e.Topic
	for k := range m.Headers {
		if strings.HasPrefix(k, deadLetterHeaderPrefix) {
			delete(m.Headers, k)
		}
	}
	if len(m.Headers) == 0 {
		m.Headers = nil
	}
	return m
}

// Entry is one message of a dead-letter topic.
type Entry struct {
	// Position is where the entry sits in the dead-letter topic, in the
	// driver's own form: "partition:offset" for Kafka ("3:1024"), the
	// stream entry ID for Redis ("1700000000000-0"). Pass it back to the
	// Store it came from; it means nothing elsewhere.
	Position string
	// Message is the dead-lettered message as stored, herald-dlq-* headers
	// included; Message.Topic is the dead-letter topic.
	Message *herald.Message
	// Reason is the error that sent it there (HeaderDeadLetterReason).
	Reason string
	// Attempts is how many times the handler ran before it gave up
	// (HeaderDeadLetterAttempts; 0 when absent or malformed).
	Attempts int
	// Topic is the topic it was read from and is redriven to
	// (HeaderDeadLetterTopic).
	Topic string
	// Group is the subscriber group that gave up on it
	// (HeaderDeadLetterGroup).
	Group string
	// Time is when it was dead-lettered (HeaderDeadLetterTime; zero when
	// absent or malformed).
	Time time.Time
}

// Store reads a broker's dead-letter topics and marks entries redriven.
// The Kafka and Redis drivers provide one (kafka.Driver.DeadLetters,
// redis.Driver.DeadLetters). Implementations are safe for concurrent use.
type Store interface {
	// List returns up to limit entries of the dead-letter topic, oldest
	// first, starting after cursor ("" means from the oldest entry not
	// marked redriven), and the cursor of the next page ("" when this page
	// reached the end of what is stored now).
	List(ctx context.Context, topic, cursor string, limit int) (entries []Entry, next string, err error)

	// Get returns the entry at position, or the first entry whose
	// Message.ID is id when position is not one of the store's positions.
	// It returns ErrNotFound when there is none.
	Get(ctx context.Context, topic, positionOrID string) (Entry, error)

	// MarkRedriven records that entries were written back to their topics,
	// so List does not return them again. Entries must come from List or
	// Get of this store and topic.
	MarkRedriven(ctx context.Context, topic string, entries []Entry) error
}
