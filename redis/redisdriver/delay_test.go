package redisdriver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdriver"
)

func TestDelayPollIntervalIsValidated(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { _ = c.Close() })
	for _, d := range []time.Duration{0, -time.Second, time.Microsecond, 2 * time.Minute} {
		_, err := redisdriver.New(c, redisdriver.WithDelayPollInterval(d))
		var oe *herald.OptionError
		if !errors.As(err, &oe) || !errors.Is(err, herald.ErrInvalidOption) || oe.Option != "redisdriver.WithDelayPollInterval" {
			t.Errorf("WithDelayPollInterval(%v): %v, want a *herald.OptionError", d, err)
		}
	}
}

// The delayed set of a topic shares its stream's hash slot, whatever the
// prefix, or the prefix is refused for delayed messages.
func TestDelayKeySharesTheStreamSlot(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { _ = c.Close() })
	for _, tc := range []struct{ prefix, key, tag string }{
		{"herald:stream:", "herald:stream:delayed:{herald:stream:orders}", "herald:stream:orders"},
		{"{app}:s:", "{app}:s:delayed:orders", "app"},
		{"a{}b:", "", ""},
		{"a}b:", "", ""},
	} {
		d, err := redisdriver.New(c, redisdriver.WithKeyPrefix(tc.prefix))
		if err != nil {
			t.Fatal(err)
		}
		key, err := d.DelayKey("orders")
		if tc.key == "" {
			if !errors.Is(err, redisdriver.ErrNoDelaySlot) {
				t.Errorf("prefix %q: DelayKey = %q, %v; want ErrNoDelaySlot", tc.prefix, key, err)
			}
			continue
		}
		if err != nil || key != tc.key || hashTag(key) != tc.tag || hashTag(key) != hashTag(d.StreamKey("orders")) {
			t.Errorf("prefix %q: DelayKey = %q, %v (tag %q, stream tag %q); want %q with tag %q",
				tc.prefix, key, err, hashTag(key), hashTag(d.StreamKey("orders")), tc.key, tc.tag)
		}
	}
}

// hashTag is what Redis Cluster hashes of key: its hash tag, or the key.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// Movers in several processes (here drivers) move each due entry once.
func TestConcurrentMoversNeitherLoseNorDuplicate(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	const n = 2000
	w := env.driver(t)
	due := time.Now().Add(300 * time.Millisecond)
	var msgs []*herald.Message
	for i := range n {
		m := message(topic, fmt.Sprintf("m%04d", i), fmt.Sprint(i%9))
		m.SetDeliverAt(due.Add(time.Duration(i%50) * time.Millisecond))
		msgs = append(msgs, m)
	}
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	if got, err := w.Waiting(ctx, topic); err != nil || got != n {
		t.Fatalf("Waiting = %d, %v; want %d", got, err, n)
	}
	time.Sleep(time.Until(due.Add(60 * time.Millisecond)))
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for range 6 {
		d := env.driver(t)
		wg.Go(func() {
			for {
				moved, _, err := d.MoveDue(ctx, topic, time.Now())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total += moved
				mu.Unlock()
				if moved == 0 {
					return
				}
			}
		})
	}
	wg.Wait()
	checkStream(t, env, w, topic, n)
	if total != n {
		t.Errorf("movers report %d moved, want %d", total, n)
	}
}

// checkStream checks that topic's stream holds n entries, each ID once,
// and the delayed set none.
func checkStream(t *testing.T, env testEnv, d *redisdriver.Driver, topic string, n int) {
	t.Helper()
	ctx := context.Background()
	entries, err := env.client.XRange(ctx, d.StreamKey(topic), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, e := range entries {
		ids[e.Values["id"].(string)]++
	}
	for id, k := range ids {
		if k > 1 {
			t.Errorf("%s is %d times in the stream", id, k)
		}
	}
	if len(ids) != n || len(entries) != n {
		t.Errorf("stream holds %d entries, %d distinct; want %d", len(entries), len(ids), n)
	}
	if left, err := d.Waiting(ctx, topic); err != nil || left != 0 {
		t.Errorf("delayed set holds %d, %v; want 0", left, err)
	}
}

// An entry the move script cannot read (not written by the driver) is set
// aside and reported; the others move.
func TestUnreadableDelayedEntryIsSetAside(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	d := env.driver(t)
	key, err := d.DelayKey(topic)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.client.ZAdd(ctx, key, goredis.Z{Score: 1, Member: "garbage"}).Err(); err != nil {
		t.Fatal(err)
	}
	m := message(topic, "good", "k")
	m.SetDeliverAt(time.Now().Add(10 * time.Millisecond))
	if err := d.Write(ctx, []*herald.Message{m}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	moved, _, err := d.MoveDue(ctx, topic, time.Now())
	if moved != 1 || err == nil || !strings.Contains(err.Error(), "unreadable") {
		t.Errorf("MoveDue = %d, %v; want 1 moved and an error about the unreadable entry", moved, err)
	}
	if n, _ := env.client.ZCard(ctx, key+":unreadable").Result(); n != 1 {
		t.Errorf("%d entries set aside, want 1", n)
	}
	checkStream(t, env, d, topic, 1)
}

// moverChildEnv makes the test binary run runMoverChild instead of the
// tests. Its value is "addr|prefix|topic|group".
const moverChildEnv = "HERALD_REDIS_TEST_MOVER_CHILD"

// runMoverChild subscribes to a topic (which runs its mover, polling every
// millisecond, plus four more movers calling MoveDue back to back), prints
// "ready" and moves until it is killed or its standard input closes.
func runMoverChild() int {
	parts := strings.Split(os.Getenv(moverChildEnv), "|")
	if len(parts) != 4 {
		fmt.Fprintln(os.Stderr, "mover child: bad", moverChildEnv)
		return 2
	}
	ctx := context.Background()
	c := goredis.NewClient(&goredis.Options{Addr: parts[0]})
	d, err := redisdriver.New(c, redisdriver.WithKeyPrefix(parts[1]), redisdriver.WithDelayPollInterval(time.Millisecond))
	if err == nil {
		_, err = d.Subscribe(ctx, parts[2], parts[3])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mover child:", err)
		return 2
	}
	for range 4 {
		go func() {
			for {
				if _, _, err := d.MoveDue(ctx, parts[2], time.Now()); err != nil {
					fmt.Fprintln(os.Stderr, "mover child:", err)
				}
			}
		}()
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// TestDelayedSurvivesMoverCrash writes delayed messages due over about
// three seconds, lets a child process move them and kills it (SIGKILL)
// twice while they are due, then lets a new subscription move the rest:
// the group receives every message once, none before it was due.
func TestDelayedSurvivesMoverCrash(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	const n = 600
	w := env.driver(t)
	start := time.Now().Add(500 * time.Millisecond)
	var msgs []*herald.Message
	for i := range n {
		m := message(topic, fmt.Sprintf("m%04d", i), fmt.Sprint(i%11))
		m.SetDeliverAt(start.Add(time.Duration(i) * 5 * time.Millisecond))
		msgs = append(msgs, m)
	}
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		child := startMoverChild(t, env, topic, group)
		// Kill it while entries are being moved: some moved, some waiting.
		drivertest.Eventually(t, 30*time.Second, "the child moving entries", func() bool {
			left, err := w.Waiting(ctx, topic)
			return err == nil && left < int64(n-(round+1)*n/4)
		})
		if err := child.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = child.Wait()
		left, _ := w.Waiting(ctx, topic)
		t.Logf("round %d: killed the mover with %d of %d entries waiting", round+1, left, n)
		if left == 0 {
			t.Fatalf("round %d: nothing left waiting when the mover was killed; the test proves nothing", round+1)
		}
	}
	sub, err := env.driver(t, redisdriver.WithBlock(20*time.Millisecond)).Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	got := fetchUntil(t, sub, 60*time.Second, func(ds []herald.Delivery) bool { return len(ds) >= n })
	got = append(got, fetchFor(t, sub, 300*time.Millisecond)...)
	seen := map[string]bool{}
	for _, dl := range got {
		if seen[dl.Message.ID] {
			t.Errorf("%s delivered twice", dl.Message.ID)
		}
		seen[dl.Message.ID] = true
		due, _, _ := dl.Message.DeliverAt()
		if due.After(time.Now()) {
			t.Errorf("%s delivered before it was due", dl.Message.ID)
		}
		if err := sub.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct messages delivered, want %d", len(seen), n)
	}
	checkStream(t, env, w, topic, n)
}

func startMoverChild(t *testing.T, env testEnv, topic, group string) *exec.Cmd {
	t.Helper()
	return drivertest.StartReadyChild(t, "^$", moverChildEnv+"="+strings.Join([]string{env.addr, env.prefix, topic, group}, "|"))
}

// TestDelayPrecision measures how late delayed messages arrive at the
// default poll interval; it logs figures and asserts only correctness.
func TestDelayPrecision(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement of a few seconds")
	}
	t.Run("Batches", func(t *testing.T) { drivertest.DelayLateness(t, newEnv(t).driver(t), 300, 3*time.Second) })
	t.Run("Trickle", func(t *testing.T) { drivertest.DelayLatenessTrickle(t, newEnv(t).driver(t), 300, 200*time.Millisecond) })
}

// Under WithWait the Driver does not delay: it says so (DelayPrecision 0)
// and refuses delayed messages with a typed error, writing nothing.
func TestDelayRefusedWithWait(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t, redisdriver.WithWait(1, 100*time.Millisecond))
	if p := d.DelayPrecision(); p != 0 {
		t.Errorf("DelayPrecision under WithWait = %v, want 0", p)
	}
	topic := drivertest.Name(t, "t")
	m := message(topic, "a", "k")
	m.SetDeliverAt(time.Now().Add(time.Minute))
	err := d.Write(context.Background(), []*herald.Message{message(topic, "b", "k"), m})
	var de *herald.DelayError
	if !errors.Is(err, herald.ErrDelayNotSupported) || !errors.As(err, &de) {
		t.Errorf("delayed Write under WithWait: %v, want a *herald.DelayError wrapping herald.ErrDelayNotSupported", err)
	}
	if n, _ := env.client.Exists(context.Background(), d.StreamKey(topic)).Result(); n != 0 {
		t.Error("the refused batch wrote its undelayed message")
	}
}

// The mover's errors reach the subscription's error reporter (a Bus's
// error handler): here an unreadable member of the delayed set.
func TestMoverReportsToTheSubscription(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	d := env.driver(t, redisdriver.WithDelayPollInterval(5*time.Millisecond))
	key, err := d.DelayKey(topic)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.client.ZAdd(ctx, key, goredis.Z{Score: 1, Member: "garbage"}).Err(); err != nil {
		t.Fatal(err)
	}
	sub, err := d.Subscribe(ctx, topic, drivertest.Name(t, "g"))
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	errs := make(chan error, 10)
	sub.(herald.ErrorReporter).ReportErrorsTo(func(err error) {
		select {
		case errs <- err:
		default:
		}
	})
	// The mover may have run before ReportErrorsTo: put another one in.
	if err := env.client.ZAdd(ctx, key, goredis.Z{Score: 2, Member: "more garbage"}).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		var de *herald.DriverError
		if !errors.As(err, &de) || de.Op != "move delayed" {
			t.Errorf("reported %v, want a DriverError of op move delayed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the mover's error was not reported to the subscription")
	}
}
