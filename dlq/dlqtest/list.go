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

func testListAndGet(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	start := time.Now()
	dl := deadLetter(t, cfg, d, s, 5)

	entries := listAll(t, s, dl.dlqTopic, 100)
	bySeq := make(map[string]dlq.Entry)
	for _, e := range entries {
		bySeq[e.Message.ID] = e
	}
	for seq, id := range dl.ids {
		e, ok := bySeq[id]
		if !ok {
			t.Fatalf("message %s (seq %d) not listed", id, seq)
		}
		wantReason, wantAttempts := fmt.Sprintf("order %d rejected", seq), 1
		if seq%2 == 1 {
			wantReason, wantAttempts = fmt.Sprintf("order %d: database down", seq), 3
		}
		if !strings.Contains(e.Reason, wantReason) || e.Attempts != wantAttempts {
			t.Errorf("seq %d: reason %q attempts %d, want %q and %d", seq, e.Reason, e.Attempts, wantReason, wantAttempts)
		}
		if e.Topic != dl.topic || e.Group != dl.group {
			t.Errorf("seq %d: topic %q group %q, want %q %q", seq, e.Topic, e.Group, dl.topic, dl.group)
		}
		if e.Time.Before(start.Add(-time.Minute)) || e.Time.After(time.Now().Add(time.Minute)) {
			t.Errorf("seq %d: dead-lettered at %v, not around now", seq, e.Time)
		}
		m, sent := e.Message, dl.sent[id]
		if m.Topic != dl.dlqTopic || m.Key != sent.Key || string(m.Data) != string(sent.Data) || m.ContentType != sent.ContentType {
			t.Errorf("seq %d: message %+v, sent %+v", seq, m, sent)
		}
		if m.Headers.Get("traceparent") != traceparent || m.Headers.Get(herald.HeaderDeadLetterTopic) != dl.topic {
			t.Errorf("seq %d: headers %v", seq, m.Headers)
		}
	}
	// Paging returns each entry once, in the order of a full listing.
	var paged []dlq.Entry
	cursor := ""
	for pages := 0; ; pages++ {
		page, next, err := s.List(ctx, dl.dlqTopic, cursor, 2)
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
	if !slices.Equal(positions(paged), positions(entries)) {
		t.Errorf("pages of 2 gave %v, one listing %v", positions(paged), positions(entries))
	}

	for _, e := range entries {
		for _, key := range []string{e.Position, e.Message.ID} {
			got, err := s.Get(ctx, dl.dlqTopic, key)
			if err != nil {
				t.Fatalf("Get(%q): %v", key, err)
			}
			if got.Position != e.Position || got.Message.ID != e.Message.ID || got.Reason != e.Reason {
				t.Errorf("Get(%q) = %s %s, want %s %s", key, got.Position, got.Message.ID, e.Position, e.Message.ID)
			}
		}
	}
	for _, missing := range []string{"no-such-id", "999999-0", "3:999999"} {
		if _, err := s.Get(ctx, dl.dlqTopic, missing); !errors.Is(err, dlq.ErrNotFound) {
			t.Errorf("Get(%q): %v, want ErrNotFound", missing, err)
		}
	}
	if _, err := s.Get(ctx, drivertest.Name(t, "none")+".dlq", dl.ids[0]); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get on a missing topic: %v, want ErrNotFound", err)
	}
	if got, next, err := s.List(ctx, drivertest.Name(t, "none")+".dlq", "", 10); err != nil || len(got) != 0 || next != "" {
		t.Errorf("List of a missing topic: %d entries, next %q, %v", len(got), next, err)
	}
}
