package natsdriver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// moverChildEnv makes TestDelayedSurvivesMoverKill run a mover instead:
// its value is "url|streamPrefix|subjectPrefix".
const moverChildEnv = "HERALD_NATS_TEST_MOVER_CHILD"

// runMoverChild runs a Driver's delay mover, says "ready" and moves until
// it is killed or its standard input ends.
func runMoverChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "mover child:", err)
		return 2
	}
	parts := strings.Split(os.Getenv(moverChildEnv), "|")
	if len(parts) != 3 {
		return fail(fmt.Errorf("bad %s", moverChildEnv))
	}
	nc, err := nats.Connect(parts[0])
	if err != nil {
		return fail(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(err)
	}
	d, err := natsdriver.New(js, natsdriver.WithStreamPrefix(parts[1]), natsdriver.WithSubjectPrefix(parts[2]),
		natsdriver.WithDelays(), natsdriver.WithAckWait(time.Second),
		natsdriver.WithErrorHandler(func(err error) { fmt.Fprintln(os.Stderr, "mover child:", err) }))
	if err != nil {
		return fail(err)
	}
	d.StartDelayMover()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestDelayedSurvivesMoverKill writes 600 delayed messages due over three
// seconds, lets a mover in a child process forward them and kills it with
// SIGKILL twice while messages come due, then lets a mover of this
// process forward the rest: the group receives every message, none before
// it was due; a forward the kill repeated is dropped by the topic
// stream's duplicate window. What a killed mover held comes back after
// the AckWait, behind later messages of its keys (as for a killed
// consumer; the package documentation says so): the test counts those.
func TestDelayedSurvivesMoverKill(t *testing.T) {
	if os.Getenv(moverChildEnv) != "" {
		os.Exit(runMoverChild())
	}
	e := newEnv(t)
	ctx := drivertest.Context(t, 2*time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	const n, keys = 600, 11
	w := e.driver(t, natsdriver.WithDelays())
	// The group exists first, so that what is forwarded before it
	// subscribes is its to read (a stream keeps it anyway).
	sub, err := w.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	drivertest.CloseSub(t, sub)
	if err := w.Close(); err != nil { // its mover stops: the children move
		t.Fatal(err)
	}
	w = e.driver(t, natsdriver.WithDelays())
	start := time.Now().Add(time.Second)
	dues := map[string]time.Time{}
	var msgs []*herald.Message
	for i := range n {
		m := message(topic, fmt.Sprintf("m%04d", i), fmt.Sprint(i%keys))
		due := start.Add(time.Duration(i) * 5 * time.Millisecond)
		m.SetDeliverAt(due)
		dues[m.ID] = due
		msgs = append(msgs, m)
	}
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	env := moverChildEnv + "=" + strings.Join([]string{e.url, e.streamPrefix, e.subjectPrefix}, "|")
	for round := range 2 {
		child := drivertest.StartReadyChild(t, "^TestDelayedSurvivesMoverKill$", env)
		time.Sleep(time.Until(start.Add(time.Duration(700+round*1200) * time.Millisecond)))
		if err := child.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = child.Wait()
		t.Logf("round %d: killed the mover %v after the first message was due", round+1, time.Since(start).Round(time.Millisecond))
	}
	w.StartDelayMover()

	reader := e.driver(t)
	sub, err = reader.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	seen, dups, early, behind := map[string]bool{}, 0, 0, 0
	last := map[string]string{}
	buf := make([]herald.Delivery, 64)
	for len(seen) < n {
		k, err := sub.Fetch(ctx, buf)
		if err != nil {
			t.Fatalf("after %d of %d: %v", len(seen), n, err)
		}
		now := time.Now()
		for _, dl := range buf[:k] {
			id := dl.Message.ID
			if seen[id] {
				dups++
				continue
			}
			seen[id] = true
			if now.Before(dues[id]) {
				early++
				t.Errorf("%s delivered %v before it was due", id, dues[id].Sub(now))
			}
			if prev := last[dl.Message.Key]; prev > id {
				behind++ // held by a killed mover: back after the AckWait
			} else {
				last[dl.Message.Key] = id
			}
		}
		drivertest.Ack(t, sub, buf[:k]...)
	}
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for {
		k, err := sub.Fetch(fctx, buf)
		dups += k
		drivertest.Ack(t, sub, buf[:k]...)
		if err != nil || fctx.Err() != nil {
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
	}
	t.Logf("%d messages: 0 lost, %d early, %d delivered twice, %d behind a later one of their key", n, early, dups, behind)
	if dups > 0 {
		t.Errorf("%d deliveries beyond the %d messages: the duplicate window let a repeated forward through", dups, n)
	}
}

// Without WithDelays (the default, or WithoutDelays after it) a delayed
// message fails the whole Write and nothing is written; DelayPrecision
// says the driver cannot delay, and neither Write nor Subscribe creates
// the delay stream.
func TestWithoutDelaysRefuses(t *testing.T) {
	e := newEnv(t)
	if p := e.driver(t).DelayPrecision(); p != 0 {
		t.Errorf("DelayPrecision by default = %v, want 0 (delays are opt-in)", p)
	}
	if p := e.driver(t, natsdriver.WithDelays()).DelayPrecision(); p != natsdriver.DefaultFetchWait {
		t.Errorf("DelayPrecision with delays = %v, want the fetch wait %v", p, natsdriver.DefaultFetchWait)
	}
	d := e.driver(t, natsdriver.WithDelays(), natsdriver.WithoutDelays())
	drivertest.DelayRefused(t, d)
	ctx := drivertest.Context(t, time.Minute)
	if _, err := e.js.Stream(ctx, d.DelayStreamName()); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("a driver without delays has the delay stream %s: %v", d.DelayStreamName(), err)
	}
}

// A topic whose stream name is the delay stream's is refused with
// herald.ErrInvalidName once the delay stream exists, and the delay
// stream is not taken for a topic's (nor the other way round).
func TestTopicNamedLikeTheDelayStream(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t, natsdriver.WithDelays())
	ctx := drivertest.Context(t, time.Minute)
	m := message("x", "m", "k")
	m.SetDeliverAt(time.Now().Add(time.Hour))
	if err := d.Write(ctx, []*herald.Message{m}); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*herald.Message{message("DELAYED", "n", "k")}); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Write to topic DELAYED = %v, want herald.ErrInvalidName", err)
	}
	other := e.driver(t, natsdriver.WithDelays())
	if err := other.Write(ctx, []*herald.Message{message("DELAYED", "n", "k")}); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("a second driver's Write to topic DELAYED = %v, want herald.ErrInvalidName", err)
	}

	// The other way round: the topic's stream first.
	f := newEnv(t)
	d = f.driver(t, natsdriver.WithDelays())
	if err := d.Write(ctx, []*herald.Message{message("DELAYED", "n", "k")}); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*herald.Message{m}); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("a delayed Write with topic DELAYED's stream in the delay stream's place = %v, want herald.ErrInvalidName", err)
	}
}

// TestDelayPrecision measures how late delayed messages arrive with the
// default fetch wait; it logs p50/p90/p99/max and asserts only
// correctness (none early, none twice, all within the timeout).
func TestDelayPrecision(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement of a few seconds")
	}
	t.Run("Batches", func(t *testing.T) {
		drivertest.DelayLateness(t, newEnv(t).driver(t, natsdriver.WithDelays()), 300, 3*time.Second)
	})
	t.Run("Trickle", func(t *testing.T) {
		drivertest.DelayLatenessTrickle(t, newEnv(t).driver(t, natsdriver.WithDelays()), 300, 2*time.Second)
	})
}
