package amqpdriver_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// crashChildEnv makes the test binary run runCrashChild instead of the
// tests. Its value is "url|prefix|topic|group|fetch|ack".
const crashChildEnv = "HERALD_AMQP_TEST_CRASH_CHILD"

// runCrashChild is a consumer that a test kills with SIGKILL in the middle
// of a batch: with a prefetch of `fetch` it fetches `fetch` deliveries,
// acknowledges the first `ack` of them, prints "ready" and the
// acknowledged IDs, and waits to be killed. It exits when its standard
// input closes, so that it never outlives a test binary that died.
func runCrashChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 2
	}
	parts := strings.Split(os.Getenv(crashChildEnv), "|")
	if len(parts) != 6 {
		return fail(fmt.Errorf("bad %s", crashChildEnv))
	}
	u, prefix, topic, group := parts[0], parts[1], parts[2], parts[3]
	fetch, err1 := strconv.Atoi(parts[4])
	ack, err2 := strconv.Atoi(parts[5])
	if err1 != nil || err2 != nil {
		return fail(fmt.Errorf("bad counts in %q", parts))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := amqpdriver.New(u, amqpdriver.WithNamePrefix(prefix), amqpdriver.WithPrefetch(fetch))
	if err != nil {
		return fail(err)
	}
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		return fail(err)
	}
	var got []herald.Delivery
	buf := make([]herald.Delivery, fetch)
	for len(got) < fetch {
		n, err := sub.Fetch(ctx, buf[:fetch-len(got)])
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
	// Acknowledgments are coalesced and sent within 10 ms; the test is of
	// a kill after they reached the socket, so send them now.
	if err := amqpdriver.FlushAcks(sub); err != nil {
		return fail(err)
	}
	fmt.Println("ready " + strings.Join(acked, ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestCrashedConsumerLosesNothingAcknowledged kills a consumer (SIGKILL,
// so no Close runs) after it fetched a batch and acknowledged part of it,
// once the broker has the acknowledgments: the broker puts the rest of
// the batch back in the queue, and the group's next member receives every
// message not acknowledged, and none that was.
func TestCrashedConsumerLosesNothingAcknowledged(t *testing.T) {
	d := newDriver(t)
	u := brokerURL(t)
	ctx := drivertest.Context(t, 2*time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	const total, fetched, acked = 60, 40, 15
	// The group's queue exists before the messages are written.
	drivertest.CloseSub(t, subscribe(t, ctx, d, topic, group))
	write(t, ctx, d, topic, total, "m")

	prefix := strings.TrimSuffix(d.ExchangeName(topic), topic)
	cmd, ackedIDs := drivertest.StartReportingChild(t, "^$", crashChildEnv+"="+strings.Join([]string{u, prefix, topic, group, strconv.Itoa(fetched), strconv.Itoa(acked)}, "|"))
	wasAcked := map[string]bool{}
	for _, id := range strings.Split(ackedIDs, ",") {
		wasAcked[id] = true
	}
	if len(wasAcked) != acked {
		t.Fatalf("child acknowledged %d messages, want %d", len(wasAcked), acked)
	}
	// The broker has the acknowledgments once it has sent the child as
	// many more (its prefetch window reopened): kill it mid-batch then.
	queue := d.QueueName(topic, group)
	waitReady(t, u, queue, total-fetched-acked)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	waitReady(t, u, queue, total-acked)
	sub := subscribe(t, ctx, d, topic, group)
	defer drivertest.CloseSub(t, sub)
	seen := map[string]bool{}
	for _, dl := range drivertest.FetchExactly(t, sub, total-acked) {
		if wasAcked[dl.Message.ID] {
			t.Errorf("acknowledged %s delivered again", dl.Message.ID)
		}
		if seen[dl.Message.ID] {
			t.Errorf("%s delivered twice", dl.Message.ID)
		}
		seen[dl.Message.ID] = true
		drivertest.Ack(t, sub, dl)
	}
	drivertest.WaitLag(t, 30*time.Second, drivertest.LagReporter(t, sub), 0, 0, total-acked, nil)
}
