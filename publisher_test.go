package herald_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/codec"
)

func newTestPublisher(t *testing.T, opts ...herald.PublisherOption) (*herald.Publisher, *recordingWriter) {
	t.Helper()
	w := &recordingWriter{}
	p, err := herald.NewPublisher(w, opts...)
	if err != nil {
		t.Fatal(err)
	}
	herald.MustRegister[OrderPlaced](p, "orders")
	herald.MustRegister[OrderShipped](p, "shipments")
	return p, w
}

func TestPublishOneWritePerCall(t *testing.T) {
	p, w := newTestPublisher(t)
	ctx := herald.WithCorrelationID(context.Background(), "req-7")
	err := p.Publish(ctx, OrderPlaced{ID: "o-1", Amount: 1}, &OrderPlaced{ID: "o-2"}, OrderShipped{ID: "o-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := w.sizes(); len(got) != 1 || got[0] != 3 {
		t.Fatalf("batches %v, want one Write of 3", got)
	}
	msgs := w.all()
	ids := map[string]bool{}
	for i, m := range msgs {
		if len(m.ID) != 27 || ids[m.ID] {
			t.Errorf("message %d: ID %q is not a fresh KSUID", i, m.ID)
		}
		ids[m.ID] = true
		if m.ContentType != codec.JSONContentType || m.Time.IsZero() || m.Time.Location() != time.UTC {
			t.Errorf("message %d: content type %q time %v", i, m.ContentType, m.Time)
		}
		if m.Headers[herald.HeaderCorrelationID] != "req-7" {
			t.Errorf("message %d lost the correlation id", i)
		}
	}
	if msgs[0].Topic != "orders" || msgs[2].Topic != "shipments" {
		t.Fatalf("topics %q %q", msgs[0].Topic, msgs[2].Topic)
	}
	if msgs[0].Key != "o-1" || msgs[1].Key != "o-2" || msgs[2].Key != "" {
		t.Fatalf("keys %q %q %q", msgs[0].Key, msgs[1].Key, msgs[2].Key)
	}
	if string(msgs[0].Data) != `{"id":"o-1","amount":1}` {
		t.Fatalf("payload %s", msgs[0].Data)
	}
	if msgs[0].Event() != "github.com/heraldbus/herald_test.OrderPlaced" {
		t.Fatalf("event header %q", msgs[0].Event())
	}
}

func TestPublishBadInputWritesNothing(t *testing.T) {
	// 256 bytes: a small OrderPlaced with its ID and event header fits.
	p, w := newTestPublisher(t, herald.WithMaxMessageBytes(256))
	ctx := context.Background()
	var nilOrder *OrderPlaced
	cases := []struct {
		name   string
		events []any
		want   error
	}{
		{"nil", []any{OrderPlaced{}, nil}, herald.ErrNilEvent},
		{"nil pointer", []any{nilOrder}, herald.ErrNilEvent},
		{"unregistered", []any{OrderPlaced{}, struct{ X int }{}}, herald.ErrUnregisteredEvent},
		{"too large", []any{OrderPlaced{ID: strings.Repeat("x", 200)}}, herald.ErrMessageTooLarge},
		{"unencodable", []any{OrderPlaced{}, chanEvent{C: make(chan int)}}, nil},
	}
	herald.MustRegister[chanEvent](p, "chans")
	for _, tc := range cases {
		err := p.Publish(ctx, tc.events...)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	if n := len(w.all()); n != 0 {
		t.Fatalf("%d messages were written for bad input", n)
	}
	if err := p.Publish(ctx); err != nil || len(w.sizes()) != 0 {
		t.Fatalf("empty Publish: %v, %d writes", err, len(w.sizes()))
	}
}

type chanEvent struct{ C chan int }

func TestPublishOptions(t *testing.T) {
	p, w := newTestPublisher(t, herald.WithUUIDs())
	herald.MustRegister[Note](p, "notes", herald.WithCodec(textCodec{}))
	if err := p.Publish(context.Background(), OrderShipped{ID: "x"}, Note("hi")); err != nil {
		t.Fatal(err)
	}
	msgs := w.all()
	if _, err := uuid.Parse(msgs[0].ID); err != nil {
		t.Fatalf("ID %q is not a UUID: %v", msgs[0].ID, err)
	}
	if msgs[1].ContentType != "text/plain" || string(msgs[1].Data) != "hi" {
		t.Fatalf("per-type codec ignored: %q %q", msgs[1].ContentType, msgs[1].Data)
	}
}

// Note is an event that textCodec encodes as its text.
type Note string

// textCodec encodes a Note as plain text.
type textCodec struct{}

func (textCodec) ContentType() string { return "text/plain" }

func (textCodec) Marshal(v any) ([]byte, error) {
	n, ok := v.(Note)
	if !ok {
		return nil, fmt.Errorf("textCodec: %T is not a Note", v)
	}
	return []byte(n), nil
}

func (textCodec) Unmarshal(data []byte, v any) error {
	n, ok := v.(*Note)
	if !ok {
		return fmt.Errorf("textCodec: cannot decode into %T", v)
	}
	*n = Note(data)
	return nil
}

func TestPublishMessages(t *testing.T) {
	// 40 bytes: a generated KSUID (27) and an empty payload fit.
	p, w := newTestPublisher(t, herald.WithMaxMessageBytes(40))
	ctx := context.Background()
	if err := p.PublishMessages(ctx, &herald.Message{Topic: "bad topic"}); !errors.Is(err, herald.ErrInvalidName) {
		t.Fatalf("bad topic: %v", err)
	}
	if err := p.PublishMessages(ctx, &herald.Message{Topic: "t", ID: "i", Data: make([]byte, 40)}); !errors.Is(err, herald.ErrMessageTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if err := p.PublishMessages(ctx, &herald.Message{Topic: "t", ID: "i", Headers: herald.Headers{"h": strings.Repeat("v", 39)}}); !errors.Is(err, herald.ErrMessageTooLarge) {
		t.Fatalf("too large by its headers: %v", err)
	}
	if err := p.PublishMessages(ctx, nil); !errors.Is(err, herald.ErrNilEvent) {
		t.Fatalf("nil message: %v", err)
	}
	if err := p.PublishMessages(ctx, &herald.Message{Topic: "t", ID: "given"}, &herald.Message{Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	msgs := w.all()
	if msgs[0].ID != "given" || msgs[1].ID == "" || msgs[1].Time.IsZero() {
		t.Fatalf("IDs %q %q time %v", msgs[0].ID, msgs[1].ID, msgs[1].Time)
	}
}
