// Package shutdown catches the stop signals (SIGINT, SIGTERM) of the
// herald command from the first moments of the process. Until a program
// calls signal.Notify, Go lets a SIGTERM kill it (exit 143, no graceful
// stop); the command's dependencies take several milliseconds to
// initialize before main runs, much longer on a loaded machine, and a
// supervisor that stops a just-started relay hits that window. Package
// initialization runs in import path order among packages whose own
// imports are ready, and this package needs only the standard library's
// signal handling, so it is initialized before the database, Kafka and
// telemetry packages are.
package shutdown

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// signals receives SIGINT and SIGTERM from init on; a signal that arrives
// before Context is called waits in it.
var signals = make(chan os.Signal, 1)

func init() { signal.Notify(signals, os.Interrupt, syscall.SIGTERM) }

// Reset gives the stop signals back to Go's default handling, for the
// command's test binary: an interrupted go test then stops at once.
func Reset() { signal.Reset(os.Interrupt, syscall.SIGTERM) }

// Context returns a context that ends at the first SIGINT or SIGTERM,
// including one received before it was called, and the function that
// releases it (the signals keep being caught, so a second one during the
// graceful stop does not kill the process).
func Context() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-signals:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
