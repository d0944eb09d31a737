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
	headerID          = "Herald-Id"   // Message.ID, when Nats-Msg-Id is not just that
	headerKey         = "Herald-Key"
	headerContentType = "Herald-Content-Type"
	headerTime        = "Herald-Time"
	// headerEscaped lists, separated by spaces, the headers whose values
	// were escaped because they held line breaks (see escaper).
	headerEscaped = "Herald-Escaped"
	// natsReserved starts the headers the server reads and sets.
	natsReserved = "Nats-"
)

// ownHeader reports whether a header name belongs to the driver or the
// server, so that a user header must not use it.
func ownHeader(k string) bool {
	return strings.HasPrefix(k, natsReserved) || k == headerID || k == headerKey || k == headerContentType || k == headerTime ||
		k == headerEscaped
}

// The NATS header block cannot carry a line break in a value, and herald
// writes some (a dead letter's reason with a panic's stack): such a value
// travels with '%', CR and LF percent-encoded, its name listed in
// Herald-Escaped, and is decoded on the way back. Values without line
// breaks travel as they are.
var (
	escaper   = strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A")
	unescaper = strings.NewReplacer("%25", "%", "%0D", "\r", "%0A", "\n")
)

// dedupKey returns the Nats-Msg-Id of m, the key of the server's duplicate
// window, or "" for none. It is m.ID, so that a retried publish is dropped,
// except where that would drop a message herald writes again on purpose:
//
//   - a dead-letter entry or a redrive (a herald-dlq-* or redrive header)
//     gets none: dead-lettering and redriving write an ID the stream may
//     hold already (the same message dead-lettered by two groups, redriven
//     within the window, written to a stream its topic shares), and the
//     server would drop it while its writer counts it stored. A second
//     copy of one is delivered, and herald's deduplication (keyed by ID
//     and redrive count) skips it;
//   - a message with a due time (herald.HeaderDeliverAt) has the ID, " at "
//     and the due time: a retry round of a message (WithRetryLater) has its
//     ID and another due time, and the mover's forward of a delayed message
//     to its topic must not be dropped as a copy of the message published
//     there at first;
//   - with WithSubjects (shared is true) the key is the topic, a space and
//     the rest, since one stream may hold several topics and the window
//     spans the stream.
func dedupKey(m *herald.Message, shared bool) string {
	if m.ID == "" {
		return ""
	}
	for k := range m.Headers {
		if herald.IsDeadLetterHeader(k) || k == herald.HeaderRedriveGroup || k == herald.HeaderRedriveCount {
			return ""
		}
	}
	key := m.ID
	if at, ok := m.Headers[herald.HeaderDeliverAt]; ok {
		key += " at " + at
	}
	if shared {
		return m.Topic + " " + key
	}
	return key
}

// messageID returns the herald message ID of a stored message: Herald-Id
// when the driver set one, else the Nats-Msg-Id (also that of a producer
// of another kind).
func messageID(h nats.Header) string {
	if id := h.Get(headerID); id != "" {
		return id
	}
	return h.Get(headerMsgID)
}

// encode returns the NATS message of m on subject with the Nats-Msg-Id
// msgID (its dedupKey; "" for none) and its size on the wire (payload plus
// the header block), or an error for a header NATS cannot carry.
func encode(m *herald.Message, subject, msgID string) (*nats.Msg, int, error) {
	h := make(nats.Header, len(m.Headers)+5)
	size := len("NATS/1.0\r\n\r\n") + len(m.Data)
	var escaped []string
	set := func(k, v string) {
		if strings.ContainsAny(v, "\r\n") {
			v = escaper.Replace(v)
			escaped = append(escaped, k)
		}
		h[k] = []string{v}
		size += len(k) + len(v) + len(": \r\n")
	}
	for k, v := range m.Headers {
		if err := checkHeader(k, v); err != nil {
			return nil, 0, err
		}
		set(k, v)
	}
	if msgID != "" {
		set(headerMsgID, msgID)
	}
	if m.ID != "" && msgID != m.ID {
		set(headerID, m.ID)
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
	if len(escaped) > 0 {
		set(headerEscaped, strings.Join(escaped, " "))
	}
	return &nats.Msg{Subject: subject, Header: h, Data: m.Data}, size, nil
}

// checkHeader refuses what the NATS header block cannot carry, and the
// names the server or the driver reads.
func checkHeader(k, v string) error {
	switch {
	case k == "" || strings.ContainsAny(k, ": \t\r\n"):
		return fmt.Errorf("header name %q: NATS header names cannot be empty or hold ':' or white space: %w", k, herald.ErrInvalidName)
	case ownHeader(k):
		return fmt.Errorf("header name %q is reserved by NATS or the driver: %w", k, herald.ErrInvalidName)
	}
	return nil
}

// decode returns the herald message of a NATS message of topic. A
// Herald-Time that does not parse (a producer of another kind) leaves Time
// zero rather than failing the delivery.
func decode(topic string, h nats.Header, data []byte) *herald.Message {
	if list := h.Get(headerEscaped); list != "" {
		unescaped := make(nats.Header, len(h))
		for k, vs := range h {
			unescaped[k] = vs
		}
		for _, k := range strings.Fields(list) {
			if vs := unescaped[k]; len(vs) > 0 {
				unescaped[k] = []string{unescaper.Replace(vs[0])}
			}
		}
		h = unescaped
	}
	m := &herald.Message{
		Topic:       topic,
		ID:          messageID(h),
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
