package outbox

import (
	"testing"
	"time"
)

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
