// Command herald is herald's command-line tool.
//
//	herald relay [flags]    run an outbox relay as a standalone process
//
// "herald relay -h" lists the relay's flags; each can also be set from the
// environment variable named next to it (a flag on the command line wins).
// The relay logs JSON lines (log/slog) to standard error and stops
// gracefully on SIGINT or SIGTERM: the round in flight finishes, bounded by
// -shutdown-timeout. Exit status: 0 after a clean stop, 1 when the relay
// could not start, 2 for bad flags or environment.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `herald is the command-line tool of the herald event bus.

Usage:

	herald relay [flags]    forward the rows of an outbox table to Kafka or Redis

Run "herald relay -h" for the relay's flags and environment variables.
`

// run runs the command line args with the environment getenv and returns
// the exit status. ctx ends on SIGINT or SIGTERM.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "relay":
		return runRelay(ctx, args[1:], getenv, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "herald: unknown command %q\n\n%s", args[0], usage)
	return 2
}
