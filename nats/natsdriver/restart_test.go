package natsdriver_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// natsServer is a private nats-server -js child process with a store
// directory of its own, which a test kills with SIGKILL and restarts on
// the same port and store.
type natsServer struct {
	t    *testing.T
	bin  string
	port int
	dir  string
	cmd  *exec.Cmd
}

// startNATSServer starts one, or skips (fails under CI) when there is no
// nats-server binary (HERALD_NATS_SERVER, default nats-server on PATH or
// /usr/sbin/nats-server).
func startNATSServer(t *testing.T) *natsServer {
	t.Helper()
	bin := os.Getenv("HERALD_NATS_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("nats-server"); err != nil {
			bin = "/usr/sbin/nats-server"
		}
	}
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(t, "no nats-server binary: "+err.Error())
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s := &natsServer{t: t, bin: bin, port: port, dir: t.TempDir()}
	s.start()
	t.Cleanup(s.kill)
	return s
}

func (s *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *natsServer) start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-sd", s.dir)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	drivertest.Eventually(s.t, 30*time.Second, "nats-server to answer", func() bool {
		nc, err := nats.Connect(s.url(), nats.NoReconnect())
		if err != nil {
			return false
		}
		nc.Close()
		return true
	})
}

func (s *natsServer) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// TestServerKilledMidStreamLosesNothing publishes and consumes while the
// server is killed with SIGKILL and restarted on the same store: every
// message whose Write returned nil is delivered, and the driver carries
// on after the restart without being told.
func TestServerKilledMidStreamLosesNothing(t *testing.T) {
	srv := startNATSServer(t)
	js := connect(t, srv.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	e := envOn(t, srv.url(), js)
	d := e.driver(t, natsdriver.WithAckWait(time.Second), natsdriver.WithFetchWait(200*time.Millisecond))
	ctx := drivertest.Context(t, 3*time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}

	const batches, size = 60, 10
	var mu sync.Mutex
	written := map[string]bool{}
	received := map[string]bool{}
	consumed := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	go func() {
		defer close(consumed)
		buf := make([]herald.Delivery, 32)
		for cctx.Err() == nil {
			n, err := sub.Fetch(cctx, buf)
			if err != nil && cctx.Err() == nil {
				t.Logf("fetch (retried): %v", err)
				time.Sleep(50 * time.Millisecond) // what the scheduler's backoff does
			}
			for _, dl := range buf[:n] {
				mu.Lock()
				received[dl.Message.ID] = true
				mu.Unlock()
				_ = sub.Ack(cctx, dl) // a lost ack means a redelivery, not a loss
			}
		}
	}()

	for b := range batches {
		if b == batches/3 {
			srv.kill()
			time.Sleep(300 * time.Millisecond)
			srv.start()
		}
		batch := make([]*herald.Message, size)
		for i := range batch {
			batch[i] = message(topic, fmt.Sprintf("b%03d-%02d", b, i), strconv.Itoa(i%3))
		}
		writeRetrying(t, ctx, d, batch)
		mu.Lock()
		for _, m := range batch {
			written[m.ID] = true
		}
		mu.Unlock()
	}
	drivertest.Eventually(t, time.Minute, "every written message to be received", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id := range written {
			if !received[id] {
				return false
			}
		}
		return true
	})
	mu.Lock()
	t.Logf("%d messages written and received across the restart", len(written))
	mu.Unlock()
	stop()
	<-consumed
	drivertest.CloseSub(t, sub)
}

// writeRetrying writes batch until a Write returns nil, as the outbox
// relay does: the server drops the copies it has by Nats-Msg-Id.
func writeRetrying(t *testing.T, ctx context.Context, d *natsdriver.Driver, batch []*herald.Message) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		copies := make([]*herald.Message, len(batch))
		for i, m := range batch {
			copies[i] = m.Clone()
		}
		err := d.Write(wctx, copies)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("write of %s not done after %d attempts: %v", batch[0].ID, attempt, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
