package herald_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

func TestAsyncPublisherBatchesAndFlushes(t *testing.T) {
	p, w := newTestPublisher(t)
	a, err := herald.NewAsyncPublisher(p, herald.AsyncConfig{MaxBatch: 10, Linger: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	for i := range 25 {
		if err := a.Publish(ctx, OrderPlaced{ID: "o", Amount: i}); err != nil {
			t.Fatal(err)
		}
	}
	// Two full batches go out without waiting for the (hour-long) linger.
	eventually(t, "two full batches", func() bool { return len(w.sizes()) == 2 })
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	sizes := w.sizes()
	if len(sizes) != 3 || sizes[0] != 10 || sizes[1] != 10 || sizes[2] != 5 {
		t.Fatalf("batches %v, want [10 10 5]", sizes)
	}
	for i, m := range w.all() {
		if want := `{"id":"o","amount":` + itoa(i) + `}`; string(m.Data) != want {
			t.Fatalf("message %d out of order: %s", i, m.Data)
		}
	}
	if err := a.Publish(ctx, OrderPlaced{}); !errors.Is(err, herald.ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func TestAsyncPublisherLingerAndFlush(t *testing.T) {
	p, w := newTestPublisher(t)
	a, err := herald.NewAsyncPublisher(p, herald.AsyncConfig{MaxBatch: 100, Linger: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	defer a.Close(ctx)
	if err := a.Publish(ctx, OrderPlaced{ID: "1"}, OrderPlaced{ID: "2"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(w.all()); n != 2 {
		t.Fatalf("Flush returned with %d of 2 messages written", n)
	}
	if err := a.Publish(ctx, OrderPlaced{}, nil); !errors.Is(err, herald.ErrNilEvent) {
		t.Fatalf("bad event must fail at the call: %v", err)
	}
}

func TestAsyncPublisherReportsFailedBatches(t *testing.T) {
	p, w := newTestPublisher(t)
	w.failures = 3 // every attempt of the first batch
	var reported atomic.Int32
	a, err := herald.NewAsyncPublisher(p, herald.AsyncConfig{
		MaxBatch: 1, WriteAttempts: 3,
		OnError: func(msgs []*herald.Message, err error) { reported.Add(int32(len(msgs))) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	defer a.Close(ctx)
	_ = a.Publish(ctx, OrderPlaced{ID: "lost"})
	_ = a.Publish(ctx, OrderPlaced{ID: "kept"})
	err = a.Flush(ctx)
	if !errors.Is(err, errWrite) {
		t.Fatalf("Flush = %v, want the write error", err)
	}
	if reported.Load() != 1 {
		t.Fatalf("OnError got %d messages, want 1", reported.Load())
	}
	if msgs := w.all(); len(msgs) != 1 || msgs[0].Key != "kept" {
		t.Fatalf("written: %v", msgs)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatalf("errors are reported once: %v", err)
	}
}

func TestAsyncPublisherBackpressure(t *testing.T) {
	p, w := newTestPublisher(t)
	w.block = make(chan struct{})
	a, err := herald.NewAsyncPublisher(p, herald.AsyncConfig{MaxBatch: 1, MaxBuffered: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	// One message is held by the blocked Write, two fill the buffer.
	for range 3 {
		if err := a.Publish(ctx, OrderPlaced{}); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	eventually(t, "the buffer to fill", func() bool {
		return errors.Is(a.Publish(short, OrderPlaced{}), context.DeadlineExceeded)
	})
	close(w.block)
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(w.all()); n < 3 {
		t.Fatalf("%d messages written after unblocking, want at least 3", n)
	}
}

func TestAsyncPublisherCloseDeadline(t *testing.T) {
	p, w := newTestPublisher(t)
	w.block = make(chan struct{}) // never released: the broker hangs
	var reported atomic.Int32
	a, err := herald.NewAsyncPublisher(p, herald.AsyncConfig{
		MaxBatch: 1, WriteAttempts: 1,
		OnError: func(msgs []*herald.Message, err error) { reported.Add(int32(len(msgs))) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	_ = a.Publish(ctx, OrderPlaced{})
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := a.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want DeadlineExceeded", err)
	}
	// The goroutine has stopped (goleak checks) and the message was reported.
	if reported.Load() != 1 {
		t.Fatalf("OnError got %d messages, want 1", reported.Load())
	}
}
