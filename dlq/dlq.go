// Package dlq inspects dead-letter topics and redrives their messages back
// to the topics they came from.
//
// The dead-letter middleware (herald.WithDeadLetter) writes a message the
// handler chain gave up on to "<topic>.dlq" with its original ID, key,
// payload and headers, plus herald-dlq-* headers for the reason, the
// attempts, the original topic, the group and the time. A Store reads such
// a topic back from the broker; Redrive writes its entries to their
// original topic and then marks them redriven.
//
// # Who handles a redriven message
//
// A redrive is addressed to the group that gave up on the message (the
// entry's Group): the message goes back with herald.HeaderRedriveGroup set
// to that group and herald.HeaderRedriveCount to how many times it has been
// redriven to it (1, then 2 if it is dead-lettered and redriven again).
//
//   - The group that gave up runs it again, also when it deduplicates
//     (herald.WithDedup): the dedup middleware keys a redriven message by
//     its ID and its redrive count, so the "done" mark its dead-lettering
//     left does not skip it.
//   - Every other group of the topic acknowledges it without running its
//     handler (outcome "skipped" in metrics and the handle hook), with or
//     without deduplication: they had handled it already.
//   - A second copy of one redrive (a crash between the write and the mark,
//     or two dead-letter entries of one failure) carries the same count, so
//     a group that deduplicates runs it once.
//
// An entry without a group (written by something other than herald's
// dead-letter middleware) goes back unaddressed: every group receives it,
// and groups that deduplicate skip it by its ID if they handled it before.
// Consumers other than a herald Bus see a redriven message like any other.
//
// Redrive is at-least-once: a crash between the write and the mark writes
// the entry again on the next run, never loses it. Running it twice is
// safe: entries already marked are not listed again, and a message written
// twice carries one ID and one redrive count.
package dlq

import (
	"context"
	"errors"
	"strconv"

	"github.com/heraldbus/herald"
)

// ErrNotFound is returned by Store.Get when no entry has the position or
// message ID asked for (or it was already redriven).
var ErrNotFound = errors.New("dlq: entry not found")

// ErrBadPosition is wrapped by a Store's error for a List cursor or an
// entry position (MarkRedriven) that is not in the store's form (see
// Entry.Position); the error's detail names the form. Every driver's
// store returns it, and a List limit below 1 wraps
// herald.ErrInvalidOption.
var ErrBadPosition = errors.New("dlq: not a position of this store")

// NewEntry returns the Entry for the dead-lettered message m found at
// position, with its DeadLetterRecord read from the herald-dlq-* headers
// (herald.ReadDeadLetter) and its redrive count. A missing or malformed
// header leaves its field zero. Store implementations use it; m becomes the
// entry's Message.
func NewEntry(position string, m *herald.Message) Entry {
	e := Entry{Position: position, Message: m, DeadLetterRecord: herald.ReadDeadLetter(m)}
	if m.Headers.Get(herald.HeaderRedriveGroup) == e.Group {
		if n, err := strconv.Atoi(m.Headers.Get(herald.HeaderRedriveCount)); err == nil && n > 0 {
			e.Redrives = n
		}
	}
	return e
}

// Original returns the message as it was first published: a deep copy of
// the dead-lettered message with Topic set to e.Topic and the herald-dlq-*
// and redrive headers removed; ID, Key, ContentType, Data, Time and every
// other header (traceparent included) are kept.
func (e Entry) Original() *herald.Message {
	m := e.Message.Clone()
	m.Topic = e.Topic
	for k := range m.Headers {
		if herald.IsDeadLetterHeader(k) || k == herald.HeaderRedriveGroup || k == herald.HeaderRedriveCount {
			delete(m.Headers, k)
		}
	}
	if len(m.Headers) == 0 {
		m.Headers = nil
	}
	return m
}

// Redriven returns the message Redrive writes back: Original, addressed to
// e.Group with herald.HeaderRedriveGroup and numbered Redrives+1 with
// herald.HeaderRedriveCount (see the package doc). An entry without a group
// gives Original unchanged.
func (e Entry) Redriven() *herald.Message {
	m := e.Original()
	if e.Group == "" {
		return m
	}
	if m.Headers == nil {
		m.Headers = make(herald.Headers, 2)
	}
	m.Headers[herald.HeaderRedriveGroup] = e.Group
	m.Headers[herald.HeaderRedriveCount] = strconv.Itoa(e.Redrives + 1)
	return m
}

// Entry is one message of a dead-letter topic.
type Entry struct {
	// Position is where the entry sits in the dead-letter topic, in the
	// driver's own form: "partition:offset" for Kafka ("3:1024"), the
	// stream entry ID for Redis ("1700000000000-0"), "partition:position"
	// for the SQL log ("3:1042"). Pass it back to the
	// Store it came from; it means nothing elsewhere.
	Position string
	// Message is the dead-lettered message as stored, herald-dlq-* headers
	// included; Message.Topic is the dead-letter topic.
	Message *herald.Message
	// DeadLetterRecord says why it is there: Reason, Attempts, Topic (the
	// one it was read from and is redriven to), Group (that gave up on it)
	// and Time.
	herald.DeadLetterRecord
	// Redrives is how many times the message had been redriven to Group
	// before it was dead-lettered this time (its HeaderRedriveCount; 0 for
	// a message that never was).
	Redrives int
}

// Store reads a broker's dead-letter topics and marks entries redriven.
// The Kafka, Redis, SQL and memory drivers provide one
// (kafkadriver.Driver.DeadLetters, redisdriver.Driver.DeadLetters,
// sqldriver.Driver.DeadLetters, memdriver.Broker.DeadLetters). Implementations are safe for concurrent use.
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
