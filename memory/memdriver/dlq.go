package memdriver

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
)

// DeadLetters returns a dlq.Store over the broker's dead-letter topics, so
// that a service's tests can list and redrive dead letters the way they
// would on Kafka or Redis. A position is "partition:offset" ("3:17"). List
// goes through the partitions in order, each from the oldest message the
// ring still holds, so the entries of one key come in the order they were
// dead-lettered; its cursor is the position of the last entry returned.
// MarkRedriven records positions in the Broker; marked entries are not
// listed or found again. What the ring has overwritten (WithCapacity) is
// gone, as on a broker whose retention ran out. The Store is safe for
// concurrent use and fails with herald.ErrClosed once the Broker is
// closed.
func (b *Broker) DeadLetters() dlq.Store { return &deadLetters{b: b} }

type deadLetters struct{ b *Broker }

// position is where an entry sits: partition and offset.
type position struct {
	part int
	off  uint64
}

func (p position) String() string { return strconv.Itoa(p.part) + ":" + strconv.FormatUint(p.off, 10) }

// parsePosition reads "partition:offset" for a topic of n partitions.
func parsePosition(s string, n int) (position, bool) {
	ps, os, ok := strings.Cut(s, ":")
	if !ok {
		return position{}, false
	}
	part, err1 := strconv.Atoi(ps)
	off, err2 := strconv.ParseUint(os, 10, 64)
	if err1 != nil || err2 != nil || part < 0 || part >= n {
		return position{}, false
	}
	return position{part, off}, true
}

// check validates the topic and the broker's state for operation op.
func (s *deadLetters) check(op, topic string) error {
	if err := herald.ValidateName("topic", topic); err != nil {
		return fail(op, topic, "", "", err)
	}
	if s.b.closed.Load() {
		return fail(op, topic, "", "", herald.ErrClosed)
	}
	return nil
}

// scan calls f for every entry of t from position from on (from
// included), in List order, skipping redriven ones, until f returns
// false. Each entry's message is a copy.
func (s *deadLetters) scan(t *topic, from position, f func(dlq.Entry) bool) {
	for i := from.part; i < len(t.parts); i++ {
		p := t.parts[i]
		p.mu.Lock()
		off := p.start
		if i == from.part {
			off = max(off, from.off)
		}
		var batch []dlq.Entry
		for ; off < p.end; off++ {
			if p.redriven[off] {
				continue
			}
			m := p.log[off%uint64(len(p.log))].Clone()
			batch = append(batch, dlq.NewEntry(position{i, off}.String(), m))
		}
		p.mu.Unlock()
		for _, e := range batch {
			if !f(e) {
				return
			}
		}
	}
}

// List implements dlq.Store.
func (s *deadLetters) List(ctx context.Context, topicName, cursor string, limit int) ([]dlq.Entry, string, error) {
	if err := s.check("list dead letters", topicName); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		return nil, "", fail("list dead letters", topicName, "", fmt.Sprintf("limit %d", limit), fmt.Errorf("want at least 1: %w", herald.ErrInvalidOption))
	}
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	var from position
	if cursor != "" {
		c, ok := parsePosition(cursor, s.b.cfg.partitions)
		if !ok {
			return nil, "", fail("list dead letters", topicName, "", fmt.Sprintf("cursor %q (want partition:offset)", cursor), dlq.ErrBadPosition)
		}
		from = position{c.part, c.off + 1}
	}
	t := s.b.existing(topicName)
	if t == nil {
		return nil, "", nil
	}
	var entries []dlq.Entry
	more := false
	s.scan(t, from, func(e dlq.Entry) bool {
		if len(entries) == limit {
			more = true
			return false
		}
		entries = append(entries, e)
		return true
	})
	next := ""
	if more {
		next = entries[len(entries)-1].Position
	}
	return entries, next, nil
}

// Get implements dlq.Store.
func (s *deadLetters) Get(ctx context.Context, topicName, positionOrID string) (dlq.Entry, error) {
	if err := s.check("get dead letter", topicName); err != nil {
		return dlq.Entry{}, err
	}
	if err := ctx.Err(); err != nil {
		return dlq.Entry{}, err
	}
	notFound := fail("get dead letter", topicName, "", "entry "+positionOrID, dlq.ErrNotFound)
	t := s.b.existing(topicName)
	if t == nil {
		return dlq.Entry{}, notFound
	}
	var found *dlq.Entry
	if pos, ok := parsePosition(positionOrID, len(t.parts)); ok {
		s.scan(t, pos, func(e dlq.Entry) bool {
			if e.Position == positionOrID {
				found = &e
			}
			return false
		})
	}
	if found == nil {
		s.scan(t, position{}, func(e dlq.Entry) bool {
			if e.Message.ID == positionOrID {
				found = &e
				return false
			}
			return true
		})
	}
	if found == nil {
		return dlq.Entry{}, notFound
	}
	return *found, nil
}

// MarkRedriven implements dlq.Store.
func (s *deadLetters) MarkRedriven(ctx context.Context, topicName string, entries []dlq.Entry) error {
	if err := s.check("mark dead letters redriven", topicName); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(entries) == 0 {
		return nil
	}
	t := s.b.existing(topicName)
	positions := make([]position, len(entries))
	for i, e := range entries {
		pos, ok := parsePosition(e.Position, s.b.cfg.partitions)
		if !ok || t == nil {
			return fail("mark dead letters redriven", topicName, "", fmt.Sprintf("position %q (want partition:offset of one of the topic's entries)", e.Position), dlq.ErrBadPosition)
		}
		positions[i] = pos
	}
	byPart := make(map[int][]uint64)
	for _, pos := range positions {
		byPart[pos.part] = append(byPart[pos.part], pos.off)
	}
	for part, offs := range byPart {
		p := t.parts[part]
		p.mu.Lock()
		if p.redriven == nil {
			p.redriven = make(map[uint64]bool)
		}
		for off := range p.redriven { // marks of overwritten offsets go with them
			if off < p.start {
				delete(p.redriven, off)
			}
		}
		for _, off := range offs {
			if off >= p.start && off < p.end {
				p.redriven[off] = true
			}
		}
		p.mu.Unlock()
	}
	return nil
}
