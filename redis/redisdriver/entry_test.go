package redisdriver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// TestWireFormat checks the documented entry fields, as another language's
// producer or consumer would see them.
func TestWireFormat(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t)
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	at := time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)
	m := &herald.Message{
		ID: "id-1", Topic: topic, Key: "k", ContentType: "application/json", Data: []byte(`{"a":1}`), Time: at,
		Headers: herald.Headers{"traceparent": "00-x", "h:odd:name": "v"},
	}
	if err := d.Write(ctx, []*herald.Message{m}); err != nil {
		t.Fatal(err)
	}
	entries, err := env.client.XRange(ctx, d.StreamKey(topic), "-", "+").Result()
	if err != nil || len(entries) != 1 {
		t.Fatalf("XRANGE: %v, %v", entries, err)
	}
	want := map[string]any{
		"id": "id-1", "key": "k", "content-type": "application/json", "data": `{"a":1}`,
		"time": strconv.FormatInt(at.UnixNano(), 10), "h:traceparent": "00-x", "h:h:odd:name": "v",
	}
	if fmt.Sprint(entries[0].Values) != fmt.Sprint(want) {
		t.Errorf("entry fields\n got %v\nwant %v", entries[0].Values, want)
	}
}

// TestForeignEntries reads entries that other producers wrote with only
// some of the fields: the ID and time come from the entry ID, unknown
// fields are ignored, and an entry without data still arrives (its handler
// chain decides what to do with it).
func TestForeignEntries(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	stream := d.StreamKey(topic)
	id1, err := env.client.XAdd(ctx, &goredis.XAddArgs{Stream: stream, Values: []any{"data", "hello", "h:lang", "python", "extra", "x"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	id2, err := env.client.XAdd(ctx, &goredis.XAddArgs{Stream: stream, Values: []any{"time", "not a number", "note", "no data"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	got := fetchUntil(t, sub, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == 2 })
	ms, _ := strconv.ParseInt(strings.Split(id1, "-")[0], 10, 64)
	m := got[0].Message
	if m.ID != id1 || string(m.Data) != "hello" || m.Topic != topic || m.Key != "" || !m.Time.Equal(time.UnixMilli(ms)) ||
		len(m.Headers) != 1 || m.Headers["lang"] != "python" {
		t.Errorf("first foreign entry: %+v", m)
	}
	if m := got[1].Message; m.ID != id2 || m.Data != nil || m.Time.IsZero() {
		t.Errorf("second foreign entry: %+v", m)
	}
	for _, dl := range got {
		if err := sub.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWriteRefusesBadBatchesWhole: a nil message, an invalid topic or an
// oversized entry anywhere in a batch fails it before anything is sent.
func TestWriteRefusesBadBatchesWhole(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t, redisdriver.WithMaxMessageBytes(1000))
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	big := message(topic, "big", "")
	big.Data = make([]byte, 1000)
	for _, tc := range []struct {
		name string
		bad  *herald.Message
		want error
	}{
		{"nil", nil, herald.ErrNilEvent},
		{"topic", &herald.Message{ID: "x", Topic: "bad topic"}, herald.ErrInvalidName},
		// The limit counts the whole entry: the payload fits, the fields do not.
		{"size", big, herald.ErrMessageTooLarge},
	} {
		err := d.Write(ctx, []*herald.Message{message(topic, "ok-"+tc.name, ""), tc.bad})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Write = %v, want %v", tc.name, err, tc.want)
		}
	}
	if n, err := env.client.Exists(ctx, d.StreamKey(topic)).Result(); err != nil || n != 0 {
		t.Fatalf("a refused batch wrote something: %d, %v", n, err)
	}
	unlimited := env.driver(t, redisdriver.WithMaxMessageBytes(0))
	if err := unlimited.Write(ctx, []*herald.Message{big}); err != nil {
		t.Errorf("Write without a limit: %v", err)
	}
}

// TestTrimming shows both trimming options at work. Approximate trimming
// removes whole internal nodes of 100 entries, so the checks leave room.
func TestTrimming(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	write := func(d *redisdriver.Driver, topic string, n int) {
		t.Helper()
		for i := 0; i < n; i += 100 {
			var msgs []*herald.Message
			for j := i; j < min(n, i+100); j++ {
				msgs = append(msgs, message(topic, strconv.Itoa(j), ""))
			}
			if err := d.Write(ctx, msgs); err != nil {
				t.Fatal(err)
			}
		}
	}

	byLen := env.driver(t, redisdriver.WithTrimMaxLen(50))
	topic := drivertest.Name(t, "len")
	write(byLen, topic, 1000)
	if n, err := env.client.XLen(ctx, byLen.StreamKey(topic)).Result(); err != nil || n < 50 || n > 250 {
		t.Errorf("MAXLEN ~ 50 left %d entries (%v)", n, err)
	}

	byAge := env.driver(t, redisdriver.WithTrimMaxAge(50*time.Millisecond))
	topic = drivertest.Name(t, "age")
	write(byAge, topic, 500)
	time.Sleep(100 * time.Millisecond) // the 500 are now older than the max age
	write(byAge, topic, 10)
	if n, err := env.client.XLen(ctx, byAge.StreamKey(topic)).Result(); err != nil || n >= 500 {
		t.Errorf("MINID ~ left %d of 510 entries (%v)", n, err)
	}
}

// TestTrimmedPendingEntriesAreReported: entries that a departed consumer
// held, deleted from the stream by trimming, cannot be delivered again; the
// member that meets them in its scan reports them.
func TestTrimmedPendingEntriesAreReported(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	trimmed := make(chan *redisdriver.EntriesError, 4)
	d := env.driver(t, redisdriver.WithClaimMinIdle(30*time.Millisecond), redisdriver.WithReclaimInterval(10*time.Millisecond),
		redisdriver.WithBlock(10*time.Millisecond), redisdriver.WithErrorHandler(func(err error) {
			var ee *redisdriver.EntriesError
			if errors.As(err, &ee) && errors.Is(err, redisdriver.ErrTrimmed) {
				trimmed <- ee
			}
		}))
	var msgs []*herald.Message
	for i := range 5 {
		msgs = append(msgs, message(topic, strconv.Itoa(i), ""))
	}
	if err := d.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	stream := d.StreamKey(topic)
	if err := env.client.XGroupCreate(ctx, stream, group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	// A consumer of another process reads all five and disappears.
	if err := env.client.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: group, Consumer: "gone", Streams: []string{stream, ">"}, Count: 5, Block: -1}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := env.client.XTrimMaxLen(ctx, stream, 2).Err(); err != nil {
		t.Fatal(err)
	}
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	got := fetchUntil(t, sub, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == 2 })
	for _, dl := range got {
		if dl.Message.ID != "3" && dl.Message.ID != "4" || dl.Count != 2 {
			t.Errorf("took over %s with count %d, want 3 and 4 with count 2", dl.Message.ID, dl.Count)
		}
		if err := sub.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for len(ids) < 3 {
		select {
		case ee := <-trimmed:
			ids = append(ids, ee.IDs...)
		case <-time.After(30 * time.Second):
			t.Fatalf("reported %v, want 3 trimmed entries", ids)
		}
	}
	if len(ids) != 3 {
		t.Errorf("reported %v, want 3 trimmed entries", ids)
	}
}

// TestBinaryPayload: Data is bytes, not text; every byte value survives.
func TestBinaryPayload(t *testing.T) {
	d := newEnv(t).driver(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	m := message(topic, "bin", "")
	m.Data = make([]byte, 512)
	for i := range m.Data {
		m.Data[i] = byte(i)
	}
	empty := message(topic, "empty", "")
	empty.Data = nil
	if err := d.Write(ctx, []*herald.Message{m.Clone(), empty}); err != nil {
		t.Fatal(err)
	}
	got := fetchUntil(t, sub, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == 2 })
	if !bytes.Equal(got[0].Message.Data, m.Data) {
		t.Errorf("binary payload changed: %x", got[0].Message.Data)
	}
	if len(got[1].Message.Data) != 0 {
		t.Errorf("empty payload came back as %q", got[1].Message.Data)
	}
	for _, dl := range got {
		if err := sub.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
}
