package redisdriver_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/redis/redisdriver"
)

// redisServer is a redis-server process of the test's own, with an
// append-only file fsynced on every write in a temporary directory, so that
// it can be killed and restarted with its data: the shared test server
// keeps nothing on disk, and other tests use it.
type redisServer struct {
	t    *testing.T
	bin  string
	addr string
	dir  string
	cmd  *exec.Cmd
}

func startRedisServer(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		testenv.Unavailable(t, "redis-server is not installed: "+err.Error())
		return nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	s := &redisServer{t: t, bin: bin, addr: addr, dir: t.TempDir()}
	s.start()
	t.Cleanup(s.kill)
	return s
}

// start runs the server on its address and directory, and waits until it
// answers.
func (s *redisServer) start() {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	s.cmd = exec.Command(s.bin,
		"--bind", "127.0.0.1", "--port", port, "--dir", s.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "",
		"--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log"))
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	c := goredis.NewClient(&goredis.Options{Addr: s.addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.t.Fatalf("redis-server on %s did not answer:\n%s", s.addr, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the server with SIGKILL: no shutdown, no final save.
func (s *redisServer) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *redisServer) restart() {
	s.t.Helper()
	s.kill()
	s.start()
}

// TestServerKilledMidStreamLosesNothing publishes and consumes while the
// Redis server is killed with SIGKILL and started again on its append-only
// file. Every message whose Write succeeded is handled (retried writes may
// add duplicates), the consumer carries on without a restart of its own,
// and what it acknowledged stays acknowledged across a second crash.
func TestServerKilledMidStreamLosesNothing(t *testing.T) {
	server := startRedisServer(t)
	client := goredis.NewClient(&goredis.Options{
		Addr:        server.addr,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, WriteTimeout: time.Second,
		MaxRetries: 1, MinRetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond,
	})
	t.Cleanup(func() { _ = client.Close() })
	var driverErrors atomic.Int32
	d, err := redisdriver.New(client,
		redisdriver.WithBlock(50*time.Millisecond), redisdriver.WithClaimMinIdle(time.Second),
		redisdriver.WithReclaimInterval(100*time.Millisecond),
		redisdriver.WithErrorHandler(func(err error) { driverErrors.Add(1); t.Logf("driver: %v", err) }),
	)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")

	var mu sync.Mutex
	handled := map[int]int{}
	var busErrors atomic.Int32
	newBus := func() *herald.Bus {
		bus, err := herald.NewBus(d, herald.WithLogger(slog.New(slog.DiscardHandler)),
			herald.WithErrorHandler(func(error) { busErrors.Add(1) }))
		if err != nil {
			t.Fatal(err)
		}
		if err := herald.Register[drivertest.Event](bus, topic, herald.WithKey(func(e drivertest.Event) string { return e.Key })); err != nil {
			t.Fatal(err)
		}
		return bus
	}
	bus := newBus()
	err = herald.Subscribe(bus, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		handled[e.Seq]++
		mu.Unlock()
		return nil
	}, herald.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		t.Fatal(err)
	}

	const n = 400
	var failedWrites atomic.Int32
	half, killed := make(chan struct{}), make(chan struct{})
	published := make(chan error, 1)
	go func() {
		const batch = 20
		for first := 0; first < n; first += batch {
			if first == n/2 {
				close(half)
				<-killed
			}
			var events []any
			for i := first; i < first+batch; i++ {
				events = append(events, drivertest.Event{Key: "k" + strconv.Itoa(i%16), Seq: i})
			}
			// A failed write may have stored any part of the batch; write
			// it again until Redis confirms it.
			for bus.Publish(ctx, events...) != nil {
				failedWrites.Add(1)
				if ctx.Err() != nil {
					published <- ctx.Err()
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		published <- nil
	}()
	<-half
	server.kill() // with handlers busy and entries unread: the handler is slow
	close(killed)
	mu.Lock()
	t.Logf("server killed after %d of %d messages were written and %d handled", n/2, n, len(handled))
	mu.Unlock()
	// Message n/2 and the reads meet a dead server; go-redis spends most
	// of a second on its dial attempts before a command fails.
	time.Sleep(time.Second)
	server.start()
	if err := <-published; err != nil {
		t.Fatalf("publishing: %v", err)
	}
	drivertest.Eventually(t, time.Minute, "every written message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == n
	})
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if err := bus.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	t.Logf("around the crash: %d failed writes retried, %d subscriber errors, %d driver errors", failedWrites.Load(), busErrors.Load(), driverErrors.Load())
	st, err := d.GroupStats(ctx, topic, group)
	if err != nil || st.Pending != 0 || st.Lag != 0 {
		t.Fatalf("after shutdown: %+v, %v; want nothing pending or unread", st, err)
	}

	// The acknowledgments were durable: after another crash, a new member
	// of the group gets only what is published afterwards.
	server.restart()
	mu.Lock()
	clear(handled)
	mu.Unlock()
	again := newBus()
	err = herald.Subscribe(again, group, func(ctx context.Context, e drivertest.Event, m *herald.Message) error {
		mu.Lock()
		handled[e.Seq]++
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := again.Publish(ctx, drivertest.Event{Key: "marker", Seq: n}); err != nil {
		t.Fatal(err)
	}
	drivertest.Eventually(t, time.Minute, "the marker", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled[n] > 0
	})
	if err := again.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 1 {
		t.Fatalf("after the second crash the group got %d messages, want only the marker", len(handled))
	}
}

// TestGroupRecreatedWhenStreamVanishes deletes the stream under a running
// subscription, as a restart of a server without persistence would: the
// next Fetch recreates the group and goes on with what was written since,
// from the beginning of the new stream although the group was first
// created at StartLatest.
func TestGroupRecreatedWhenStreamVanishes(t *testing.T) {
	env := newEnv(t)
	d := env.driver(t, redisdriver.WithBlock(20*time.Millisecond), redisdriver.WithStartPosition(herald.StartLatest))
	ctx := context.Background()
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	if err := d.Write(ctx, []*herald.Message{message(topic, "before", "k")}); err != nil {
		t.Fatal(err)
	}
	first := fetchUntil(t, sub, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) == 1 })
	if err := env.client.Del(ctx, d.StreamKey(topic)).Err(); err != nil {
		t.Fatal(err)
	}
	// Its acknowledgment finds nothing to acknowledge, which is no error.
	if err := sub.Ack(ctx, first[0]); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := d.Write(ctx, []*herald.Message{message(topic, fmt.Sprint("after-", i), "k")}); err != nil {
			t.Fatal(err)
		}
	}
	got := fetchUntil(t, sub, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) >= 3 })
	for i, dl := range got {
		if want := fmt.Sprint("after-", i); dl.Message.ID != want || dl.Count != 1 {
			t.Errorf("delivery %d: %s count %d, want %s count 1", i, dl.Message.ID, dl.Count, want)
		}
		if err := sub.Ack(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	waitNothingPending(t, d, topic, group)
}

// TestStartPosition: a new group starts at the beginning of the stream or
// after its last entry, as configured.
func TestStartPosition(t *testing.T) {
	env := newEnv(t)
	ctx := context.Background()
	topic := drivertest.Name(t, "t")
	early, late := env.driver(t), env.driver(t, redisdriver.WithStartPosition(herald.StartLatest))
	if err := early.Write(ctx, []*herald.Message{message(topic, "old", "")}); err != nil {
		t.Fatal(err)
	}
	subs := map[string]herald.Subscription{}
	for name, d := range map[string]*redisdriver.Driver{"earliest": early, "latest": late} {
		sub, err := d.Subscribe(ctx, topic, drivertest.Name(t, name))
		if err != nil {
			t.Fatal(err)
		}
		defer drivertest.CloseSub(t, sub)
		subs[name] = sub
	}
	if err := early.Write(ctx, []*herald.Message{message(topic, "new", "")}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"earliest": "old new", "latest": "new"} {
		sub := subs[name]
		n := len(strings.Fields(want))
		got := fetchUntil(t, sub, 30*time.Second, func(ds []herald.Delivery) bool { return len(ds) >= n })
		var ids []string
		for _, dl := range got {
			ids = append(ids, dl.Message.ID)
			if err := sub.Ack(ctx, dl); err != nil {
				t.Fatal(err)
			}
		}
		if strings.Join(ids, " ") != want {
			t.Errorf("%s group got %v, want %s", name, ids, want)
		}
	}
}
