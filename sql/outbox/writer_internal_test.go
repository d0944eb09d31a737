package outbox

import (
	"encoding/json"
	"maps"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/heraldbus/herald"
)

// FuzzHeadersJSON checks the hand-written header encoder against
// encoding/json's decoder: whatever valid UTF-8 goes in comes back out.
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
				return // Writer.check refuses these
			}
		}
		for _, h := range []herald.Headers{{k1: v1}, {k1: v1, k2: v2}} {
			b := appendHeadersJSON(nil, h)
			var got herald.Headers
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%q: %v", b, err)
			}
			if !maps.Equal(got, h) {
				t.Fatalf("encoded %v as %q, decoded %v", h, b, got)
			}
		}
	})
}

func TestNotifyAfterPause(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	w, err := NewWriter(Postgres, "outbox")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		ms   int
		want bool
	}{{0, true}, {1, false}, {3, false}, {7, false}, {20, true}, {24, false}, {29, true}} {
		if got := w.shouldNotify(at(step.ms)); got != step.want {
			t.Errorf("write at %d ms: notify %v, want %v", step.ms, got, step.want)
		}
	}
	always, _ := NewWriter(Postgres, "outbox", WithNotifyPause(0))
	never, _ := NewWriter(Postgres, "outbox", WithoutNotify())
	sqlite, _ := NewWriter(SQLite, "outbox")
	for i := range 3 {
		if !always.shouldNotify(at(i)) || never.shouldNotify(at(i*100)) || sqlite.shouldNotify(at(i*100)) {
			t.Errorf("write %d: always %v, never %v, sqlite %v", i, always.shouldNotify(at(i)), never.shouldNotify(at(i)), sqlite.shouldNotify(at(i)))
		}
	}
}
