package natsdriver_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// crashChildEnv makes the test binary run runCrashChild instead of the
// tests. Its value is "url|streamPrefix|subjectPrefix|topic|group|fetch|ack".
const crashChildEnv = "HERALD_NATS_TEST_CRASH_CHILD"

// crashAckWait is the AckWait of the crash test's group, in the child
// and in the parent.
const crashAckWait = time.Second

// runCrashChild is a consumer that a test kills with SIGKILL in the middle
// of its work: it fetches `fetch` messages, acknowledges the first `ack` of
// them, waits until the server has them (Ack does not wait for the
// confirmation; the group's unacknowledged deliveries drop to fetch-ack),
// prints "ready" and the acknowledged IDs, and waits to be killed. It exits when its standard input closes, so
// that it never outlives a test binary that died.
func runCrashChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	parts := strings.Split(os.Getenv(crashChildEnv), "|")
	if len(parts) != 7 {
		return fail(fmt.Errorf("bad %s", crashChildEnv))
	}
	url, streamPrefix, subjectPrefix, topic, group := parts[0], parts[1], parts[2], parts[3], parts[4]
	fetch, err1 := strconv.Atoi(parts[5])
	ack, err2 := strconv.Atoi(parts[6])
	if err1 != nil || err2 != nil {
		return fail(fmt.Errorf("bad counts in %q", parts))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		return fail(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(err)
	}
	d, err := natsdriver.New(js, natsdriver.WithStreamPrefix(streamPrefix), natsdriver.WithSubjectPrefix(subjectPrefix),
		natsdriver.WithAckWait(crashAckWait))
	if err != nil {
		return fail(err)
	}
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		return fail(err)
	}
	var got []herald.Delivery
	buf := make([]herald.Delivery, 16)
	for len(got) < fetch {
		n, err := sub.Fetch(ctx, buf[:min(len(buf), fetch-len(got))])
		got = append(got, buf[:n]...)
		if err != nil {
			return fail(err)
		}
	}
	var acked []string
	for _, dl := range got[:ack] {
		if err := sub.Ack(ctx, dl); err != nil {
			return fail(err)
		}
		acked = append(acked, dl.Message.ID)
	}
	if err := awaitAckPending(ctx, js, d.StreamName(topic), natsdriver.Token(group), fetch-ack); err != nil {
		return fail(err)
	}
	fmt.Println("ready " + strings.Join(acked, ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// awaitAckPending waits until consumer on stream has want deliveries
// unacknowledged.
func awaitAckPending(ctx context.Context, js jetstream.JetStream, stream, consumer string, want int) error {
	c, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		return err
	}
	for {
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d deliveries unacknowledged, want %d: %w", info.NumAckPending, want, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestCrashedConsumerMessagesComeBack kills a consumer (SIGKILL, so no
// Close runs) after it fetched a batch and acknowledged part of it. The
// server delivers its unacknowledged messages again after the AckWait, to
// the group's next member, counted (NumDelivered and Count 2: no Release
// ran), and none of the acknowledged ones.
func TestCrashedConsumerMessagesComeBack(t *testing.T) {
	env := newEnv(t)
	ctx := drivertest.Context(t, 2*time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	const total, fetched, acked = 60, 50, 20
	var msgs []*herald.Message
	for i := range total {
		msgs = append(msgs, message(topic, fmt.Sprintf("m%02d", i), strconv.Itoa(i%7)))
	}
	if err := env.driver(t).Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	wasAcked := runCrashedChild(t, env, topic, group, fetched, acked)

	rescuer, err := env.driver(t, natsdriver.WithAckWait(crashAckWait)).Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, rescuer)
	seen := map[string]bool{}
	for len(seen) < total-acked {
		for _, dl := range drivertest.FetchExactly(t, rescuer, 1) {
			n, _ := strconv.Atoi(dl.Message.ID[1:])
			want := uint64(1)
			if n < fetched {
				want = 2
			}
			switch {
			case wasAcked[dl.Message.ID]:
				t.Errorf("acknowledged %s delivered again", dl.Message.ID)
			case seen[dl.Message.ID]:
				t.Errorf("%s delivered twice", dl.Message.ID)
			case natsdriver.NumDelivered(dl) != want || dl.Count != int(want):
				t.Errorf("%s has NumDelivered %d and Count %d, want %d: the dead member may have run it", dl.Message.ID, natsdriver.NumDelivered(dl), dl.Count, want)
			}
			seen[dl.Message.ID] = true
			drivertest.Ack(t, rescuer, dl)
		}
	}
	if extra := fetchFor(t, rescuer, 2*crashAckWait); len(extra) > 0 {
		t.Errorf("%d more deliveries after every message was acknowledged (first %s)", len(extra), extra[0].Message.ID)
	}
}

// runCrashedChild runs runCrashChild, kills it with SIGKILL once it is
// ready, and returns the IDs it acknowledged.
func runCrashedChild(t *testing.T, env testEnv, topic, group string, fetched, acked int) map[string]bool {
	t.Helper()
	cmd, ids := drivertest.StartReportingChild(t, "^$", crashChildEnv+"="+strings.Join([]string{env.url, env.streamPrefix, env.subjectPrefix,
		topic, group, strconv.Itoa(fetched), strconv.Itoa(acked)}, "|"))
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	wasAcked := map[string]bool{}
	for _, id := range strings.Split(ids, ",") {
		wasAcked[id] = true
	}
	if len(wasAcked) != acked {
		t.Fatalf("child acknowledged %d messages, want %d", len(wasAcked), acked)
	}
	return wasAcked
}
