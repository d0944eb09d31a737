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
