package backoff

import (
	"context"
	"testing"
	"time"
)

func TestBackoffDoublesWithJitterUpToMax(t *testing.T) {
	b := New(100*time.Millisecond, 500*time.Millisecond)
	for i, want := range []time.Duration{100, 200, 400, 500, 500} {
		want *= time.Millisecond
		if got := b.Next(); got < want*8/10 || got > want*12/10 {
			t.Errorf("wait %d = %v, want %v ± 20%%", i+1, got, want)
		}
	}
	b.Reset()
	if got := b.Next(); got > 120*time.Millisecond {
		t.Errorf("after Reset: %v, want about 100ms", got)
	}
	if got := New(time.Second, time.Millisecond); got.max != time.Second {
		t.Errorf("max below min: %v", got.max)
	}
}

func TestExponential(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		lo, hi time.Duration
		n      int
		want   time.Duration
	}{
		{100 * ms, time.Second, 1, 100 * ms},
		{100 * ms, time.Second, 0, 100 * ms},
		{100 * ms, time.Second, 2, 200 * ms},
		{100 * ms, time.Second, 4, 800 * ms},
		{100 * ms, time.Second, 5, time.Second},
		{100 * ms, time.Second, 1 << 30, time.Second}, // no overflow
		{time.Second, ms, 3, time.Second},             // hi below lo counts as lo
	} {
		if got := Exponential(c.lo, c.hi, c.n); got != c.want {
			t.Errorf("Exponential(%v, %v, %d) = %v, want %v", c.lo, c.hi, c.n, got, c.want)
		}
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Error("Sleep with a live context did not wait in full")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep with a cancelled context reported a full wait")
	}
}
