package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

// flagSet is a flag.FlagSet for one command whose flags fall back to
// environment variables, with the command line conventions of every herald
// command: -h prints the usage on standard output (exit 0); a bad flag,
// value or argument is one short error on standard error (exit 2), never a
// usage dump; flags go before the arguments, and one after them is an
// error that says so.
type flagSet struct {
	*flag.FlagSet
	name     string            // "herald relay"
	synopsis string            // "[flags] (-all | POSITION|ID ...)"
	about    string            // the text between the synopsis and the flags
	args     bool              // arguments may follow the flags
	env      map[string]string // flag name -> variable
}

func newFlagSet(name, synopsis, about string, args bool) *flagSet {
	f := &flagSet{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), name: name, synopsis: synopsis, about: about,
		args: args, env: make(map[string]string)}
	f.SetOutput(io.Discard) // errors are printed once, by the caller
	f.Usage = func() {}
	return f
}

func (f *flagSet) str(p *string, name, env, def, usage string) {
	f.StringVar(p, name, def, usage+f.envNote(name, env))
}

func (f *flagSet) int(p *int, name, env string, def int, usage string) {
	f.IntVar(p, name, def, usage+f.envNote(name, env))
}

func (f *flagSet) bool(p *bool, name, env string, def bool, usage string) {
	f.BoolVar(p, name, def, usage+f.envNote(name, env))
}

func (f *flagSet) duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	f.DurationVar(p, name, def, usage+f.envNote(name, env))
}

// envNote records env as name's variable and returns the note for the
// usage text ("" for a flag without one).
func (f *flagSet) envNote(name, env string) string {
	if env == "" {
		return ""
	}
	f.env[name] = env
	return " ($" + env + ")"
}

// printUsage writes the command's help.
func (f *flagSet) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s %s\n\n%s\nFlags:\n", f.name, f.synopsis, strings.TrimSpace(f.about)+"\n")
	f.SetOutput(w)
	f.PrintDefaults()
	f.SetOutput(io.Discard)
}

// parse parses args, then sets every flag that args left alone from its
// environment variable, and reports every bad value at once. It returns
// flag.ErrHelp for -h.
func (f *flagSet) parse(args []string, getenv func(string) string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	for _, a := range f.Args() {
		if len(a) > 1 && strings.HasPrefix(a, "-") {
			return fmt.Errorf("flag %s after the arguments: flags go first", a)
		}
	}
	if f.NArg() > 0 && !f.args {
		return fmt.Errorf("unexpected arguments %q", f.Args())
	}
	set := make(map[string]bool)
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		env := f.env[fl.Name]
		if set[fl.Name] || env == "" {
			return
		}
		if v := getenv(env); v != "" {
			if err := f.Set(fl.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("$%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// setUp parses args for the command and handles the outcomes every command
// shares. It returns the exit status to end with, or -1 to go on.
func (f *flagSet) setUp(args []string, getenv func(string) string, stdout, stderr io.Writer, validate func() error) int {
	err := f.parse(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		f.printUsage(stdout)
		return 0
	}
	if err == nil && validate != nil {
		err = validate()
	}
	if err != nil {
		f.fail(stderr, err)
		fmt.Fprintf(stderr, "Run '%s -h' for usage.\n", f.name)
		return 2
	}
	return -1
}

// fail prints err on stderr, one line per problem, each naming the command.
func (f *flagSet) fail(stderr io.Writer, err error) {
	for _, line := range strings.Split(strings.TrimSpace(err.Error()), "\n") {
		fmt.Fprintf(stderr, "%s: %s\n", f.name, line)
	}
}

// newLogger returns the JSON logger of a long-running command at level:
// time.Duration values are written as durations with their unit ("1.5s"),
// not as nanoseconds.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: durationText}))
}

func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

// parseLevel parses a -log-level value.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}
