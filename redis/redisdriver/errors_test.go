package redisdriver_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// occupy makes topic's stream key hold a string, so that every XADD to it
// fails with WRONGTYPE.
func occupy(t *testing.T, e testEnv, d *redisdriver.Driver, topic string) {
	t.Helper()
	if err := e.client.Set(context.Background(), d.StreamKey(topic), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
}

// A batch of which some XADDs fail returns a *herald.WriteError listing
// exactly those messages; the others are in their stream.
func TestPartialBatchIsAWriteError(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	ctx := context.Background()
	good, bad := drivertest.Name(t, "good"), drivertest.Name(t, "bad")
	occupy(t, e, d, bad)
	msgs := []*herald.Message{
		message(good, "g0", "k"), message(bad, "b1", "k"), message(good, "g2", "k"),
		message(bad, "b3", "k"), message(good, "g4", "k"),
	}
	err := d.Write(ctx, msgs)
	var we *herald.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("Write = %v (%T), want a *herald.WriteError", err, err)
	}
	if we.Driver != "redisdriver" || we.Messages != len(msgs) {
		t.Errorf("WriteError{Driver: %q, Messages: %d}, want redisdriver, %d", we.Driver, we.Messages, len(msgs))
	}
	var failed []int
	for _, f := range we.Failed {
		failed = append(failed, f.Index)
		if f.ID != msgs[f.Index].ID || f.Topic != bad || f.Partition != -1 {
			t.Errorf("failure %+v, want ID %s, topic %s, partition -1", f, msgs[f.Index].ID, bad)
		}
		if !goredis.HasErrorPrefix(f, "WRONGTYPE") {
			t.Errorf("failure of %s: %v, want Redis's WRONGTYPE", f.ID, f.Err)
		}
	}
	if !slices.Equal(failed, []int{1, 3}) {
		t.Fatalf("failed indexes %v, want [1 3]: %v", failed, err)
	}
	if !goredis.HasErrorPrefix(err, "WRONGTYPE") {
		t.Errorf("Write = %v, want Redis's error reachable with errors.As", err)
	}

	xs, err := e.client.XRange(ctx, d.StreamKey(good), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	for _, x := range xs {
		stored = append(stored, x.Values["id"].(string))
	}
	var want []string
	for i, m := range msgs {
		if we.Written(i) {
			want = append(want, m.ID)
		}
	}
	if !slices.Equal(stored, want) {
		t.Errorf("stream %s holds %v, want the messages not in Failed: %v", good, stored, want)
	}
}

// Other failures are a *herald.DriverError naming the operation, topic and
// group, and wrapping the cause.
func TestErrorsAreDriverErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cases := []struct {
		name    string
		provoke func(t *testing.T, d *redisdriver.Driver, topic, group string) error
		op      string
		group   bool // whether the error names the group
		detail  string
		is      func(error) bool
	}{
		{
			name: "single message write",
			provoke: func(t *testing.T, d *redisdriver.Driver, topic, _ string) error {
				occupy(t, e, d, topic)
				return d.Write(ctx, []*herald.Message{message(topic, "m1", "k")})
			},
			op: "write", detail: "message m1", is: wrongType,
		},
		{
			name: "subscribe to a key of another type",
			provoke: func(t *testing.T, d *redisdriver.Driver, topic, group string) error {
				occupy(t, e, d, topic)
				_, err := d.Subscribe(ctx, topic, group)
				return err
			},
			op: "create group", group: true, is: wrongType,
		},
		{
			name: "subscribe on a closed driver",
			provoke: func(t *testing.T, d *redisdriver.Driver, topic, group string) error {
				_ = d.Close()
				_, err := d.Subscribe(ctx, topic, group)
				return err
			},
			op: "subscribe", group: true, is: wraps(herald.ErrClosed),
		},
		{
			name: "fetch from a closed subscription",
			provoke: func(t *testing.T, d *redisdriver.Driver, topic, group string) error {
				sub, err := d.Subscribe(ctx, topic, group)
				if err != nil {
					t.Fatal(err)
				}
				drivertest.CloseSub(t, sub)
				_, err = sub.Fetch(ctx, make([]herald.Delivery, 1))
				return err
			},
			op: "fetch", group: true, is: wraps(herald.ErrClosed),
		},
		{
			name: "stats of a missing group",
			provoke: func(t *testing.T, d *redisdriver.Driver, topic, group string) error {
				_, err := d.GroupStats(ctx, topic, group)
				return err
			},
			op: "group stats", group: true, is: wraps(redisdriver.ErrNoGroup),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := e.driver(t)
			t.Cleanup(func() { _ = d.Close() })
			topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
			err := c.provoke(t, d, topic, group)
			wantGroup := ""
			if c.group {
				wantGroup = group
			}
			de := drivertest.CheckDriverError(t, err, "redisdriver", c.op, topic, wantGroup)
			if de == nil {
				return
			}
			if c.detail != "" && de.Detail != c.detail {
				t.Errorf("Detail = %q, want %q", de.Detail, c.detail)
			}
			if !c.is(err) {
				t.Errorf("error %v does not wrap the cause", err)
			}
		})
	}
}

func wrongType(err error) bool { return goredis.HasErrorPrefix(err, "WRONGTYPE") }

func wraps(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}
