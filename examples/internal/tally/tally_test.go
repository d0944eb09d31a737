package tally

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestWaitReturnsOnceDone(t *testing.T) {
	tl := New()
	count := 0
	go func() {
		for range 3 {
			tl.Note(func() { count++ })
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tl.Wait(ctx, func() bool { return count == 3 }); err != nil {
		t.Fatal(err)
	}
}

func TestWaitEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := New().Wait(ctx, func() bool { return false })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the context's deadline", err)
	}
}
