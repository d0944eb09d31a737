package redisdriver_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// crashChildEnv makes the test binary run runCrashChild instead of the
// tests. Its value is "addr|prefix|topic|group|fetch|ack".
const crashChildEnv = "HERALD_REDIS_TEST_CRASH_CHILD"

// runCrashChild is a consumer that a test kills with SIGKILL in the middle
// of its work: it fetches `fetch` entries, acknowledges the first `ack` of
// them, waits until Redis has those acknowledgments, prints "ready" and the
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
	addr, prefix, topic, group := parts[0], parts[1], parts[2], parts[3]
	fetch, err1 := strconv.Atoi(parts[4])
	ack, err2 := strconv.Atoi(parts[5])
	if err1 != nil || err2 != nil {
		return fail(fmt.Errorf("bad counts in %q", parts))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	d, err := redisdriver.New(c, redisdriver.WithKeyPrefix(prefix), redisdriver.WithBlock(20*time.Millisecond))
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
	for {
		st, err := d.GroupStats(ctx, topic, group)
		if err != nil {
			return fail(err)
		}
		if st.Pending == int64(fetch-ack) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Println("ready " + strings.Join(acked, ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestCrashedConsumerEntriesAreTakenOver kills a consumer (SIGKILL, so no
// Close runs) after it fetched a batch and acknowledged part of it. Its
// pending entries stay with it, and its consumer stays in the group, as
// long as no member may take them over; then another member takes every
// unacknowledged entry over, with the delivery counted, gets none of the
// acknowledged ones, and removes the dead consumer once it holds nothing.
func TestCrashedConsumerEntriesAreTakenOver(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	const total, fetched, acked = 60, 50, 20
	var msgs []*herald.Message
	for i := range total {
		msgs = append(msgs, message(topic, fmt.Sprintf("m%02d", i), strconv.Itoa(i%7)))
	}
	if err := env.driver(t).Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}

	cmd, ackedIDs := drivertest.StartReportingChild(t, "^$", crashChildEnv+"="+strings.Join([]string{env.addr, env.prefix, topic, group, strconv.Itoa(fetched), strconv.Itoa(acked)}, "|"))
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	wasAcked := map[string]bool{}
	for _, id := range strings.Split(ackedIDs, ",") {
		wasAcked[id] = true
	}
	if len(wasAcked) != acked {
		t.Fatalf("child acknowledged %d messages, want %d", len(wasAcked), acked)
	}
	stream := env.driver(t).StreamKey(topic)
	consumers, err := env.client.XInfoConsumers(ctx, stream, group).Result()
	if err != nil || len(consumers) != 1 || consumers[0].Pending != fetched-acked {
		t.Fatalf("after the crash: consumers %+v, %v; want the dead one with %d pending", consumers, err, fetched-acked)
	}
	dead := consumers[0].Name

	// A member that may not take entries over yet (claim min idle 1 h) gets
	// only what nobody read, and leaves the dead consumer alone although
	// it is silent for longer than the consumer idle time: it holds entries.
	observer, err := env.driver(t,
		redisdriver.WithClaimMinIdle(time.Hour), redisdriver.WithConsumerIdle(50*time.Millisecond),
		redisdriver.WithBlock(10*time.Millisecond), redisdriver.WithReclaimInterval(10*time.Millisecond),
	).Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	fresh := fetchUntil(t, observer, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) >= total-fetched })
	fresh = append(fresh, fetchFor(t, observer, 300*time.Millisecond)...)
	if len(fresh) != total-fetched {
		t.Errorf("observer got %d deliveries, want the %d nobody had read", len(fresh), total-fetched)
	}
	for _, dl := range fresh {
		if n, _ := strconv.Atoi(dl.Message.ID[1:]); n < fetched || dl.Count != 1 {
			t.Errorf("observer got %s with count %d", dl.Message.ID, dl.Count)
		}
		if err := observer.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	drivertest.CloseSub(t, observer)
	consumers, err = env.client.XInfoConsumers(ctx, stream, group).Result()
	if err != nil || len(consumers) != 1 || consumers[0].Name != dead || consumers[0].Pending != fetched-acked {
		t.Fatalf("the dead consumer holding entries was not kept alone: %+v, %v", consumers, err)
	}

	// A member with a short claim min idle takes them over.
	rescuer, err := env.driver(t,
		redisdriver.WithClaimMinIdle(100*time.Millisecond), redisdriver.WithConsumerIdle(50*time.Millisecond),
		redisdriver.WithBlock(10*time.Millisecond), redisdriver.WithReclaimInterval(10*time.Millisecond),
	).Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, rescuer)
	got := fetchUntil(t, rescuer, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) >= fetched-acked })
	seen := map[string]bool{}
	for _, dl := range got {
		n, _ := strconv.Atoi(dl.Message.ID[1:])
		switch {
		case wasAcked[dl.Message.ID]:
			t.Errorf("acknowledged %s delivered again", dl.Message.ID)
		case n >= fetched:
			t.Errorf("%s was never read by the dead consumer", dl.Message.ID)
		case seen[dl.Message.ID]:
			t.Errorf("%s taken over twice", dl.Message.ID)
		case dl.Count != 2:
			t.Errorf("%s taken over with count %d, want 2", dl.Message.ID, dl.Count)
		}
		seen[dl.Message.ID] = true
		if err := rescuer.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	// Once the dead consumer holds nothing, a later scan removes it.
	drivertest.Eventually(t, 30*time.Second, "the dead consumer's removal and every acknowledgment", func() bool {
		fetchFor(t, rescuer, 20*time.Millisecond)
		consumers, err := env.client.XInfoConsumers(ctx, stream, group).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range consumers {
			if c.Name == dead || c.Pending > 0 {
				return false
			}
		}
		return true
	})
}
