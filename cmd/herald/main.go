// Command herald is herald's command-line tool.
//
//	herald relay [flags]                        run an outbox relay as a standalone process
//	herald migrate [flags]                      print or apply the outbox tables' DDL
//	herald quarantine list|replay|discard ...   inspect the rows a relay gave up on, send them again or drop them
//	herald dlq list|show|redrive ...            inspect a dead-letter topic and redrive it
//	herald version                              print the versions this binary was built from
//
// Every command follows the same conventions: "herald <command> -h" prints
// its usage on standard output and exits 0; a bad flag, value or argument
// is one short error line on standard error and exit status 2; flags go
// before arguments (a flag after them is an error); each flag can also be
// set from the environment variable named in its usage, and a flag on the
// command line wins.
//
// The relay logs JSON lines (log/slog, durations with their units) to
// standard error. Before it starts it checks, within -startup-timeout,
// that the database answers, the outbox tables exist (or creates them with
// -migrate) and the target answers: a relay that cannot work exits 1 at
// once with the reason instead of retrying in its logs. Leadership changes
// and failed rounds are "herald relay: event" lines, and with -http are
// counted in /metrics (Prometheus) next to the herald.outbox.* metrics;
// /healthz and /readyz serve the liveness and readiness checks. It stops
// gracefully on SIGINT or SIGTERM, also during the start-up; the signals
// are caught from the first millisecond of the process, before the
// database and Kafka packages initialize. Exit status: 0 after a clean
// stop, 1 when the relay could not start, 2 for bad flags or environment.
//
// "herald relay" forwards to Kafka, Redis, NATS JetStream or RabbitMQ.
// "herald dlq" works on the dead-letter topics of the same brokers or the log
// table of the SQL driver (sql/sqldriver; the memory driver keeps none
// outside its process); "herald quarantine" on an outbox's quarantine
// table; "herald migrate" prints the DDL (-print) or applies it. Exit status: 0 on success, 1 when the database or broker
// failed or an entry was not found, 2 for bad flags, arguments or names.
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

	herald relay [flags]            forward the rows of an outbox table to a broker
	herald migrate [flags]          print (-print) or apply the outbox tables' DDL
	herald quarantine list [flags]  list the rows a relay quarantined
	herald quarantine replay [flags] (-all | ID ...)
	                                move quarantined rows back into the outbox
	herald quarantine discard [flags] ID ...
	                                delete quarantined rows for good
	herald dlq list [flags]         list the entries of a dead-letter topic
	herald dlq show [flags] ID      print one dead-letter entry with its headers and payload
	herald dlq redrive [flags] (-all | ID ...)
	                                write dead-letter entries back to their original topics
	herald version                  print the versions this binary was built from

Run "herald <command> -h" for a command's flags and environment variables.
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
		return runRelay(ctx, args[1:], getenv, stdout, stderr)
	case "migrate":
		return runMigrate(ctx, args[1:], getenv, stdout, stderr)
	case "quarantine":
		return runQuarantine(ctx, args[1:], getenv, stdout, stderr)
	case "dlq":
		return runDLQ(ctx, args[1:], getenv, stdout, stderr)
	case "version":
		return runVersion(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "herald: unknown command %q\nRun 'herald -h' for usage.\n", args[0])
	return 2
}

// subcommand dispatches "herald <group> <sub>" for groups of
// subcommands (dlq, quarantine).
func subcommand(group, groupUsage string, args []string, subs []string, stdout, stderr io.Writer) (string, int) {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "herald %s: missing command (%v)\nRun 'herald %s -h' for usage.\n", group, subs, group)
		return "", 2
	}
	for _, s := range subs {
		if args[0] == s {
			return s, -1
		}
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, groupUsage)
		return "", 0
	}
	fmt.Fprintf(stderr, "herald %s: unknown command %q (want one of %v)\nRun 'herald %s -h' for usage.\n", group, args[0], subs, group)
	return "", 2
}
