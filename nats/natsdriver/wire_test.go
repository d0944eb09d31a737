package natsdriver

import (
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// TestHeaderValuesWithLineBreaksRoundTrip: a value NATS cannot carry as
// it is (a dead letter's multi-line reason) is escaped on the wire and
// comes back as written; other values travel unchanged.
func TestHeaderValuesWithLineBreaksRoundTrip(t *testing.T) {
	in := &herald.Message{ID: "m1", Topic: "t", Key: "k", Time: time.Now().UTC(), Data: []byte("x"), Headers: herald.Headers{
		herald.HeaderDeadLetterReason: "panic: boom\n\ngoroutine 1 [running]:\r\nmain.main()",
		"percent":                     "100% of %0A, no line break",
		"both":                        "50%\n%0D",
	}}
	msg, _, err := encode(in, "subj", dedupKey(in, false))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range msg.Header {
		if len(vs) != 1 || containsLineBreak(vs[0]) {
			t.Errorf("on the wire %s: %q", k, vs)
		}
	}
	if got := msg.Header.Get("percent"); got != in.Headers["percent"] {
		t.Errorf("a value without a line break changed on the wire: %q", got)
	}
	out := decode("t", msg.Header, msg.Data)
	if len(out.Headers) != len(in.Headers) {
		t.Errorf("headers back %q, want %q", out.Headers, in.Headers)
	}
	for k, v := range in.Headers {
		if out.Headers[k] != v {
			t.Errorf("header %s back %q, want %q", k, out.Headers[k], v)
		}
	}
	if out.ID != "m1" || out.Key != "k" {
		t.Errorf("message back %+v", out)
	}
	if _, _, err := encode(&herald.Message{ID: "m2", Topic: "t", Headers: herald.Headers{headerEscaped: "x"}}, "subj", ""); err == nil {
		t.Error("a user header named Herald-Escaped was accepted")
	}
}

func containsLineBreak(s string) bool {
	for _, r := range s {
		if r == '\r' || r == '\n' {
			return true
		}
	}
	return false
}

// The duplicate window's key: the ID, with the due time for a message
// that has one, the topic in front on shared streams, none for dead
// letters and redrives; the decoded ID is the message's ID either way.
func TestDedupKey(t *testing.T) {
	due := &herald.Message{ID: "m", Topic: "t"}
	due.SetDeliverAt(time.Unix(0, 42))
	for _, c := range []struct {
		m      *herald.Message
		shared bool
		want   string
	}{
		{&herald.Message{ID: "m", Topic: "t"}, false, "m"},
		{&herald.Message{ID: "m", Topic: "t"}, true, "t m"},
		{due, false, "m at 42"},
		{due, true, "t m at 42"},
		{&herald.Message{ID: "m", Topic: "t", Headers: herald.Headers{herald.HeaderRedriveCount: "1"}}, false, ""},
		{&herald.Message{Topic: "t"}, false, ""},
	} {
		if got := dedupKey(c.m, c.shared); got != c.want {
			t.Errorf("dedupKey(%v, shared %v) = %q, want %q", c.m.Headers, c.shared, got, c.want)
		}
	}
	msg, _, err := encode(due, "subj", dedupKey(due, false))
	if err != nil {
		t.Fatal(err)
	}
	if got := decode("t", msg.Header, msg.Data).ID; got != "m" {
		t.Errorf("decoded ID %q, want m", got)
	}
}
