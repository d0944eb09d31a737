package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

// TestFailuresAreLoggedAtTheDefaultLevel checks that what an operator
// must see reaches a logger at info level, with no hook installed: a
// handler failure left for redelivery (warn) and a dead letter (warn, also
// when the subscription has its own OnDeadLetter), while successes log
// nothing.
func TestFailuresAreLoggedAtTheDefaultLevel(t *testing.T) {
	var logs drivertest.LogBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	bus, _ := newTestBus(t, herald.WithLogger(logger))
	herald.MustRegister[OrderPlaced](bus, "orders")
	var calls, deadLettered atomic.Int32
	// billing has no dead-letter topic: its failure is redelivered.
	must(t, herald.Subscribe(bus, "billing", func(_ context.Context, e OrderPlaced, _ *herald.Message) error {
		if calls.Add(1) == 1 {
			return errors.New("card service timed out")
		}
		return nil
	}))
	// audit dead-letters what it gives up on, with a callback of its own.
	must(t, herald.Subscribe(bus, "audit", func(_ context.Context, e OrderPlaced, _ *herald.Message) error {
		return herald.Permanent(errors.New("negative amount"))
	}, herald.WithDeadLetterConfig(herald.DeadLetterConfig{
		OnDeadLetter: func(*herald.Message, error) { deadLettered.Add(1) },
	})))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, OrderPlaced{ID: "o-1"}))
	eventually(t, "the redelivery and the dead letter", func() bool { return calls.Load() == 2 && deadLettered.Load() == 1 })
	must(t, bus.Shutdown(ctx))

	byMsg := map[string][]map[string]any{}
	for _, rec := range logs.Records(t) {
		msg, _ := rec["msg"].(string)
		byMsg[msg] = append(byMsg[msg], rec)
	}
	failed := byMsg["herald: handler failed"]
	if len(failed) != 1 || failed[0]["level"] != "WARN" || failed[0]["topic"] != "orders" ||
		failed[0]["group"] != "billing" || !strings.Contains(failed[0]["error"].(string), "card service timed out") {
		t.Errorf("handler failed logged %v, want one WARN line for billing's first attempt; all: %v", failed, byMsg)
	}
	dl := byMsg["herald: dead-lettered"]
	if len(dl) != 1 || dl[0]["level"] != "WARN" || dl[0]["group"] != "audit" || dl[0]["dead_letter_topic"] != "orders.dlq" {
		t.Errorf("dead-lettered logged %v, want one WARN line naming orders.dlq; all: %v", dl, byMsg)
	}
	for msg := range byMsg {
		if msg != "herald: handler failed" && msg != "herald: dead-lettered" {
			t.Errorf("unexpected log line at info level: %q %v", msg, byMsg[msg])
		}
	}
}

func TestObserve(t *testing.T) {
	var got []herald.HandleResult
	h := herald.Observe("orders", "g", quiet, func(r herald.HandleResult) { got = append(got, r) })(
		func(_ context.Context, m *herald.Message) error {
			if m.ID == "bad" {
				return errors.New("x")
			}
			return nil
		})
	_ = h(context.Background(), msg("ok"))
	_ = h(context.Background(), msg("bad"))
	if len(got) != 2 || got[0].Err != nil || got[1].Err == nil || got[0].Topic != "orders" || got[1].Message.ID != "bad" {
		t.Fatalf("got %+v", got)
	}
}

func TestObserveLogsFailureAttributes(t *testing.T) {
	var buf strings.Builder
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	h := herald.Chain(func(context.Context, *herald.Message) error { return errors.New("boom") },
		herald.Observe("orders", "billing", logger, nil), herald.Retry(fastRetry(2)))
	if err := h(context.Background(), &herald.Message{ID: "m-1", Topic: "orders"}); err == nil {
		t.Fatal("want the error")
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &rec); err != nil {
		t.Fatalf("log %q: %v", buf.String(), err)
	}
	for k, want := range map[string]any{"topic": "orders", "group": "billing", "message_id": "m-1", "attempts": 2.0, "delivery": 1.0, "level": "WARN"} {
		if rec[k] != want {
			t.Errorf("log %s = %v, want %v (%s)", k, rec[k], want, buf.String())
		}
	}
}
