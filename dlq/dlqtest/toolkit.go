package dlqtest

import (
	"context"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
)

// maxPages bounds Pages: a store whose cursor never reaches the end
// fails the test instead of looping.
const maxPages = 1000

// Pages lists topic in pages of size, from the start, and returns every
// entry and the cursor each page but the last gave. It fails the test on
// an error, or when the pages do not end within 1,000.
func Pages(t testing.TB, ctx context.Context, s dlq.Store, topic string, size int) (entries []dlq.Entry, cursors []string) {
	t.Helper()
	cursor := ""
	for range maxPages {
		page, next, err := s.List(ctx, topic, cursor, size)
		if err != nil {
			t.Fatalf("List %s from %q, pages of %d: %v", topic, cursor, size, err)
		}
		entries = append(entries, page...)
		if next == "" {
			return entries, cursors
		}
		cursors = append(cursors, next)
		cursor = next
	}
	t.Fatalf("List %s, pages of %d: no end after %d pages", topic, size, maxPages)
	return nil, nil
}

// WriteEntries writes one dead-letter entry per ID to the dead-letter
// topic of topic with w, as herald.WithDeadLetter would (ID, key "k", the
// ID as payload, herald.HeaderDeadLetterTopic and the reason "boom
// <ID>"), and returns that dead-letter topic.
func WriteEntries(t testing.TB, ctx context.Context, w herald.Writer, topic string, ids ...string) string {
	t.Helper()
	dlqTopic := herald.DeadLetterTopic(topic)
	msgs := make([]*herald.Message, len(ids))
	for i, id := range ids {
		msgs[i] = &herald.Message{ID: id, Topic: dlqTopic, Key: "k", Data: []byte(id),
			Headers: herald.Headers{herald.HeaderDeadLetterTopic: topic, herald.HeaderDeadLetterReason: "boom " + id}}
	}
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	return dlqTopic
}

// IDs returns the message IDs of es, in order.
func IDs(es []dlq.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Message.ID
	}
	return out
}

// Positions returns the positions of es, in order.
func Positions(es []dlq.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Position
	}
	return out
}
