package drivertest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// The toolkit: the helpers herald's suites and a driver's own tests share,
// so that each is written once. Name (drivertest.go) gives unique topic and
// group names.

// Eventually polls cond every few milliseconds until it holds and fails t
// when within has passed first. within is a liveness bound, never a
// performance target: make it generous.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Context returns a context that ends after within, or when t ends.
func Context(t testing.TB, within time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	t.Cleanup(cancel)
	return ctx
}

// KeyOrder checks, from inside handlers, the Bus's per-key guarantee:
// the events of one key (Event.Key) run one at a time and in publish
// order (Event.Seq 0, 1, 2, ...), while events of different keys may run
// at once. It reports a violation to t as it happens and counts how many
// handlers ran at the same time. It is safe for concurrent use.
type KeyOrder struct {
	t           testing.TB
	mu          sync.Mutex
	next        map[string]int
	running     map[string]bool
	handled     atomic.Int32
	parallel    atomic.Int32
	maxParallel atomic.Int32
}

// NewKeyOrder returns a checker that reports to t.
func NewKeyOrder(t testing.TB) *KeyOrder {
	return &KeyOrder{t: t, next: make(map[string]int), running: make(map[string]bool)}
}

// Run records that e's handler started, runs work (the handler's body),
// and records that it ended.
func (o *KeyOrder) Run(e Event, work func()) {
	o.mu.Lock()
	if o.running[e.Key] {
		o.t.Errorf("key %s: event %d runs while another event of the key runs", e.Key, e.Seq)
	}
	o.running[e.Key] = true
	if want := o.next[e.Key]; e.Seq != want {
		o.t.Errorf("key %s: event %d, want %d", e.Key, e.Seq, want)
	}
	o.next[e.Key] = e.Seq + 1
	o.mu.Unlock()

	p := o.parallel.Add(1)
	for old := o.maxParallel.Load(); p > old && !o.maxParallel.CompareAndSwap(old, p); old = o.maxParallel.Load() {
	}
	work()
	o.parallel.Add(-1)

	o.mu.Lock()
	o.running[e.Key] = false
	o.mu.Unlock()
	o.handled.Add(1)
}

// Handled returns how many events ran to the end.
func (o *KeyOrder) Handled() int { return int(o.handled.Load()) }

// MaxParallel returns the most handlers that ran at once.
func (o *KeyOrder) MaxParallel() int { return int(o.maxParallel.Load()) }

// LagReporter returns sub as a herald.LagReporter, failing t when it is
// not one.
func LagReporter(t testing.TB, sub herald.Subscription) herald.LagReporter {
	t.Helper()
	lr, ok := sub.(herald.LagReporter)
	if !ok {
		t.Fatalf("%T is not a herald.LagReporter", sub)
	}
	return lr
}

// WaitLag polls lr until its lag is want, within the liveness bound, and
// fails t at once when a reading falls outside [lo, hi] (a lag below what
// is unacknowledged hides a backlog; one above counts acknowledged
// messages). An error for which again reports true (nil: none) means
// "not known yet" and is asked again; any other fails t.
func WaitLag(t testing.TB, within time.Duration, lr herald.LagReporter, want, lo, hi int64, again func(error) bool) {
	t.Helper()
	var last int64
	var lastErr error
	Eventually(t, within, fmt.Sprintf("lag %d", want), func() bool {
		last, lastErr = lr.Lag(context.Background())
		switch {
		case lastErr != nil && again != nil && again(lastErr):
			return false
		case lastErr != nil:
			t.Fatalf("Lag while waiting for %d: %v", want, lastErr)
		case last < lo || last > hi:
			t.Fatalf("lag %d outside [%d, %d] while waiting for %d", last, lo, hi, want)
		}
		return last == want
	})
}

// CheckDriverError checks that err is a *herald.DriverError from driver
// for operation op on topic and group ("" where none), reports to t what
// differs, and returns it (nil when err is not one).
func CheckDriverError(t testing.TB, err error, driver, op, topic, group string) *herald.DriverError {
	t.Helper()
	var de *herald.DriverError
	if !errors.As(err, &de) {
		t.Errorf("error %v (%T) is not a *herald.DriverError", err, err)
		return nil
	}
	if de.Driver != driver || de.Op != op || de.Topic != topic || de.Group != group {
		t.Errorf("DriverError{Driver: %q, Op: %q, Topic: %q, Group: %q}, want {%q, %q, %q, %q}",
			de.Driver, de.Op, de.Topic, de.Group, driver, op, topic, group)
	}
	return de
}

// LogBuffer is a log sink that handlers and background goroutines may
// write to while the test reads it.
type LogBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Records parses what was written as JSON log lines (slog's
// JSONHandler), failing t on a line that is not one.
func (b *LogBuffer) Records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		out = append(out, rec)
	}
	return out
}

// must fails t at once when err is not nil.
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// StartReadyChild runs this test binary again as a child process, for
// crash tests that SIGKILL it: with -test.run=run and env ("NAME=value",
// which the child's TestMain or test looks for) added to the environment,
// its standard error passed through, and its standard input a pipe that
// the cleanup closes. It returns once the child printed the line "ready"
// on its standard output, and fails t if it printed anything else or
// nothing within a minute. When t ends the child is killed and waited for.
func StartReadyChild(t testing.TB, run, env string) *exec.Cmd {
	t.Helper()
	cmd, said := StartReportingChild(t, run, env)
	if said != "" {
		t.Fatalf("child %s said ready %q, want ready alone", run, said)
	}
	return cmd
}

// StartReportingChild is StartReadyChild for a child whose ready line
// carries a report ("ready m1,m4": what it acknowledged before it is
// killed, say): it returns the text after "ready ".
func StartReportingChild(t testing.TB, run, env string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run="+run)
	cmd.Env = append(os.Environ(), env)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line // the cleanup's kill ends a read that never finished
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(time.Minute):
		t.Fatalf("child %s never said ready", run)
	}
	line = strings.TrimSpace(line)
	if line == "ready" {
		return cmd, ""
	}
	said, ok := strings.CutPrefix(line, "ready ")
	if !ok {
		t.Fatalf("child %s said %q, want ready", run, line)
	}
	return cmd, said
}
