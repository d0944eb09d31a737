package sqlcore

import (
	"maps"
	"testing"
	"unicode/utf8"

	"github.com/heraldbus/herald"
)

// FuzzHeadersJSON checks the hand-written header encoder against
// DecodeHeaders (encoding/json): whatever valid UTF-8 goes in comes back out.
func FuzzHeadersJSON(f *testing.F) {
	for _, seed := range [][2]string{
		{"herald-event", "OrderPlaced"},
		{`quo"te`, `back\slash`},
		{"ctl\x00\x01\x1f\n\r\t", "\x7f del"},
		{"ünïcödé", "\u2028\u2029 😀"},
		{"", ""},
	} {
		f.Add(seed[0], seed[1], "traceparent", "00-abc-01")
	}
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		for _, s := range []string{k1, v1, k2, v2} {
			if !utf8.ValidString(s) {
				return // CheckMessage refuses these
			}
		}
		for _, h := range []herald.Headers{{k1: v1}, {k1: v1, k2: v2}} {
			b := AppendHeadersJSON(nil, h)
			got, err := DecodeHeaders(b)
			if err != nil {
				t.Fatalf("%q: %v", b, err)
			}
			if !maps.Equal(got, h) {
				t.Fatalf("encoded %v as %q, decoded %v", h, b, got)
			}
		}
	})
}
