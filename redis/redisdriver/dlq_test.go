package redisdriver_test

import (
	"context"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/dlq/dlqtest"
	"github.com/heraldbus/herald/redis/redisdedup"
	"github.com/heraldbus/herald/redis/redisdriver"
)

func TestDeadLetters(t *testing.T) {
	dlqtest.Run(t, dlqtest.Config{
		NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
			d := newEnv(t).driver(t)
			return d, d.DeadLetters()
		},
		RejectingWriter: func(t *testing.T) herald.Writer {
			return newEnv(t).driver(t, redisdriver.WithMaxMessageBytes(1))
		},
		Dedup: func(t *testing.T) dedup.Storage {
			env := newEnv(t)
			return redisdedup.New(env.client, redisdedup.WithKeyPrefix(env.prefix+"dedup:"))
		},
		// An entry ID of 1970: every entry the suite writes has a later one.
		MissingPosition: "999999-0",
		BadPositions:    []string{"1-x", "abc-0", "1-2-3"},
	})
}

// TestDeadLettersRedrivenAreDeleted checks the Redis form of a mark: the
// entry is gone from the stream, and other entries keep their IDs.
func TestDeadLettersRedrivenAreDeleted(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h := herald.Headers{herald.HeaderDeadLetterTopic: "orders", herald.HeaderDeadLetterAttempts: "x"}
	err := d.Write(ctx, []*herald.Message{
		{ID: "a", Topic: "orders.dlq", Headers: h, Data: []byte("1")},
		{ID: "b", Topic: "orders.dlq", Headers: h, Data: []byte("2")},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := d.DeadLetters()
	entries, next, err := s.List(ctx, "orders.dlq", "", 10)
	if err != nil || len(entries) != 2 || next != "" {
		t.Fatalf("List: %d entries, next %q, %v", len(entries), next, err)
	}
	if entries[0].Attempts != 0 || !entries[0].Time.IsZero() {
		t.Errorf("malformed attempts and missing time: %+v", entries[0])
	}
	if err := s.MarkRedriven(ctx, "orders.dlq", entries[:1]); err != nil {
		t.Fatal(err)
	}
	ids, err := env.client.XRange(ctx, d.StreamKey("orders.dlq"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0].ID != entries[1].Position {
		t.Errorf("stream after the mark: %v, want only %s", ids, entries[1].Position)
	}
}
