package herald_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quiet is a logger for tests that expect failures.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// recordingWriter is a real in-process Writer that keeps every batch it is
// given, and fails while failures > 0.
type recordingWriter struct {
	mu       sync.Mutex
	batches  [][]*herald.Message
	failures int
	block    chan struct{} // if set, Write waits for it
}

func (w *recordingWriter) Write(ctx context.Context, msgs []*herald.Message) error {
	if w.block != nil {
		select {
		case <-w.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failures > 0 {
		w.failures--
		return errWrite
	}
	w.batches = append(w.batches, append([]*herald.Message(nil), msgs...))
	return nil
}

func (w *recordingWriter) all() []*herald.Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*herald.Message
	for _, b := range w.batches {
		out = append(out, b...)
	}
	return out
}

func (w *recordingWriter) sizes() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	for _, b := range w.batches {
		out = append(out, len(b))
	}
	return out
}

type writeError struct{}

func (writeError) Error() string { return "write failed" }

var errWrite error = writeError{}

// eventually and testContext are the toolkit's, with this package's
// bounds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	drivertest.Eventually(t, 20*time.Second, what, cond)
}

func testContext(t *testing.T) context.Context { return drivertest.Context(t, time.Minute) }
