package natsdriver

import (
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/heraldbus/herald"
)

// The NATS headers of a message besides the user's own; see "Wire format"
// in the package documentation.
const (
	headerMsgID       = "Nats-Msg-Id" // the server's deduplication key
	headerKey         = "Herald-Key"
	headerContentType = "Herald-Content-Type"
	headerTime        = "Herald-Time"
	// natsReserved starts the headers the server reads and sets.
	natsReserved = "Nats-"
)

// ownHeader reports whether a header name belongs to the driver or the
// server, so that a user header must not use it.
func ownHeader(k string) bool {
	return strings.HasPrefix(k, natsReserved) || k == headerKey || k == headerContentType || k == headerTime
}

// encode returns the NATS message of m on subject and its size on the
// wire (payload plus the header block), or an error for a header NATS
// cannot carry.
func encode(m *herald.Message, subject string) (*nats.Msg, int, error) {
	h := make(nats.Header, len(m.Headers)+4)
	size := len("NATS/1.0\r\n\r\n") + len(m.Data)
	set := func(k, v string) {
		h[k] = []string{v}
		size += len(k) + len(v) + len(": \r\n")
	}
	for k, v := range m.Headers {
		if err := checkHeader(k, v); err != nil {
			return nil, 0, err
		}
		set(k, v)
	}
	if m.ID != "" {
		set(headerMsgID, m.ID)
	}
	if m.Key != "" {
		set(headerKey, m.Key)
	}
	if m.ContentType != "" {
		set(headerContentType, m.ContentType)
	}
	if !m.Time.IsZero() {
		set(headerTime, m.Time.UTC().Format(time.RFC3339Nano))
	}
	return &nats.Msg{Subject: subject, Header: h, Data: m.Data}, size, nil
}

// checkHeader refuses what the NATS header block cannot carry, and the
// names the server or the driver reads.
func checkHeader(k, v string) error {
	switch {
	case k == "" || strings.ContainsAny(k, ": \t\r\n"):
		return fmt.Errorf("header name %q: NATS header names cannot be empty or hold ':' or white space: %w", k, herald.ErrInvalidName)
	case strings.ContainsAny(v, "\r\n"):
		return fmt.Errorf("header %q: NATS header values cannot hold line breaks: %w", k, herald.ErrInvalidName)
	case ownHeader(k):
		return fmt.Errorf("header name %q is reserved by NATS or the driver: %w", k, herald.ErrInvalidName)
	}
	return nil
}

// decode returns the herald message of a NATS message of topic. A
// Herald-Time that does not parse (a producer of another kind) leaves Time
// zero rather than failing the delivery.
func decode(topic string, h nats.Header, data []byte) *herald.Message {
	m := &herald.Message{
		Topic:       topic,
		ID:          h.Get(headerMsgID),
		Key:         h.Get(headerKey),
		ContentType: h.Get(headerContentType),
		Data:        data,
	}
	if ts := h.Get(headerTime); ts != "" {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			m.Time = t
		}
	}
	for k, vs := range h {
		if ownHeader(k) || len(vs) == 0 {
			continue
		}
		if m.Headers == nil {
			m.Headers = make(herald.Headers, len(h))
		}
		m.Headers[k] = vs[0]
	}
	return m
}
