package memdriver_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

func TestChangelogKeepsTheLatestRecordOfEachKey(t *testing.T) {
	ctx := context.Background()
	b := memtest.Broker(t, memdriver.WithPartitions(2))
	log, err := b.Changelog(ctx, "balances", "deposits")
	if err != nil {
		t.Fatal(err)
	}
	if log.Partitions() != 2 {
		t.Fatalf("Partitions() = %d, want the broker's 2", log.Partitions())
	}
	again, err := b.Changelog(ctx, "balances", "")
	if err != nil || again != log {
		t.Fatalf("a view's Changelog = %v, %v; want the same changelog", again, err)
	}
	const keys, rounds = 10, 100 // enough updates to compact many times
	for r := range rounds {
		for k := range keys {
			first, err := log.Append(ctx, 1, []herald.ChangelogRecord{{Key: fmt.Sprint("k", k), Value: []byte(fmt.Sprint(r)), Input: uint64(r*keys + k)}})
			if err != nil {
				t.Fatal(err)
			}
			if want := uint64(r*keys + k); first != want {
				t.Fatalf("Append gave offset %d, want %d", first, want)
			}
		}
	}
	if _, err := log.Append(ctx, 1, []herald.ChangelogRecord{{Key: "k0", Deleted: true, Value: []byte("ignored")}}); err != nil {
		t.Fatal(err)
	}
	end, err := log.End(ctx, 1)
	if err != nil || end != keys*rounds+1 {
		t.Fatalf("End = %d, %v; want %d", end, err, keys*rounds+1)
	}
	dst := make([]herald.ChangelogRecord, 100)
	n, err := log.Read(ctx, 1, 0, dst)
	if err != nil {
		t.Fatal(err)
	}
	if n != keys {
		t.Fatalf("Read from 0 gave %d records, want the latest of each of %d keys: %+v", n, keys, dst[:n])
	}
	last := uint64(0)
	for i, r := range dst[:n] {
		if i > 0 && r.Offset <= last {
			t.Errorf("record %d at offset %d after %d: not in offset order", i, r.Offset, last)
		}
		last = r.Offset
		switch {
		case r.Key == "k0" && (!r.Deleted || r.Value != nil):
			t.Errorf("k0 = %+v, want a tombstone without a value", r)
		case r.Key != "k0" && string(r.Value) != fmt.Sprint(rounds-1):
			t.Errorf("%s = %q, want the last round's %d", r.Key, r.Value, rounds-1)
		}
	}
	if n, _ := log.Read(ctx, 1, end, dst); n != 0 {
		t.Errorf("Read from the end gave %d records", n)
	}
	if n, _ := log.Read(ctx, 0, 0, dst); n != 0 {
		t.Errorf("partition 0 gave %d records, want none", n)
	}
}

func TestChangelogWait(t *testing.T) {
	ctx := context.Background()
	b := memtest.Broker(t)
	log, err := b.Changelog(ctx, "balances", "deposits")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- log.Wait(ctx, 3, 0) }()
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before anything was appended", err)
	case <-time.After(20 * time.Millisecond):
	}
	if _, err := log.Append(ctx, 3, []herald.ChangelogRecord{{Key: "a"}}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait = %v after an append", err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := log.Wait(short, 3, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait past the end = %v, want the context's error", err)
	}
	go func() { done <- log.Wait(ctx, 3, 1) }()
	time.Sleep(10 * time.Millisecond)
	_ = b.Close()
	if err := <-done; !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Wait when the broker closes = %v, want ErrClosed", err)
	}
}

func TestChangelogBadValues(t *testing.T) {
	ctx := context.Background()
	b := memtest.Broker(t)
	for _, c := range []struct{ name, input string }{{"", "deposits"}, {"bad name", "deposits"}, {"balances", "bad topic"}} {
		if _, err := b.Changelog(ctx, c.name, c.input); !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("Changelog(%q, %q) = %v, want ErrInvalidName", c.name, c.input, err)
		}
	}
	log, err := b.Changelog(ctx, "balances", "deposits")
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]herald.ChangelogRecord, 1)
	for _, p := range []int{-1, 8} {
		if _, err := log.Append(ctx, p, []herald.ChangelogRecord{{Key: "a"}}); err == nil {
			t.Errorf("Append to partition %d worked", p)
		}
		if _, err := log.Read(ctx, p, 0, dst); err == nil {
			t.Errorf("Read of partition %d worked", p)
		}
		if _, err := log.End(ctx, p); err == nil {
			t.Errorf("End of partition %d worked", p)
		}
	}
	if _, err := log.Append(ctx, 0, []herald.ChangelogRecord{{Key: "a"}, {Key: ""}}); !errors.Is(err, herald.ErrNoKey) {
		t.Errorf("Append of a record without a key = %v, want ErrNoKey", err)
	}
	if end, _ := log.End(ctx, 0); end != 0 {
		t.Errorf("a refused batch wrote: End = %d", end)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := log.Append(cancelled, 0, []herald.ChangelogRecord{{Key: "a"}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with an ended context = %v", err)
	}
	_ = b.Close()
	if _, err := log.Append(ctx, 0, []herald.ChangelogRecord{{Key: "a"}}); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
	if _, err := b.Changelog(ctx, "other", ""); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Changelog after Close = %v, want ErrClosed", err)
	}
}
