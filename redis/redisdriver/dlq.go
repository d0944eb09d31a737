package redisdriver

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
)

// dlqScanPage is how many entries Get reads per XRANGE while it searches
// for a message ID.
const dlqScanPage = 500

// DeadLetters returns a dlq.Store over the driver's streams (same client,
// same key prefix). A position is a stream entry ID ("1700000000000-0"),
// and List's cursor is the entry ID the page ended at. List reads with
// XRANGE (exclusive start needs Redis 6.2 or newer), Get by position with
// XRANGE of that one ID, Get by message ID by scanning the stream from the
// oldest entry, and MarkRedriven deletes the entries with XDEL: a redriven
// entry is gone from the stream. Do not consume a dead-letter stream with
// a consumer group while redriving it: an entry deleted while pending in a
// group is reported lost (ErrTrimmed). The Store is safe for concurrent
// use.
func (d *Driver) DeadLetters() dlq.Store { return &deadLetters{d: d} }

type deadLetters struct{ d *Driver }

// List implements dlq.Store.
func (s *deadLetters) List(ctx context.Context, topic, cursor string, limit int) ([]dlq.Entry, string, error) {
	if err := herald.ValidateName("topic", topic); err != nil {
		return nil, "", fail("list dead letters", topic, "", "", err)
	}
	if limit <= 0 {
		return nil, "", fail("list dead letters", topic, "", fmt.Sprintf("limit %d", limit), fmt.Errorf("want at least 1: %w", herald.ErrInvalidOption))
	}
	start := "-"
	if cursor != "" {
		if !isEntryID(cursor) {
			return nil, "", fail("list dead letters", topic, "", fmt.Sprintf("cursor %q (want a stream entry ID)", cursor), dlq.ErrBadPosition)
		}
		start = "(" + cursor
	}
	// One entry more than asked tells whether another page follows.
	xs, err := s.d.client.XRangeN(ctx, s.d.StreamKey(topic), start, "+", int64(limit)+1).Result()
	if err != nil {
		return nil, "", fail("list dead letters", topic, "", "", err)
	}
	next := ""
	if len(xs) > limit {
		xs = xs[:limit]
		next = xs[limit-1].ID
	}
	entries := make([]dlq.Entry, len(xs))
	for i, x := range xs {
		entries[i] = dlq.NewEntry(x.ID, decodeEntry(topic, x.ID, x.Values))
	}
	return entries, next, nil
}

// Get implements dlq.Store.
func (s *deadLetters) Get(ctx context.Context, topic, positionOrID string) (dlq.Entry, error) {
	if err := herald.ValidateName("topic", topic); err != nil {
		return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, err)
	}
	key := s.d.StreamKey(topic)
	if isEntryID(positionOrID) {
		xs, err := s.d.client.XRangeN(ctx, key, positionOrID, positionOrID, 1).Result()
		if err != nil {
			return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, err)
		}
		if len(xs) == 1 {
			return dlq.NewEntry(xs[0].ID, decodeEntry(topic, xs[0].ID, xs[0].Values)), nil
		}
	}
	start := "-"
	for {
		xs, err := s.d.client.XRangeN(ctx, key, start, "+", dlqScanPage).Result()
		if err != nil {
			return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, err)
		}
		for _, x := range xs {
			// An entry without an id field takes its entry ID as message
			// ID, which the position look-up above has covered.
			if id, _ := x.Values[fieldID].(string); id == positionOrID {
				return dlq.NewEntry(x.ID, decodeEntry(topic, x.ID, x.Values)), nil
			}
		}
		if len(xs) < dlqScanPage {
			return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, dlq.ErrNotFound)
		}
		start = "(" + xs[len(xs)-1].ID
	}
}

// MarkRedriven implements dlq.Store: it deletes the entries (XDEL).
func (s *deadLetters) MarkRedriven(ctx context.Context, topic string, entries []dlq.Entry) error {
	if err := herald.ValidateName("topic", topic); err != nil {
		return fail("mark dead letters redriven", topic, "", "", err)
	}
	if len(entries) == 0 {
		return nil
	}
	ids := make([]string, len(entries))
	for i, e := range entries {
		if !isEntryID(e.Position) {
			return fail("mark dead letters redriven", topic, "", fmt.Sprintf("position %q (want a stream entry ID)", e.Position), dlq.ErrBadPosition)
		}
		ids[i] = e.Position
	}
	if err := s.d.client.XDel(ctx, s.d.StreamKey(topic), ids...).Err(); err != nil {
		return fail("mark dead letters redriven", topic, "", fmt.Sprintf("%d entries", len(ids)), err)
	}
	return nil
}

// isEntryID reports whether s has the form of a stream entry ID,
// "milliseconds-sequence".
func isEntryID(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}
