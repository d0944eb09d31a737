package natsdriver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
)

// positionForm is the form of the store's positions, for its errors.
const positionForm = "want a stream sequence: a decimal number from 1, without leading zeros"

// ErrForeignEntry is wrapped by MarkRedriven's error for an entry that is
// not the message stored at its position in the topic it is marked in:
// an entry of another topic, or of a stream deleted and created again
// since it was listed. Nothing of the call is deleted then.
var ErrForeignEntry = errors.New("natsdriver: not an entry of this dead-letter topic")

const (
	// readBatch is how many messages one pull request of a dead-letter
	// read asks for.
	readBatch = 256
	// readerInactive is how long the server keeps the consumer of a
	// dead-letter read that was not deleted (its process died): the
	// store deletes it as soon as the read ends.
	readerInactive = time.Minute
	// dropReaderTimeout bounds deleting that consumer, also after the
	// read's context ended.
	dropReaderTimeout = 5 * time.Second
)

// DeadLetters returns a dlq.Store over the driver's streams, where
// herald.WithDeadLetter writes "<topic>.dlq" like any other topic (its own
// stream, or its subject under WithSubjects). It is safe for concurrent
// use, fails with herald.ErrClosed once the driver is closed, and creates
// no stream: a topic without one lists as empty, and Get on it reports
// dlq.ErrNotFound.
//
// A position is the message's stream sequence in decimal ("1042"), and
// List's cursor is the position of the last entry it returned. Sequences
// are never reused while the stream exists; deleting a stream and
// creating it again starts them at 1.
//
// List and Get by message ID read the topic's subject from a sequence on
// through a consumer of their own: ephemeral, without acknowledgments,
// its state in memory, asking for messages with no-wait pull requests (so
// a read ends as soon as it reached what is stored, never waiting on the
// server), and deleted when the read ends. Should the process die before,
// the server removes the consumer after a minute; a deletion that fails is
// reported to the driver's error handler. A read costs a few requests
// whatever the page size, and Get by message ID reads the whole topic (the
// server has no index of message IDs). On a stream that does not use
// limits retention (a work-queue or interest stream under WithSubjects,
// where a consumer that reads changes what the stream keeps), the store
// reads with direct gets instead, one request per message, "next message
// of the subject from a sequence on". Get by position is one get of that
// sequence; a sequence that holds no message, or one of another subject,
// is looked up as a message ID.
//
// JetStream can delete single messages, so MarkRedriven deletes them from
// the stream (no marks are kept, and a new Driver or process sees the same
// thing): first it checks that each position still holds the entry's
// message (its subject, and the entry's Message.ID when it has its
// Message), and fails with ErrForeignEntry, deleting nothing, when one does
// not; then it deletes them one by one. A position already deleted counts
// as marked, so marking twice is harmless. The stream keeps counting from
// its last sequence, and the deleted ones are gaps that reads skip. A group
// that consumes the dead-letter topic itself does not receive an entry
// redriven before the group got to it. A stream with DenyDelete (under
// WithSubjects) cannot be redriven: MarkRedriven fails, after the redrive
// wrote the entries back (dlq.Redrive is at-least-once).
func (d *Driver) DeadLetters() dlq.Store { return &deadLetters{d: d} }

type deadLetters struct{ d *Driver }

// topicStream is the stream that holds a topic, as the store reads it.
type topicStream struct {
	topic   string
	subject string
	stream  jetstream.Stream
	info    *jetstream.StreamInfo // when it was opened
}

// stored is one message read from a stream.
type stored struct {
	seq    uint64
	header nats.Header
	data   []byte
}

func (m stored) position() string { return strconv.FormatUint(m.seq, 10) }

func (m stored) entry(topic string) dlq.Entry {
	return dlq.NewEntry(m.position(), decode(topic, m.header, m.data))
}

// parseSeq reads a position: a stream sequence, in the form List gives it.
func parseSeq(s string) (uint64, bool) {
	seq, err := strconv.ParseUint(s, 10, 63)
	return seq, err == nil && seq > 0 && strconv.FormatUint(seq, 10) == s
}

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

// open returns the stream that holds topic, or false when there is none.
// It creates nothing.
func (s *deadLetters) open(ctx context.Context, op, topic string) (topicStream, bool, error) {
	ts := topicStream{topic: topic, subject: s.d.Subject(topic)}
	name := s.d.StreamName(topic)
	if s.d.cfg.subjectFor != nil {
		var err error
		if name, err = s.d.js.StreamNameBySubject(ctx, ts.subject); errors.Is(err, jetstream.ErrStreamNotFound) {
			return ts, false, nil
		} else if err != nil {
			return ts, false, fail(op, topic, "", "looking up the stream of subject "+ts.subject, err)
		}
	}
	st, err := s.d.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return ts, false, nil
	}
	if err != nil {
		return ts, false, fail(op, topic, "", "stream "+name, err)
	}
	ts.stream, ts.info = st, st.CachedInfo()
	if desc := ts.info.Config.Description; s.d.cfg.subjectFor == nil && desc != streamDescription(topic) {
		return ts, false, s.d.collision(topic, name, desc)
	}
	return ts, true, nil
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
	from := uint64(1)
	if cursor != "" {
		after, ok := parseSeq(cursor)
		if !ok {
			return nil, "", fail(op, topic, "", fmt.Sprintf("cursor %q (%s)", cursor, positionForm), dlq.ErrBadPosition)
		}
		from = after + 1
	}
	ts, ok, err := s.open(ctx, op, topic)
	if err != nil || !ok {
		return nil, "", err
	}
	var entries []dlq.Entry
	next := ""
	err = s.read(ctx, op, ts, from, func(m stored, more bool) bool {
		entries = append(entries, m.entry(topic))
		if len(entries) < limit {
			return true
		}
		if more {
			next = m.position()
		}
		return false
	})
	if err != nil {
		return nil, "", fail(op, topic, "", fmt.Sprintf("from stream sequence %d", from), err)
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
	ts, ok, err := s.open(ctx, op, topic)
	if err != nil {
		return dlq.Entry{}, err
	}
	if !ok || positionOrID == "" {
		return dlq.Entry{}, fail(op, topic, "", detail, dlq.ErrNotFound)
	}
	if seq, isSeq := parseSeq(positionOrID); isSeq {
		m, found, err := ts.at(ctx, seq)
		if err != nil {
			return dlq.Entry{}, fail(op, topic, "", detail, err)
		}
		if found {
			return m.entry(topic), nil
		}
	}
	var found *dlq.Entry
	err = s.read(ctx, op, ts, 1, func(m stored, _ bool) bool {
		if messageID(m.header) != positionOrID {
			return true
		}
		e := m.entry(topic)
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

// at returns the topic's message at stream sequence seq, or false when
// that sequence holds none, or one of another subject.
func (ts topicStream) at(ctx context.Context, seq uint64) (stored, bool, error) {
	raw, err := ts.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return stored{}, false, nil
	}
	if err != nil {
		return stored{}, false, err
	}
	if raw.Subject != ts.subject {
		return stored{}, false, nil
	}
	return stored{seq: raw.Sequence, header: raw.Header, data: raw.Data}, true, nil
}

// MarkRedriven implements dlq.Store: it deletes the entries' messages
// from the stream, after checking that each position holds its entry.
func (s *deadLetters) MarkRedriven(ctx context.Context, topic string, entries []dlq.Entry) error {
	const op = "mark dead letters redriven"
	if err := s.check(op, topic); err != nil {
		return err
	}
	marks, err := marksOf(topic, entries)
	if err != nil {
		return fail(op, topic, "", "", err)
	}
	if len(marks) == 0 {
		return nil
	}
	ts, ok, err := s.open(ctx, op, topic)
	if err != nil || !ok {
		return err // no stream: nothing left to delete
	}
	left, err := ts.stillStored(ctx, marks)
	if err != nil {
		return fail(op, topic, "", "", err)
	}
	for i, m := range left {
		if err := ts.delete(ctx, m.seq); err != nil {
			return fail(op, topic, "", fmt.Sprintf("deleting stream sequence %d, after %d of %d entries", m.seq, i, len(left)), err)
		}
	}
	return nil
}

// mark is an entry MarkRedriven deletes: its stream sequence, and its
// message ID when the entry carries its message.
type mark struct {
	seq   uint64
	id    string
	hasID bool
}

// marksOf reads the entries' positions, once each, and refuses a
// malformed one or an entry listed from another topic.
func marksOf(topic string, entries []dlq.Entry) ([]mark, error) {
	seen := make(map[uint64]bool, len(entries))
	marks := make([]mark, 0, len(entries))
	for _, e := range entries {
		seq, ok := parseSeq(e.Position)
		if !ok {
			return nil, fmt.Errorf("position %q (%s): %w", e.Position, positionForm, dlq.ErrBadPosition)
		}
		if e.Message != nil && e.Message.Topic != topic {
			return nil, fmt.Errorf("entry %s was read from topic %q: %w", e.Position, e.Message.Topic, ErrForeignEntry)
		}
		if seen[seq] {
			continue
		}
		seen[seq] = true
		m := mark{seq: seq}
		if e.Message != nil {
			m.id, m.hasID = e.Message.ID, true
		}
		marks = append(marks, m)
	}
	return marks, nil
}

// stillStored returns the marks whose messages are still in the stream,
// or ErrForeignEntry when a position holds another message than its
// entry's.
func (ts topicStream) stillStored(ctx context.Context, marks []mark) ([]mark, error) {
	left := make([]mark, 0, len(marks))
	for _, m := range marks {
		raw, err := ts.stream.GetMsg(ctx, m.seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted already: marked
		}
		if err != nil {
			return nil, fmt.Errorf("reading stream sequence %d: %w", m.seq, err)
		}
		if id := messageID(raw.Header); raw.Subject != ts.subject || m.hasID && id != m.id {
			return nil, fmt.Errorf("stream sequence %d holds message %q on subject %s, the entry is message %q on %s: %w",
				m.seq, id, raw.Subject, m.id, ts.subject, ErrForeignEntry)
		}
		left = append(left, m)
	}
	return left, nil
}

// delete deletes the message at seq; one deleted meanwhile (by another
// redrive) counts as deleted.
func (ts topicStream) delete(ctx context.Context, seq uint64) error {
	err := ts.stream.DeleteMsg(ctx, seq)
	if err == nil {
		return nil
	}
	if _, getErr := ts.stream.GetMsg(ctx, seq); errors.Is(getErr, jetstream.ErrMsgNotFound) {
		return nil
	}
	return err
}

// read calls visit with the topic's messages from stream sequence from
// on, in stream order, and whether more were stored after each at the
// time, until visit returns false or it reached the last one stored.
func (s *deadLetters) read(ctx context.Context, op string, ts topicStream, from uint64, visit func(m stored, more bool) bool) error {
	if ts.info.State.Msgs == 0 || ts.info.State.LastSeq < from {
		return nil
	}
	if ts.info.Config.Retention != jetstream.LimitsPolicy {
		return ts.walk(ctx, from, visit)
	}
	cons, err := ts.stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Description:       "herald dead-letter read of topic " + ts.topic,
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       from,
		FilterSubject:     ts.subject,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: readerInactive,
		MemoryStorage:     true,
	})
	if err != nil {
		return fmt.Errorf("creating the consumer of the read: %w", err)
	}
	defer s.dropReader(ctx, op, ts, cons.CachedInfo().Name)
	for more := cons.CachedInfo().NumPending > 0; more; {
		b, err := cons.FetchNoWait(readBatch)
		if err != nil {
			return err
		}
		if more, err = readMessages(ctx, b, visit); err != nil {
			return err
		}
	}
	return nil
}

// readMessages passes the messages of one pull request to visit, and
// reports whether the read goes on: visit wants more, and more were
// stored after the last one.
func readMessages(ctx context.Context, b jetstream.MessageBatch, visit func(m stored, more bool) bool) (bool, error) {
	more := false
	for {
		select {
		case msg, ok := <-b.Messages():
			if !ok {
				return more, b.Error()
			}
			meta, err := msg.Metadata()
			if err != nil {
				return false, err
			}
			more = meta.NumPending > 0
			if !visit(stored{seq: meta.Sequence.Stream, header: msg.Headers(), data: msg.Data()}, more) {
				return false, nil // the rest of the batch is buffered, and dropped
			}
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// walk is read with one direct get per message, for streams where a
// consumer would change what is kept. Whether more follow is judged by
// the stream's last sequence when it was opened.
func (ts topicStream) walk(ctx context.Context, from uint64, visit func(m stored, more bool) bool) error {
	for seq := from; seq <= ts.info.State.LastSeq; {
		raw, err := ts.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(ts.subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading from stream sequence %d: %w", seq, err)
		}
		more := raw.Sequence < ts.info.State.LastSeq
		if !visit(stored{seq: raw.Sequence, header: raw.Header, data: raw.Data}, more) {
			return nil
		}
		seq = raw.Sequence + 1
	}
	return nil
}

// dropReader deletes the consumer of a read, even when the read's context
// ended; a failure is reported, and the server removes the consumer
// after readerInactive.
func (s *deadLetters) dropReader(ctx context.Context, op string, ts topicStream, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropReaderTimeout)
	defer cancel()
	if err := ts.stream.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		s.d.cfg.onError(fail(op, ts.topic, "", fmt.Sprintf("deleting consumer %s of the read (the server drops it after %v)", name, readerInactive), err))
	}
}
