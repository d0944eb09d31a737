package kafkadriver

import (
	"testing"
	"time"
)

// A high watermark reported by a request sent before this Driver's last
// write to the partition was answered does not count the write: end
// refuses it, waiting fetch or not, until a request sent after the write
// reports.
func TestLagStateDistrustsWhatPrecedesAWrite(t *testing.T) {
	const window = int64(time.Second)
	var l lagState
	l.init()
	if _, fresh := l.end(0, window, 0); fresh {
		t.Fatal("a high watermark never seen is fresh")
	}
	l.observe(100, 110, 7) // seek: ListOffsets sent at 100
	l.fetching(120, 7)     // a fetch from the end, held by the broker
	if end, fresh := l.end(130, window, 0); !fresh || end != 7 {
		t.Fatalf("no write: end %d, fresh %v; want 7, true", end, fresh)
	}
	if _, fresh := l.end(130, window, 125); fresh {
		t.Fatal("the waiting fetch's high watermark is trusted after a write answered at 125")
	}
	l.observe(l.sent.Load(), 128, 9) // the fetch sent at 120 answers with the write
	if _, fresh := l.end(130, window, 125); fresh {
		t.Fatal("a response to a fetch sent at 120 is trusted after a write answered at 125")
	}
	l.fetching(129, 9)
	l.observe(l.sent.Load(), 131, 9)
	if end, fresh := l.end(132, window, 125); !fresh || end != 9 {
		t.Fatalf("a fetch sent after the write: end %d, fresh %v; want 9, true", end, fresh)
	}
	l.waiting.Store(false) // as fetched does: no fetch is held now
	if _, fresh := l.end(131+window+1, window, 125); fresh {
		t.Fatal("a high watermark older than the window, with no fetch waiting, is fresh")
	}
}
