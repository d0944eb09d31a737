// Command herald is herald's command-line tool.
//
//	herald relay [flags]                 run an outbox relay as a standalone process
//	herald dlq list|show|redrive [flags] inspect a dead-letter topic and redrive it
//
// "herald relay -h" lists the relay's flags; each can also be set from the
// environment variable named next to it (a flag on the command line wins).
// The relay logs JSON lines (log/slog) to standard error. Before it
// starts it checks, within -startup-timeout, that the database answers,
// the outbox tables exist (or creates them with -migrate) and the target
// answers (Redis PING with its AUTH and SELECT, a Kafka metadata request):
// a relay that cannot work exits 1 at once with the reason instead of
// retrying in its logs. It stops gracefully on SIGINT or SIGTERM, also
// during those checks: the round in flight finishes, bounded by
// -shutdown-timeout. The signals are caught from the first millisecond of
// the process, before the database and Kafka packages initialize. Exit
// status: 0 after a clean stop, 1 when the relay could not start, 2 for
// bad flags or environment.
//
// "herald dlq" works on the dead-letter topics of Kafka or Redis (the
// memory driver keeps none outside its process): "list" prints one line per
// entry (position, message ID, original topic, group, attempts, time,
// reason), or JSON lines with -json; "show" prints one entry with its
// headers and payload; "redrive" writes entries (-all, or the positions or
// IDs given) back to their original topics with the same IDs and marks
// them redriven, printing progress to standard error (see package
// github.com/heraldbus/herald/dlq). "herald dlq -h" says more. Exit
// status: 0 on success, 1 when the broker failed or an entry was not found
// or could not be redriven, 2 for bad flags, arguments or topic names.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/heraldbus/herald/cmd/herald/internal/shutdown"
)

func main() {
	ctx, stop := shutdown.Context()
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `herald is the command-line tool of the herald event bus.

Usage:

	herald relay [flags]          forward the rows of an outbox table to Kafka or Redis
	herald dlq list [flags]       list the entries of a dead-letter topic (Kafka or Redis)
	herald dlq show [flags] ID    print one dead-letter entry with its headers and payload
	herald dlq redrive [flags] (-all | ID ...)
	                              write dead-letter entries back to their original topics

Run "herald relay -h" for the relay's flags and environment variables, and
"herald dlq -h" for the dead-letter commands.
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
	case "dlq":
		return runDLQ(ctx, args[1:], getenv, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "herald: unknown command %q\n\n%s", args[0], usage)
	return 2
}
