package dlqtest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/drivertest"
)

// listing is what the listing and look-up checks share: five messages
// dead-lettered by one group and one full listing of their entries. The
// checks only read the store, so each starts from the same state.
type listing struct {
	cfg     Config
	s       dlq.Store
	dl      deadLettered
	start   time.Time // just before the messages were published
	entries []dlq.Entry
}

// entry returns the listed entry of the message of sequence number seq.
func (l listing) entry(t *testing.T, seq int) dlq.Entry {
	t.Helper()
	id := l.dl.ids[seq]
	for _, e := range l.entries {
		if e.Message.ID == id {
			return e
		}
	}
	t.Fatalf("message %s (seq %d) not listed", id, seq)
	return dlq.Entry{}
}

func testListAndGet(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	l := listing{cfg: cfg, s: s, start: time.Now()}
	l.dl = deadLetter(t, cfg, d, s, 5)
	l.entries = listAll(t, s, l.dl.dlqTopic, 100)
	checks := []struct {
		name string
		fn   func(*testing.T, listing)
	}{
		{"EntriesRecordTheFailure", testEntriesRecordTheFailure},
		{"EntriesHoldTheMessageAsSent", testEntriesHoldTheMessage},
		{"PagesOfTwoFollowOneListing", testPaging},
		{"GetFindsEachEntryByPositionAndByID", testGetByPositionAndID},
		{"GetOfAnUnknownIDIsNotFound", testGetUnknownID},
		{"GetOfAnEmptyPositionIsNotFound", testGetEmptyPosition},
		{"GetOnAMissingTopicIsNotFound", testGetMissingTopic},
		{"ListOfAMissingTopicIsEmpty", testListMissingTopic},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) { c.fn(t, l) })
	}
}

// testEntriesRecordTheFailure checks each entry says why the message was
// dead-lettered, after how many attempts, by which group of which topic,
// and when.
func testEntriesRecordTheFailure(t *testing.T, l listing) {
	for seq := range l.dl.ids {
		e := l.entry(t, seq)
		wantReason, wantAttempts := fmt.Sprintf("order %d rejected", seq), 1
		if seq%2 == 1 {
			wantReason, wantAttempts = fmt.Sprintf("order %d: database down", seq), 3
		}
		if !strings.Contains(e.Reason, wantReason) || e.Attempts != wantAttempts {
			t.Errorf("seq %d: reason %q attempts %d, want %q and %d", seq, e.Reason, e.Attempts, wantReason, wantAttempts)
		}
		if e.Topic != l.dl.topic || e.Group != l.dl.group {
			t.Errorf("seq %d: topic %q group %q, want %q %q", seq, e.Topic, e.Group, l.dl.topic, l.dl.group)
		}
		if e.Time.Before(l.start.Add(-time.Minute)) || e.Time.After(time.Now().Add(time.Minute)) {
			t.Errorf("seq %d: dead-lettered at %v, not around now", seq, e.Time)
		}
	}
}

// testEntriesHoldTheMessage checks each entry's message is the one sent,
// on the dead-letter topic, with the sent headers and the original topic.
func testEntriesHoldTheMessage(t *testing.T, l listing) {
	for seq, id := range l.dl.ids {
		m, sent := l.entry(t, seq).Message, l.dl.sent[id]
		if m.Topic != l.dl.dlqTopic || m.Key != sent.Key || string(m.Data) != string(sent.Data) || m.ContentType != sent.ContentType {
			t.Errorf("seq %d: message %+v, sent %+v", seq, m, sent)
		}
		if m.Headers.Get("traceparent") != traceparent || m.Headers.Get(herald.HeaderDeadLetterTopic) != l.dl.topic {
			t.Errorf("seq %d: headers %v", seq, m.Headers)
		}
	}
}

// testPaging checks pages of two return each entry once, in the order of
// one listing, and only the last page has no next cursor.
func testPaging(t *testing.T, l listing) {
	ctx := testContext(t, l.cfg)
	var paged []dlq.Entry
	cursor := ""
	for pages := 0; ; pages++ {
		page, next, err := l.s.List(ctx, l.dl.dlqTopic, cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 2 || (next != "" && len(page) != 2) || pages > 3 {
			t.Fatalf("page %d: %d entries, next %q", pages, len(page), next)
		}
		paged = append(paged, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	if !slices.Equal(Positions(paged), Positions(l.entries)) {
		t.Errorf("pages of 2 gave %v, one listing %v", Positions(paged), Positions(l.entries))
	}
}

// testGetByPositionAndID checks Get finds every listed entry both by its
// position and by its message ID.
func testGetByPositionAndID(t *testing.T, l listing) {
	ctx := testContext(t, l.cfg)
	for _, e := range l.entries {
		for _, key := range []string{e.Position, e.Message.ID} {
			got, err := l.s.Get(ctx, l.dl.dlqTopic, key)
			if err != nil {
				t.Fatalf("Get(%q): %v", key, err)
			}
			if got.Position != e.Position || got.Message.ID != e.Message.ID || got.Reason != e.Reason {
				t.Errorf("Get(%q) = %s %s, want %s %s", key, got.Position, got.Message.ID, e.Position, e.Message.ID)
			}
		}
	}
}

func testGetUnknownID(t *testing.T, l listing) {
	checkNotFound(t, l, "no-such-id")
}

// testGetEmptyPosition checks Get of a well-formed position that holds no
// entry finds nothing, rather than the entry after it.
func testGetEmptyPosition(t *testing.T, l listing) {
	if l.cfg.MissingPosition == "" {
		t.Skip("no Config.MissingPosition: set it to a position in the store's form that holds no entry")
	}
	checkNotFound(t, l, l.cfg.MissingPosition)
}

func checkNotFound(t *testing.T, l listing, keys ...string) {
	t.Helper()
	ctx := testContext(t, l.cfg)
	for _, missing := range keys {
		if _, err := l.s.Get(ctx, l.dl.dlqTopic, missing); !errors.Is(err, dlq.ErrNotFound) {
			t.Errorf("Get(%q): %v, want ErrNotFound", missing, err)
		}
	}
}

func testGetMissingTopic(t *testing.T, l listing) {
	ctx := testContext(t, l.cfg)
	if _, err := l.s.Get(ctx, drivertest.Name(t, "none")+".dlq", l.dl.ids[0]); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get on a missing topic: %v, want ErrNotFound", err)
	}
}

func testListMissingTopic(t *testing.T, l listing) {
	ctx := testContext(t, l.cfg)
	if got, next, err := l.s.List(ctx, drivertest.Name(t, "none")+".dlq", "", 10); err != nil || len(got) != 0 || next != "" {
		t.Errorf("List of a missing topic: %d entries, next %q, %v", len(got), next, err)
	}
}
