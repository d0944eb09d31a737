package memdriver_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

// TestErrorsAreDriverErrors provokes real failures and checks that each
// is a *herald.DriverError that says where it happened and wraps its cause.
func TestErrorsAreDriverErrors(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		provoke func(t *testing.T, topic, group string) error
		op      string
		group   bool   // whether the error names the group
		detail  string // how Detail starts
		cause   error
	}{
		{
			name: "oversized message",
			provoke: func(t *testing.T, topic, _ string) error {
				b := memtest.Broker(t, memdriver.WithMaxMessageBytes(64))
				return b.Write(ctx, []*herald.Message{{ID: "big", Topic: topic, Data: make([]byte, 65)}})
			},
			op: "write", detail: "message big: ", cause: herald.ErrMessageTooLarge,
		},
		{
			name: "write to a closed broker",
			provoke: func(t *testing.T, topic, _ string) error {
				b := memtest.Broker(t)
				_ = b.Close()
				return b.Write(ctx, []*herald.Message{{ID: "m1", Topic: topic}})
			},
			op: "write", detail: "message m1", cause: herald.ErrClosed,
		},
		{
			name: "subscribe on a closed broker",
			provoke: func(t *testing.T, topic, group string) error {
				b := memtest.Broker(t)
				_ = b.Close()
				_, err := b.Subscribe(ctx, topic, group)
				return err
			},
			op: "subscribe", group: true, cause: herald.ErrClosed,
		},
		{
			name: "fetch from a closed subscription",
			provoke: func(t *testing.T, topic, group string) error {
				sub, err := memtest.Broker(t).Subscribe(ctx, topic, group)
				if err != nil {
					t.Fatal(err)
				}
				_ = sub.Close(ctx)
				_, err = sub.Fetch(ctx, make([]herald.Delivery, 1))
				return err
			},
			op: "fetch", group: true, cause: herald.ErrClosed,
		},
		{
			name: "missing dead letter",
			provoke: func(t *testing.T, topic, _ string) error {
				_, err := memtest.Broker(t).DeadLetters().Get(ctx, topic, "0:0")
				return err
			},
			op: "get dead letter", detail: "entry 0:0", cause: dlq.ErrNotFound,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
			err := c.provoke(t, topic, group)
			wantGroup := ""
			if c.group {
				wantGroup = group
			}
			de := drivertest.CheckDriverError(t, err, "memdriver", c.op, topic, wantGroup)
			if de == nil {
				return
			}
			if !strings.HasPrefix(de.Detail, c.detail) {
				t.Errorf("Detail = %q, want it to start with %q", de.Detail, c.detail)
			}
			if !errors.Is(err, c.cause) {
				t.Errorf("error %v does not wrap %v", err, c.cause)
			}
		})
	}
}

func TestInvalidTopicIsADriverError(t *testing.T) {
	err := memtest.Broker(t).Write(context.Background(), []*herald.Message{{ID: "m1", Topic: "no spaces"}})
	var de *herald.DriverError
	if !errors.As(err, &de) || de.Driver != "memdriver" || de.Op != "write" || de.Detail != "message m1" {
		t.Fatalf("Write = %#v, want a memdriver write DriverError naming message m1", err)
	}
	if !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Write = %v, want it to wrap herald.ErrInvalidName", err)
	}
}
