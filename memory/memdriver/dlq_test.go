package memdriver_test

import (
	"context"
	"errors"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/dlq/dlqtest"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

func TestDeadLetters(t *testing.T) {
	dlqtest.Run(t, dlqtest.Config{
		NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
			b := memtest.Broker(t)
			return b, b.DeadLetters()
		},
		RejectingWriter: func(t *testing.T) herald.Writer {
			return memtest.Broker(t, memdriver.WithMaxMessageBytes(1))
		},
		// Partition 0, which every topic has, at an offset the suite
		// never writes.
		MissingPosition: "0:999999",
		BadPositions:    []string{"0", "0:", "0:-1", "999:0"},
	})
}

// TestDeadLettersOverwrittenAndClosed checks what the ring has overwritten
// is neither listed nor found, marks of overwritten offsets do not hide
// the messages written at the same place later, and a closed broker's
// store says so.
func TestDeadLettersOverwrittenAndClosed(t *testing.T) {
	ctx := context.Background()
	b := memtest.Broker(t, memdriver.WithPartitions(1), memdriver.WithCapacity(2))
	s := b.DeadLetters()
	write := func(ids ...string) {
		t.Helper()
		for _, id := range ids {
			if err := b.Write(ctx, []*herald.Message{{ID: id, Topic: "t.dlq"}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	ids := func() []string {
		t.Helper()
		entries, next, err := s.List(ctx, "t.dlq", "", 10)
		if err != nil || next != "" {
			t.Fatalf("List: %v, next %q", err, next)
		}
		var out []string
		for _, e := range entries {
			out = append(out, e.Position+"="+e.Message.ID)
		}
		return out
	}
	write("a", "b", "c") // a is overwritten
	if got := ids(); len(got) != 2 || got[0] != "0:1=b" || got[1] != "0:2=c" {
		t.Fatalf("List = %v, want [0:1=b 0:2=c]", got)
	}
	if _, err := s.Get(ctx, "t.dlq", "a"); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get of an overwritten entry = %v, want ErrNotFound", err)
	}
	e, err := s.Get(ctx, "t.dlq", "0:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.MarkRedriven(ctx, "t.dlq", []dlq.Entry{e}); err != nil {
		t.Fatal(err)
	}
	if got := ids(); len(got) != 1 || got[0] != "0:2=c" {
		t.Fatalf("after marking b: List = %v, want [0:2=c]", got)
	}
	write("d", "e") // b and c are overwritten; b's mark goes with it
	if got := ids(); len(got) != 2 || got[0] != "0:3=d" || got[1] != "0:4=e" {
		t.Fatalf("List = %v, want [0:3=d 0:4=e]", got)
	}
	if err := s.MarkRedriven(ctx, "t.dlq", []dlq.Entry{{Position: "9:0"}}); err == nil {
		t.Error("MarkRedriven accepted a partition the topic does not have")
	}
	if _, _, err := s.List(ctx, "t.dlq", "0:x", 10); err == nil {
		t.Error("List accepted a malformed cursor")
	}
	if entries, _, err := s.List(ctx, "never.written", "", 10); err != nil || len(entries) != 0 {
		t.Errorf("List of a topic never written = %v, %v; want nothing", entries, err)
	}
	_ = b.Close()
	if _, _, err := s.List(ctx, "t.dlq", "", 10); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("List after Close = %v, want ErrClosed", err)
	}
}
