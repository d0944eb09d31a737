package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
)

func deadLettered() *herald.Message {
	return &herald.Message{
		ID: "m1", Topic: "orders.dlq", Key: "k1", ContentType: "application/json", Data: []byte(`{"n":1}`),
		Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Headers: herald.Headers{
			herald.HeaderDeadLetterReason:   "card declined",
			herald.HeaderDeadLetterAttempts: "3",
			herald.HeaderDeadLetterTopic:    "orders",
			herald.HeaderDeadLetterGroup:    "billing",
			herald.HeaderDeadLetterTime:     "2026-01-02T03:04:06.5Z",
			herald.HeaderEvent:              "OrderPlaced",
			"traceparent":                   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
	}
}

func TestNewEntry(t *testing.T) {
	m := deadLettered()
	e := dlq.NewEntry("0:7", m)
	want := dlq.Entry{Position: "0:7", Message: m, DeadLetterRecord: herald.DeadLetterRecord{Reason: "card declined", Attempts: 3,
		Topic: "orders", Group: "billing", Time: time.Date(2026, 1, 2, 3, 4, 6, 500_000_000, time.UTC)}}
	if e != want {
		t.Errorf("NewEntry = %+v\nwant %+v", e, want)
	}
	for _, c := range []struct{ attempts, at string }{{"", ""}, {"three", "yesterday"}, {"-1", "2026-01-02"}} {
		m := deadLettered()
		m.Headers[herald.HeaderDeadLetterAttempts] = c.attempts
		m.Headers[herald.HeaderDeadLetterTime] = c.at
		if e := dlq.NewEntry("0:7", m); e.Attempts != 0 || !e.Time.IsZero() {
			t.Errorf("attempts %q, time %q: got %d, %v; want zero values", c.attempts, c.at, e.Attempts, e.Time)
		}
	}
	if e := dlq.NewEntry("1-0", &herald.Message{ID: "x"}); e.Topic != "" || e.Reason != "" || e.Message.ID != "x" {
		t.Errorf("no headers: %+v", e)
	}
}

// The dead-letter format round-trips: what DeadLetterRecord.Message
// writes, ReadDeadLetter (and so NewEntry) reads back, field for field.
func TestDeadLetterRecordRoundTrip(t *testing.T) {
	rec := herald.DeadLetterRecord{Reason: "herald: not retried: permanent: card declined\nline two", Attempts: 4,
		Topic: "orders", Group: "billing", Time: time.Date(2026, 3, 4, 5, 6, 7, 891_000_000, time.UTC)}
	orig := &herald.Message{ID: "m1", Topic: "orders", Key: "k", ContentType: "application/json", Data: []byte("{}"),
		Headers: herald.Headers{"traceparent": "tp", herald.HeaderEvent: "OrderPlaced"}}
	dl := rec.Message(orig, "orders.dlq")
	if got := herald.ReadDeadLetter(dl); got != rec {
		t.Errorf("ReadDeadLetter(Message) = %+v, want %+v", got, rec)
	}
	if e := dlq.NewEntry("0:1", dl); e.DeadLetterRecord != rec {
		t.Errorf("NewEntry = %+v, want %+v", e.DeadLetterRecord, rec)
	}
	if dl.Topic != "orders.dlq" || dl.ID != orig.ID || dl.Headers["traceparent"] != "tp" || orig.Headers[herald.HeaderDeadLetterReason] != "" {
		t.Errorf("dead letter %+v of %+v", dl, orig)
	}
	for k := range dl.Headers {
		if herald.IsDeadLetterHeader(k) != (k != "traceparent" && k != herald.HeaderEvent) {
			t.Errorf("IsDeadLetterHeader(%q) = %v", k, herald.IsDeadLetterHeader(k))
		}
	}
}

func TestOriginal(t *testing.T) {
	e := dlq.NewEntry("0:7", deadLettered())
	m := e.Original()
	want := &herald.Message{
		ID: "m1", Topic: "orders", Key: "k1", ContentType: "application/json", Data: []byte(`{"n":1}`),
		Time: e.Message.Time,
		Headers: herald.Headers{
			herald.HeaderEvent: "OrderPlaced",
			"traceparent":      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
	}
	if m.ID != want.ID || m.Topic != want.Topic || m.Key != want.Key || m.ContentType != want.ContentType ||
		string(m.Data) != string(want.Data) || !m.Time.Equal(want.Time) || !maps.Equal(m.Headers, want.Headers) {
		t.Errorf("Original = %+v\nwant %+v", m, want)
	}
	// A copy: changing it leaves the entry alone.
	m.Data[0] = 'X'
	m.Headers["traceparent"] = "changed"
	if e.Message.Data[0] != '{' || e.Message.Headers["traceparent"] == "changed" || e.Message.Topic != "orders.dlq" {
		t.Error("Original shares memory with the entry")
	}

	only := &herald.Message{ID: "m2", Topic: "orders.dlq", Headers: herald.Headers{herald.HeaderDeadLetterTopic: "orders"}}
	if h := dlq.NewEntry("0:8", only).Original().Headers; h != nil {
		t.Errorf("headers left: %v, want nil", h)
	}
}

// A redrive is addressed to the group that gave up and numbered: the
// first redrive is 1; a message dead-lettered again after a redrive goes
// back as 2. Original drops what a redrive added.
func TestRedriven(t *testing.T) {
	e := dlq.NewEntry("0:7", deadLettered())
	m := e.Redriven()
	if e.Redrives != 0 || m.Headers[herald.HeaderRedriveGroup] != "billing" || m.Headers[herald.HeaderRedriveCount] != "1" {
		t.Errorf("first redrive: Redrives %d, headers %v", e.Redrives, m.Headers)
	}
	if m.Topic != "orders" || m.ID != "m1" || m.Headers[herald.HeaderDeadLetterReason] != "" {
		t.Errorf("redriven message %+v", m)
	}

	again := deadLettered()
	again.Headers[herald.HeaderRedriveGroup], again.Headers[herald.HeaderRedriveCount] = "billing", "1"
	e = dlq.NewEntry("0:9", again)
	if e.Redrives != 1 || e.Redriven().Headers[herald.HeaderRedriveCount] != "2" {
		t.Errorf("dead-lettered after one redrive: Redrives %d, count %q", e.Redrives, e.Redriven().Headers[herald.HeaderRedriveCount])
	}
	if h := e.Original().Headers; h[herald.HeaderRedriveGroup] != "" || h[herald.HeaderRedriveCount] != "" {
		t.Errorf("Original keeps redrive headers: %v", h)
	}

	// A count addressed to another group, or malformed, is not this
	// group's; an entry without a group goes back unaddressed.
	other := deadLettered()
	other.Headers[herald.HeaderRedriveGroup], other.Headers[herald.HeaderRedriveCount] = "shipping", "4"
	if e := dlq.NewEntry("0:10", other); e.Redrives != 0 {
		t.Errorf("redrives to another group counted: %d", e.Redrives)
	}
	bad := deadLettered()
	bad.Headers[herald.HeaderRedriveGroup], bad.Headers[herald.HeaderRedriveCount] = "billing", "x"
	if e := dlq.NewEntry("0:11", bad); e.Redrives != 0 {
		t.Errorf("malformed count read as %d", e.Redrives)
	}
	foreign := &herald.Message{ID: "f", Topic: "orders.dlq", Headers: herald.Headers{herald.HeaderDeadLetterTopic: "orders"}}
	if h := dlq.NewEntry("0:12", foreign).Redriven().Headers; h != nil {
		t.Errorf("an entry without a group got headers %v", h)
	}
}

func TestRedriveRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	// The checks come before the store or the writer is used.
	if _, err := dlq.Redrive(ctx, nil, nil, "no spaces", dlq.RedriveOptions{}); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("invalid dead-letter topic: %v", err)
	}
	if _, err := dlq.Redrive(ctx, nil, nil, "orders.dlq", dlq.RedriveOptions{BatchSize: -1}); err == nil {
		t.Error("negative batch size accepted")
	}
}

func ExampleEntry_Original() {
	e := dlq.NewEntry("3:1024", &herald.Message{
		ID: "2abcKSUID", Topic: "orders.dlq", Key: "customer-7", Data: []byte(`{"total":12}`),
		Headers: herald.Headers{
			herald.HeaderDeadLetterTopic:    "orders",
			herald.HeaderDeadLetterReason:   "card declined",
			herald.HeaderDeadLetterAttempts: "3",
			"traceparent":                   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		},
	})
	m := e.Original()
	fmt.Println(e.Reason, e.Attempts)
	fmt.Println(m.Topic, m.ID, m.Key, string(m.Data))
	fmt.Println(m.Headers)
	// Output:
	// card declined 3
	// orders 2abcKSUID customer-7 {"total":12}
	// map[traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01]
}
