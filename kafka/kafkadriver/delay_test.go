package kafkadriver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	kafkago "github.com/segmentio/kafka-go"
)

func TestDelayOptionsAreValidated(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  kafkadriver.Option
	}{
		{"empty ladder", kafkadriver.WithDelayTiers()},
		{"not growing", kafkadriver.WithDelayTiers(5*time.Second, time.Second)},
		{"repeated", kafkadriver.WithDelayTiers(time.Second, time.Second)},
		{"zero hold", kafkadriver.WithDelayTiers(0, time.Second)},
		{"negative hold", kafkadriver.WithDelayTiers(-time.Second)},
		{"sub-millisecond", kafkadriver.WithDelayTiers(1500 * time.Microsecond)},
		{"beyond MaxDelay", kafkadriver.WithDelayTiers(time.Second, herald.MaxDelay+time.Hour)},
		{"too many", kafkadriver.WithDelayTiers(func() (h []time.Duration) {
			for i := range 17 {
				h = append(h, time.Duration(i+1)*time.Second)
			}
			return h
		}()...)},
		{"bad prefix", kafkadriver.WithDelayTopicPrefix("a b/")},
		{"partitions", kafkadriver.WithDelayPartitions(0)},
		{"buffer", kafkadriver.WithDelayBuffer(-1)},
	} {
		// even with delays off: turning them on later must not surface it
		for _, off := range []bool{false, true} {
			opts := []kafkadriver.Option{tc.opt}
			if off {
				opts = append(opts, kafkadriver.WithoutDelays())
			}
			_, err := kafkadriver.New([]string{"127.0.0.1:1"}, opts...)
			if !errors.Is(err, herald.ErrInvalidOption) {
				t.Errorf("%s (delays off %v): New = %v, want an error wrapping herald.ErrInvalidOption", tc.name, off, err)
			}
		}
	}
	d, err := kafkadriver.New([]string{"127.0.0.1:1"}, kafkadriver.WithDelays(),
		kafkadriver.WithDelayTiers(250*time.Millisecond, 1500*time.Millisecond, 2*time.Minute, 6*time.Hour),
		kafkadriver.WithDelayTopicPrefix("app."))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var names []string
	for _, h := range []time.Duration{250 * time.Millisecond, 1500 * time.Millisecond, 2 * time.Minute, 6 * time.Hour} {
		names = append(names, d.DelayTopic(h))
	}
	want := []string{"app.herald.delay.250ms", "app.herald.delay.1500ms", "app.herald.delay.2m", "app.herald.delay.6h"}
	if !slices.Equal(names, want) || d.DelayGroup(time.Hour) != "app.herald.delay.1h" {
		t.Errorf("tier topics %v group %q, want %v and app.herald.delay.1h", names, d.DelayGroup(time.Hour), want)
	}
	if p := d.DelayPrecision(); p != kafkadriver.DefaultFetchMaxWait {
		t.Errorf("DelayPrecision = %v, want the fetch max wait %v", p, kafkadriver.DefaultFetchMaxWait)
	}
}

// With WithoutDelays a delayed message fails the whole Write and nothing
// is written; DelayPrecision says the driver cannot delay.
func TestWithoutDelaysRefuses(t *testing.T) {
	brokers, real := cluster(t)
	if p := newDriver(t, brokers, real).DelayPrecision(); p != 0 {
		t.Errorf("DelayPrecision by default = %v, want 0 (delays are opt-in)", p)
	}
	d := newDriver(t, brokers, real, kafkadriver.WithDelays(), kafkadriver.WithoutDelays())
	ctx := testContext(t)
	if p := d.DelayPrecision(); p != 0 {
		t.Errorf("DelayPrecision = %v, want 0", p)
	}
	drivertest.DelayRefused(t, d)
	res, err := adminClient(t, brokers).Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{d.DelayTopic(time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Topics) == 1 && res.Topics[0].Error == nil {
		t.Errorf("a driver WithoutDelays created %s", d.DelayTopic(time.Second))
	}
}

// A delay longer than several holds hops down the ladder and arrives not
// before it is due, without its tier headers; an undelayed message of the
// same Write, to another topic, arrives at once.
func TestDelayHopsDownTheLadder(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real, kafkadriver.WithDelays(), kafkadriver.WithDelayTiers(200*time.Millisecond, 500*time.Millisecond),
		kafkadriver.WithDelayTopicPrefix(drivertest.Name(t, "p")+"."))
	ctx := testContext(t)
	topic, other, group := drivertest.Name(t, "t"), drivertest.Name(t, "o"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	osub, err := d.Subscribe(ctx, other, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, osub)
	due := time.Now().Add(1700 * time.Millisecond) // 500, 500, 500, 200 ms
	late := &herald.Message{ID: "late", Topic: topic, Key: "k", Data: []byte("x"), Headers: herald.Headers{"a": "b"}}
	late.SetDeliverAt(due)
	now := &herald.Message{ID: "now", Topic: other, Key: "k", Data: []byte("y")}
	if err := d.Write(ctx, []*herald.Message{late, now}); err != nil {
		t.Fatal(err)
	}
	if got := drivertest.FetchExactly(t, osub, 1); got[0].Message.ID != "now" || time.Now().After(due) {
		t.Errorf("undelayed: got %s at %v before due", got[0].Message.ID, time.Until(due))
	} else {
		drivertest.Ack(t, osub, got...)
	}
	got := drivertest.FetchExactly(t, sub, 1)
	received := time.Now()
	m := got[0].Message
	t.Logf("delayed message received %v after it was due", received.Sub(due))
	if received.Before(due) {
		t.Errorf("received %v before it was due", due.Sub(received))
	}
	if m.ID != "late" || m.Headers["a"] != "b" || m.Topic != topic {
		t.Errorf("got %+v, want late on %s with its headers", m, topic)
	}
	for _, h := range []string{kafkadriver.HeaderDelayTopic, kafkadriver.HeaderDelayReady} {
		if _, ok := m.Headers[h]; ok {
			t.Errorf("the delivered message still carries %s", h)
		}
	}
	drivertest.Ack(t, sub, got...)
}

// moverChildEnv makes the test binary run only a delay mover (TestMain),
// connected to the brokers it names, until its stdin closes or it is
// killed.
const moverChildEnv = "HERALD_KAFKA_TEST_MOVER_CHILD"

func runMoverChild() int {
	parts := strings.Split(os.Getenv(moverChildEnv), "|")
	if len(parts) != 3 {
		fmt.Fprintln(os.Stderr, "mover child: want brokers|prefix|real")
		return 2
	}
	d, err := kafkadriver.New(strings.Split(parts[0], ","),
		append(groupOptions(parts[2] == "true"), kafkadriver.WithDelays(), kafkadriver.WithDelayTopicPrefix(parts[1]))...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mover child:", err)
		return 2
	}
	d.StartDelayMover()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = d.Close()
	return 0
}

func startMoverChild(t *testing.T, brokers []string, real bool, prefix string) *exec.Cmd {
	t.Helper()
	return drivertest.StartReadyChild(t, "^$", fmt.Sprintf("%s=%s|%s|%v", moverChildEnv, strings.Join(brokers, ","), prefix, real))
}

// received collects a subscription's deliveries in the background.
type received struct {
	mu    sync.Mutex
	ids   []string
	early []string
}

func (r *received) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ids)
}

func collect(t *testing.T, ctx context.Context, sub herald.Subscription) *received {
	r := &received{}
	done := make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		buf := make([]herald.Delivery, 64)
		for {
			n, err := sub.Fetch(cctx, buf)
			if err != nil {
				if cctx.Err() == nil && !errors.Is(err, herald.ErrClosed) {
					t.Errorf("Fetch: %v", err)
				}
				return
			}
			now := time.Now()
			r.mu.Lock()
			for _, dl := range buf[:n] {
				r.ids = append(r.ids, dl.Message.ID)
				if due, _, _ := dl.Message.DeliverAt(); due.After(now) {
					r.early = append(r.early, dl.Message.ID)
				}
			}
			r.mu.Unlock()
			for _, dl := range buf[:n] {
				if err := sub.Ack(cctx, dl); err != nil && cctx.Err() == nil && !errors.Is(err, herald.ErrClosed) {
					t.Errorf("Ack: %v", err)
				}
			}
		}
	}()
	return r
}

// TestDelayedSurvivesMoverCrash writes delayed messages due over about
// three seconds, lets a mover in a child process move them and kills it
// (SIGKILL) twice while some have arrived and others wait, then lets a
// third mover finish: every message arrives, none before it is due.
// Duplicates are allowed (at-least-once: a record produced again because
// its tier offset was not committed when the mover died) and counted.
func TestDelayedSurvivesMoverCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	brokers, real := cluster(t)
	prefix := drivertest.Name(t, "p") + "."
	delays := kafkadriver.WithDelayTopicPrefix(prefix)
	w := newDriver(t, brokers, real, kafkadriver.WithDelays(), delays) // writes; no subscription, so no mover
	c := newDriver(t, brokers, real, kafkadriver.WithoutDelays())      // consumes; no mover
	ctx := testContext(t)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := c.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	got := collect(t, ctx, sub)

	const n = 600
	start := time.Now().Add(1500 * time.Millisecond)
	var msgs []*herald.Message
	for i := range n {
		m := &herald.Message{ID: fmt.Sprintf("m%04d", i), Topic: topic, Key: fmt.Sprint(i % 11), Data: []byte("x")}
		m.SetDeliverAt(start.Add(time.Duration(i) * 5 * time.Millisecond))
		msgs = append(msgs, m)
	}
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		child := startMoverChild(t, brokers, real, prefix)
		drivertest.Eventually(t, 60*time.Second, "the child moving messages", func() bool {
			return got.count() >= (round+1)*n/4
		})
		if err := child.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = child.Wait()
		arrived := got.count()
		t.Logf("round %d: killed the mover with %d of %d messages arrived", round+1, arrived, n)
		if arrived >= n {
			t.Fatalf("round %d: everything had arrived when the mover was killed; the test proves nothing", round+1)
		}
	}
	w.StartDelayMover()
	drivertest.Eventually(t, 90*time.Second, "every message arriving", func() bool {
		got.mu.Lock()
		defer got.mu.Unlock()
		seen := map[string]bool{}
		for _, id := range got.ids {
			seen[id] = true
		}
		return len(seen) == n
	})
	time.Sleep(300 * time.Millisecond) // late duplicates
	got.mu.Lock()
	defer got.mu.Unlock()
	if len(got.early) > 0 {
		t.Errorf("%d messages delivered before they were due, e.g. %s", len(got.early), got.early[0])
	}
	t.Logf("%d messages, %d deliveries: %d duplicates (at-least-once)", n, len(got.ids), len(got.ids)-n)
}

// TestDelayPrecision measures how late delayed messages arrive with the
// default ladder and fetch wait; it logs p50/p90/p99/max and asserts only
// correctness (none early, none twice, all within the timeout).
func TestDelayPrecision(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement of a few seconds")
	}
	t.Run("Batches", func(t *testing.T) {
		brokers, real := cluster(t)
		drivertest.DelayLateness(t, newDriver(t, brokers, real, kafkadriver.WithDelays()), 300, 3*time.Second)
	})
	t.Run("Trickle", func(t *testing.T) {
		brokers, real := cluster(t)
		drivertest.DelayLatenessTrickle(t, newDriver(t, brokers, real, kafkadriver.WithDelays()), 300, 2*time.Second)
	})
}

// Two movers share the tier partitions; one leaves (Close) while messages
// wait and move, the group rebalances and the other moves the rest:
// every message arrives, none before it is due, and the rebalance does
// not wait for the held records (WithRevokeTimeout would otherwise hold
// it up).
func TestDelayMoversRebalance(t *testing.T) {
	brokers, real := cluster(t)
	prefix := kafkadriver.WithDelayTopicPrefix(drivertest.Name(t, "p") + ".")
	w := newDriver(t, brokers, real, kafkadriver.WithDelays(), prefix, kafkadriver.WithRevokeTimeout(400*time.Millisecond))
	leaving, err := kafkadriver.New(brokers, append(groupOptions(real), kafkadriver.WithDelays(), prefix, kafkadriver.WithRevokeTimeout(400*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = leaving.Close() })
	c := newDriver(t, brokers, real, kafkadriver.WithoutDelays())
	ctx := testContext(t)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := c.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	got := collect(t, ctx, sub)
	w.StartDelayMover()
	leaving.StartDelayMover()

	const n = 300
	start := time.Now().Add(1200 * time.Millisecond)
	var msgs []*herald.Message
	for i := range n {
		m := &herald.Message{ID: fmt.Sprintf("m%04d", i), Topic: topic, Key: fmt.Sprint(i % 7), Data: []byte("x")}
		m.SetDeliverAt(start.Add(time.Duration(i) * 10 * time.Millisecond))
		msgs = append(msgs, m)
	}
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, 60*time.Second, "a third arriving", func() bool { return got.count() >= n/3 })
	closed := time.Now()
	if err := leaving.Close(); err != nil {
		t.Errorf("Close of the leaving mover: %v", err)
	}
	t.Logf("closed one mover in %v with %d of %d arrived", time.Since(closed), got.count(), n)
	drivertest.Eventually(t, 60*time.Second, "every message arriving", func() bool {
		got.mu.Lock()
		defer got.mu.Unlock()
		seen := map[string]bool{}
		for _, id := range got.ids {
			seen[id] = true
		}
		return len(seen) == n
	})
	last := start.Add((n - 1) * 10 * time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	got.mu.Lock()
	defer got.mu.Unlock()
	if len(got.early) > 0 {
		t.Errorf("%d messages delivered before they were due, e.g. %s", len(got.early), got.early[0])
	}
	t.Logf("%d messages, %d deliveries (%d duplicates); the last was due %v ago", n, len(got.ids), len(got.ids)-n, time.Since(last))
}
