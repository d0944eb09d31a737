package amqpdriver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
)

// positionForm is the form of the store's positions, for its errors.
const positionForm = "want a stream offset: a decimal number from 0, without leading zeros"

// ErrForeignEntry is wrapped by MarkRedriven's error for an entry read
// from another topic than the one it is marked in. Nothing of the call is
// marked then.
var ErrForeignEntry = errors.New("amqpdriver: not an entry of this dead-letter topic")

// markType is the AMQP type property of a mark: a message of a marks
// stream whose body is the offset of a redriven entry.
const markType = "herald.redriven"

// DeadLetters returns a dlq.Store over the streams of the driver's
// retained topics (WithRetainedTopics; by default the dead-letter topics,
// which herald.WithDeadLetter writes). It is safe for concurrent use,
// fails with herald.ErrClosed once the driver is closed, and creates no
// stream to read: a topic without one lists as empty, and Get on it
// reports dlq.ErrNotFound.
//
// A queue hands a message to one consumer and forgets it, so it cannot
// be browsed; a stream keeps what it receives. Write declares the stream
// of a retained topic (StreamName) and binds it to the topic's exchange
// before publishing to it, so every dead letter written through a driver
// with the same WithRetainedTopics is kept there, beside the queues of
// the groups that consume the topic, until the stream's retention drops
// it (WithRetention). Dead letters written before the stream existed
// reached only those queues.
//
// A position is the entry's stream offset in decimal ("1042"), and
// List's cursor is the position of the last entry it returned. A read
// consumes the stream from an offset on a channel of its own; AMQP does
// not say where a stream ends, so the read first publishes a fence (an
// empty message of type "herald.fence", to the stream alone) and stops
// when it meets it. Each read thus adds one small message to the stream:
// fences take offsets, which positions skip, and are never listed. Get by
// message ID reads the whole stream.
//
// A stream is append-only, so MarkRedriven records each position in a
// second stream, prefix + topic + RedrivenSuffix (one message per
// position, declared on the first mark, with the same retention), and
// List and Get skip the positions recorded there; the store reads it
// once and then only what was added. Entries are always older than their
// marks, so retention drops an entry before its mark. Marking twice is
// harmless. Deleting a dead-letter stream and declaring it again calls for
// deleting its marks stream too, or the old marks hide the new entries at
// the same offsets.
func (d *Driver) DeadLetters() dlq.Store {
	return &deadLetters{d: d, marks: make(map[string]*marks)}
}

type deadLetters struct {
	d  *Driver
	mu sync.Mutex // marks
	// marks is what the store has read of each topic's marks stream.
	marks map[string]*marks
}

// marks is the redriven positions of one topic, as far as read.
type marks struct {
	mu   sync.Mutex // the fields below, and the reads that fill them
	set  map[int64]bool
	next any // where the next read of the marks stream starts
}

// parseOffset reads a position: a stream offset, in the form List gives
// it.
func parseOffset(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0 && strconv.FormatInt(n, 10) == s
}

func position(offset int64) string { return strconv.FormatInt(offset, 10) }

// check validates the topic and the driver's state for operation op.
func (s *deadLetters) check(op, topic string) error {
	if err := herald.ValidateName("topic", topic); err != nil {
		return fail(op, topic, "", "", err)
	}
	if s.d.closed.Load() {
		return fail(op, topic, "", "", herald.ErrClosed)
	}
	return nil
}

// redriven returns the positions of topic marked redriven, reading what
// was added to its marks stream since the last call.
func (s *deadLetters) redriven(ctx context.Context, topic string) (map[int64]bool, error) {
	s.mu.Lock()
	m := s.marks[topic]
	if m == nil {
		m = &marks{set: make(map[int64]bool), next: fromFirst}
		s.marks[topic] = m
	}
	s.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	fence, err := s.d.readStream(ctx, s.d.marksName(topic), m.next, func(_ int64, dl *amqp.Delivery) bool {
		if dl.Type != markType {
			return true
		}
		if offset, ok := parseOffset(string(dl.Body)); ok {
			m.set[offset] = true
		}
		return true
	})
	switch {
	case errors.Is(err, errNoStream):
	case err != nil:
		return nil, fmt.Errorf("reading the marks stream %s: %w", s.d.marksName(topic), err)
	default:
		m.next = fence + 1
	}
	set := make(map[int64]bool, len(m.set))
	for k := range m.set {
		set[k] = true
	}
	return set, nil
}

// read calls visit with the entries of topic not marked redriven, in
// offset order, from from on, until visit returns false or the read
// reached the end of the stream. A topic without a stream has none.
func (s *deadLetters) read(ctx context.Context, topic string, from any, visit func(offset int64, dl *amqp.Delivery) bool) error {
	marked, err := s.redriven(ctx, topic)
	if err != nil {
		return err
	}
	_, err = s.d.readStream(ctx, s.d.StreamName(topic), from, func(offset int64, dl *amqp.Delivery) bool {
		return marked[offset] || visit(offset, dl)
	})
	if errors.Is(err, errNoStream) {
		return nil
	}
	return err
}

func entry(topic string, offset int64, dl *amqp.Delivery) dlq.Entry {
	return dlq.NewEntry(position(offset), message(topic, dl))
}

// List implements dlq.Store.
func (s *deadLetters) List(ctx context.Context, topic, cursor string, limit int) ([]dlq.Entry, string, error) {
	const op = "list dead letters"
	if err := s.check(op, topic); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		return nil, "", fail(op, topic, "", fmt.Sprintf("limit %d", limit), fmt.Errorf("want at least 1: %w", herald.ErrInvalidOption))
	}
	var from any = fromFirst
	if cursor != "" {
		after, ok := parseOffset(cursor)
		if !ok {
			return nil, "", fail(op, topic, "", fmt.Sprintf("cursor %q (%s)", cursor, positionForm), dlq.ErrBadPosition)
		}
		from = after + 1
	}
	var entries []dlq.Entry
	more := false
	err := s.read(ctx, topic, from, func(offset int64, dl *amqp.Delivery) bool {
		if len(entries) == limit {
			more = true
			return false
		}
		entries = append(entries, entry(topic, offset, dl))
		return true
	})
	if err != nil {
		return nil, "", fail(op, topic, "", fmt.Sprintf("from offset %v", from), err)
	}
	next := ""
	if more {
		next = entries[len(entries)-1].Position
	}
	return entries, next, nil
}

// Get implements dlq.Store.
func (s *deadLetters) Get(ctx context.Context, topic, positionOrID string) (dlq.Entry, error) {
	const op = "get dead letter"
	detail := "entry " + positionOrID
	if err := s.check(op, topic); err != nil {
		return dlq.Entry{}, err
	}
	if positionOrID == "" {
		return dlq.Entry{}, fail(op, topic, "", detail, dlq.ErrNotFound)
	}
	var found *dlq.Entry
	if offset, ok := parseOffset(positionOrID); ok {
		err := s.read(ctx, topic, offset, func(at int64, dl *amqp.Delivery) bool {
			if at == offset {
				e := entry(topic, at, dl)
				found = &e
			}
			return false
		})
		if err != nil {
			return dlq.Entry{}, fail(op, topic, "", detail, err)
		}
		if found != nil {
			return *found, nil
		}
	}
	err := s.read(ctx, topic, fromFirst, func(at int64, dl *amqp.Delivery) bool {
		if dl.MessageId != positionOrID {
			return true
		}
		e := entry(topic, at, dl)
		found = &e
		return false
	})
	if err != nil {
		return dlq.Entry{}, fail(op, topic, "", detail, err)
	}
	if found == nil {
		return dlq.Entry{}, fail(op, topic, "", detail, dlq.ErrNotFound)
	}
	return *found, nil
}

// MarkRedriven implements dlq.Store: it records the entries' positions
// in the topic's marks stream, and returns once the broker confirmed
// them.
func (s *deadLetters) MarkRedriven(ctx context.Context, topic string, entries []dlq.Entry) error {
	const op = "mark dead letters redriven"
	if err := s.check(op, topic); err != nil {
		return err
	}
	seen := make(map[int64]bool, len(entries))
	ps := make([]amqp.Publishing, 0, len(entries))
	for _, e := range entries {
		offset, ok := parseOffset(e.Position)
		if !ok {
			return fail(op, topic, "", fmt.Sprintf("position %q (%s)", e.Position, positionForm), dlq.ErrBadPosition)
		}
		if e.Message != nil && e.Message.Topic != topic {
			return fail(op, topic, "", fmt.Sprintf("entry %s was read from topic %q", e.Position, e.Message.Topic), ErrForeignEntry)
		}
		if seen[offset] {
			continue
		}
		seen[offset] = true
		p := amqp.Publishing{Type: markType, DeliveryMode: amqp.Persistent, Body: []byte(position(offset))}
		if e.Message != nil {
			p.MessageId = e.Message.ID // for whoever reads the marks
		}
		ps = append(ps, p)
	}
	if len(ps) == 0 {
		return nil
	}
	if err := s.d.publishToStream(ctx, s.d.marksName(topic), true, ps); err != nil {
		return fail(op, topic, "", fmt.Sprintf("recording %d marks in stream %s", len(ps), s.d.marksName(topic)), err)
	}
	return nil
}
