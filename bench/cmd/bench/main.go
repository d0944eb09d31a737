// Command bench measures herald against Watermill end to end, side by side
// in one process on one machine, and prints a Markdown table.
//
// Run it from the repository root:
//
//	cd bench && go run ./cmd/bench [flags]
//
// Every case publishes -n messages of -payload bytes from -publishers
// goroutines to one subscriber and stops the clock when the handler has
// seen all of them. Each case runs -runs times; the runs of all cases are
// interleaved (every case once, then every case again) so that a burst of
// load from elsewhere on the machine spreads over the cases instead of
// landing on one. The table shows the median of each metric.
//
// Scenarios (-scenario) group the cases by broker; see scenarios() in
// scenario.go. -list prints them with their case ids. The redis scenario
// talks to the Redis at HERALD_REDIS_ADDR (default 127.0.0.1:6379), on
// streams under -redis-prefix that each run deletes when it ends. The kafka
// scenario talks to the cluster at HERALD_KAFKA_BROKERS (or -kafka-brokers)
// or, when neither is set, to an in-process kfake cluster this process
// starts and shares with its child processes, on topics each run deletes.
// The outbox and sqldriver scenarios talk to the PostgreSQL at
// HERALD_POSTGRES_DSN (default
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable), on tables each
// run creates and drops; the sqldriver scenario's SQLite rows use a file
// in a temporary directory of their own. The nats scenario talks to the
// NATS server (with JetStream) at HERALD_NATS_URL (default
// nats://127.0.0.1:4222), the rabbitmq scenario to the RabbitMQ broker at
// HERALD_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/), the
// variables the drivers' tests read; each run creates its streams, or its
// exchanges and queues, under names of its own and deletes them.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"time"
)

// defaultRedisAddr is the Redis of the redis scenario when
// HERALD_REDIS_ADDR is unset.
const defaultRedisAddr = "127.0.0.1:6379"

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	cfg, opts, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if opts.child != "" {
		spec, err := parseChildSpec(opts.child)
		if err != nil {
			return err
		}
		return runChild(ctx, cfg, spec, stdout)
	}

	chosen, err := selectScenarios(opts.scenarios)
	if err != nil {
		return err
	}
	if opts.list {
		listScenarios(stdout, cfg)
		return nil
	}
	// In-process servers start before the cases are built, which capture
	// their addresses.
	stopLocal, err := startLocalServers(chosen, &cfg)
	defer stopLocal()
	if err != nil {
		return err
	}
	plan, err := planCases(chosen, cfg, opts.cases)
	if err != nil {
		return err
	}
	if cfg.isolate && opts.profiling() {
		fmt.Fprintln(stderr, "bench: profiling this process, so every run happens in it (-isolate=false)")
		cfg.isolate = false
	}

	env := readEnvironment()
	if env.servers, err = describeServers(ctx, cfg, plan); err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(opts.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	stopTrace, err := startTrace(opts.trace)
	if err != nil {
		return err
	}
	defer stopTrace()
	results, err := runPlan(ctx, cfg, plan, measurer(cfg, args), stderr)
	if err != nil {
		return err
	}
	if opts.memProfile != "" {
		if err := writeAllocProfile(opts.memProfile); err != nil {
			return err
		}
	}
	writeReport(stdout, env, cfg, args, plan, results)
	return nil
}

// options are the flags that say what to run and what to do besides, as
// opposed to config, the shape of every run.
type options struct {
	scenarios  string // -scenario
	cases      string // -case
	list       bool   // -list
	cpuProfile string // -cpuprofile
	memProfile string // -memprofile
	trace      string // -trace
	child      string // -child
}

func (o options) profiling() bool { return o.cpuProfile != "" || o.memProfile != "" || o.trace != "" }

// parseFlags reads the command line and the environment, and checks the
// result.
func parseFlags(args []string, stderr io.Writer) (config, options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := config{shutdownTimeout: 30 * time.Second}
	var opts options
	fs.IntVar(&cfg.messages, "n", 200_000, "messages per run")
	fs.IntVar(&cfg.runs, "runs", 3, "runs per case; the table shows the median")
	fs.IntVar(&cfg.publishers, "publishers", 16, "publishing goroutines")
	fs.IntVar(&cfg.payloadBytes, "payload", 256, "payload bytes per message")
	fs.IntVar(&cfg.batch, "batch", 100, "messages per publish call in the batched cases")
	fs.IntVar(&cfg.keys, "keys", 1000, "distinct message keys in the keyed cases")
	fs.IntVar(&cfg.concurrency, "concurrency", 4, "herald handler concurrency in the parallel cases")
	fs.IntVar(&cfg.unboundedMax, "unbounded-max", 50_000,
		"message cap of set-ups without backpressure (Watermill GoChannel default config starts a goroutine per message)")
	fs.DurationVar(&cfg.sampleEvery, "sample", 5*time.Millisecond, "memory sampling period")
	fs.DurationVar(&cfg.runTimeout, "timeout", 2*time.Minute, "liveness bound of one run")
	fs.StringVar(&cfg.redisPrefix, "redis-prefix", "herald:bench:",
		"key prefix of every stream the redis scenario creates (on the server at HERALD_REDIS_ADDR, default "+defaultRedisAddr+")")
	kafkaBrokers := fs.String("kafka-brokers", os.Getenv("HERALD_KAFKA_BROKERS"),
		"comma-separated brokers of the kafka scenario (default HERALD_KAFKA_BROKERS; when empty, an in-process kfake cluster)")
	sqlBacklogs := fs.String("sql-backlogs", defaultSQLBacklogs,
		"backlogs of the sqldriver scenario's consume tables, comma-separated rows[:k], k the rows Watermill reads of it (default all)")
	fs.DurationVar(&cfg.sqlIdle, "sql-idle", 5*time.Second, "idle window of the sqldriver scenario's latency rows (0: not measured)")
	fs.IntVar(&cfg.sqlMembers, "sql-members", 4, "members of the sqldriver scenario's scale-out row")
	fs.IntVar(&cfg.sqlSQLiteRows, "sql-sqlite-backlog", 100_000, "backlog of the sqldriver scenario's SQLite consume row")
	fs.StringVar(&opts.scenarios, "scenario", "memory", `scenarios to run, comma-separated, or "all"`)
	fs.StringVar(&opts.cases, "case", "", "case ids to run, comma-separated (default: every case of the scenarios)")
	fs.BoolVar(&opts.list, "list", false, "list scenarios and their case ids, and exit")
	fs.StringVar(&opts.cpuProfile, "cpuprofile", "", "write a CPU profile of the runs to this file (implies -isolate=false)")
	fs.StringVar(&opts.memProfile, "memprofile", "", "write an allocation profile to this file at the end (implies -isolate=false)")
	fs.StringVar(&opts.trace, "trace", "", "write an execution trace of the runs to this file, for go tool trace (implies -isolate=false)")
	fs.BoolVar(&cfg.isolate, "isolate", true, "run every measured run in a fresh child process")
	fs.StringVar(&cfg.runToken, "run-token", "",
		"names this invocation's topics, streams and queues, bench.<case>.<token>.<round> (default: the time and random bytes)")
	fs.StringVar(&opts.child, "child", "", "internal: perform one run, scenario:case:messages:topic, and print its result (what -isolate starts)")
	if err := fs.Parse(args); err != nil {
		return config{}, options{}, err
	}
	if fs.NArg() > 0 {
		return config{}, options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.redisAddr = envOr("HERALD_REDIS_ADDR", defaultRedisAddr)
	cfg.postgresDSN = envOr("HERALD_POSTGRES_DSN", defaultPostgresDSN)
	cfg.natsURL = envOr("HERALD_NATS_URL", defaultNATSURL)
	cfg.amqpURL = envOr("HERALD_AMQP_URL", defaultAMQPURL)
	if *kafkaBrokers != "" {
		cfg.kafkaBrokers = strings.Split(*kafkaBrokers, ",")
	}
	backlogs, backlogErr := parseSQLBacklogs(*sqlBacklogs)
	cfg.sqlBacklogs = backlogs
	if err := errors.Join(backlogErr, cfg.validate()); err != nil {
		return config{}, options{}, err
	}
	return cfg, opts, nil
}

// envOr is the environment variable key, or def when it is unset or empty.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// listScenarios prints every scenario with its cases (-list).
func listScenarios(w io.Writer, cfg config) {
	for _, s := range scenarios() {
		fmt.Fprintf(w, "%s: %s\n", s.name, s.about)
		for _, c := range s.cases(cfg) {
			table := ""
			if c.table != "" {
				table = c.table + ": "
			}
			fmt.Fprintf(w, "  %-24s %s%s, %s (%s messages)\n", c.id, table, c.system, c.label, thousands(c.messages(cfg)))
		}
	}
}

// startLocalServers starts the in-process servers of the chosen scenarios
// that have one (see scenario.local). stop shuts down those that started,
// the last first; call it even when err is not nil.
func startLocalServers(chosen []scenario, cfg *config) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	for _, sc := range chosen {
		if sc.local == nil {
			continue
		}
		stopOne, err := sc.local(cfg)
		if err != nil {
			return stop, fmt.Errorf("scenario %s: %w", sc.name, err)
		}
		stops = append(stops, stopOne)
	}
	return stop, nil
}

// describeServers contacts the server of every scenario of plan that
// needs one and returns their descriptions for the header. Cases that use
// no server (the ceiling rows) alone need not reach it: they run where it
// is down or not installed.
func describeServers(ctx context.Context, cfg config, plan []scenarioPlan) ([]string, error) {
	var servers []string
	for _, p := range plan {
		if p.scenario.server == nil || !needsServer(p.cases) {
			continue
		}
		desc, err := p.scenario.server(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %w", p.scenario.name, err)
		}
		servers = append(servers, desc)
	}
	return servers, nil
}

// startCPUProfile starts a CPU profile into path (none when path is
// empty); stop ends it and closes the file.
func startCPUProfile(path string) (stop func(), err error) {
	return startWriting(path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startTrace writes an execution trace to path until stop; no path, no
// trace.
func startTrace(path string) (stop func(), err error) {
	return startWriting(path, trace.Start, trace.Stop)
}

// startWriting creates path and starts writing a profile or trace to it
// with start, until the returned stop calls end and closes the file; no
// path, nothing.
func startWriting(path string, start func(io.Writer) error, end func()) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		end()
		f.Close()
	}, nil
}

// measurer performs each run in a child process started with args (plus
// the address of a server this process started) when cfg.isolate, else in
// this process.
func measurer(cfg config, args []string) measureFunc {
	if !cfg.isolate {
		return func(ctx context.Context, _ scenario, c benchCase, n int, topic string) (result, error) {
			return measure(ctx, cfg, c, n, topic)
		}
	}
	childArgs := slices.Clone(args)
	if cfg.kafkaLocal {
		childArgs = append(childArgs, "-kafka-brokers="+strings.Join(cfg.kafkaBrokers, ","))
	}
	return func(ctx context.Context, s scenario, c benchCase, n int, topic string) (result, error) {
		return measureInChild(ctx, childArgs, childSpec{scenario: s.name, caseID: c.id, n: n, topic: topic})
	}
}

// writeReport writes the header and the tables of every scenario of plan,
// each row the summary of its case's results.
func writeReport(w io.Writer, env environment, cfg config, args []string, plan []scenarioPlan, results [][][]result) {
	writeHeader(w, env, cfg, args)
	for i, p := range plan {
		sums := make([]summary, len(p.cases))
		for j, c := range p.cases {
			sums[j] = summarize(c, results[i][j])
		}
		writeTables(w, cfg, p.scenario, sums)
	}
}

// validate reports every bad setting at once.
func (c config) validate() error {
	var errs []error
	positive := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("-%s must be positive, got %d", name, v))
		}
	}
	positive("n", c.messages)
	positive("runs", c.runs)
	positive("publishers", c.publishers)
	positive("payload", c.payloadBytes)
	positive("batch", c.batch)
	positive("keys", c.keys)
	positive("concurrency", c.concurrency)
	positive("unbounded-max", c.unboundedMax)
	if c.sampleEvery <= 0 {
		errs = append(errs, fmt.Errorf("-sample must be positive, got %s", c.sampleEvery))
	}
	positive("sql-members", c.sqlMembers)
	positive("sql-sqlite-backlog", c.sqlSQLiteRows)
	if c.sqlIdle < 0 {
		errs = append(errs, fmt.Errorf("-sql-idle must not be negative, got %s", c.sqlIdle))
	}
	if c.runTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-timeout must be positive, got %s", c.runTimeout))
	}
	if strings.Trim(c.runToken, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
		errs = append(errs, fmt.Errorf("-run-token %q: want letters, digits and - only (it goes into topic, stream and queue names)", c.runToken))
	}
	if strings.TrimSpace(c.redisPrefix) == "" {
		errs = append(errs, errors.New("-redis-prefix must not be empty: the benchmark's streams would mix with other keys"))
	}
	return errors.Join(errs...)
}

// scenarioPlan is the cases to run of one scenario.
type scenarioPlan struct {
	scenario scenario
	cases    []benchCase
}

// planCases picks the cases of the chosen scenarios that -case names (all
// of them when it is empty); a name that matches no case is an error.
func planCases(chosen []scenario, cfg config, caseIDs string) ([]scenarioPlan, error) {
	all := caseIDs == ""
	want := make(map[string]bool)
	if !all {
		for id := range strings.SplitSeq(caseIDs, ",") {
			want[strings.TrimSpace(id)] = false
		}
	}
	var plan []scenarioPlan
	for _, s := range chosen {
		var cases []benchCase
		for _, c := range s.cases(cfg) {
			if _, ok := want[c.id]; ok || all {
				want[c.id] = true
				cases = append(cases, c)
			}
		}
		if len(cases) > 0 {
			plan = append(plan, scenarioPlan{scenario: s, cases: cases})
		}
	}
	var unknown []string
	for id, matched := range want {
		if !matched {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, fmt.Errorf("no case %s in scenarios %s (see -list)",
			strings.Join(unknown, ", "), strings.Join(scenarioNames(chosen), ", "))
	}
	if len(plan) == 0 {
		return nil, errors.New("nothing to run")
	}
	return plan, nil
}

// measureFunc performs one measured run of case c of scenario s.
type measureFunc func(ctx context.Context, s scenario, c benchCase, n int, topic string) (result, error)

// runPlan runs every case cfg.runs times, round by round, and returns the
// results by scenario and case. Progress goes to progress.
func runPlan(ctx context.Context, cfg config, plan []scenarioPlan, measure measureFunc, progress io.Writer) ([][][]result, error) {
	results := make([][][]result, len(plan))
	for i, p := range plan {
		results[i] = make([][]result, len(p.cases))
	}
	// Topics must be unique across invocations too: a Redis or Kafka
	// server is shared with whoever else runs this at the same time.
	token := cfg.runToken
	if token == "" {
		var err error
		if token, err = runToken(); err != nil {
			return nil, err
		}
	}
	for round := range cfg.runs {
		for i, p := range plan {
			for j, c := range p.cases {
				n := c.messages(cfg)
				topic := fmt.Sprintf("bench.%s.%s.%d", c.id, token, round)
				r, err := measure(ctx, p.scenario, c, n, topic)
				if err != nil {
					return nil, fmt.Errorf("scenario %s, run %d: %w", p.scenario.name, round+1, err)
				}
				results[i][j] = append(results[i][j], r)
				handler := ""
				if r.handlerTime > 0 {
					handler = fmt.Sprintf(" %.2f ms handler", float64(r.handlerTime)/1e6)
				}
				fmt.Fprintf(progress, "run %d/%d %-9s %-24s %7s msgs/s %6s CPU µs/msg %5.1f allocs/msg %6.1f MiB peak heap %6.1f MiB peak Sys %6d goroutines%s\n",
					round+1, cfg.runs, p.scenario.name, c.id, rate(r.msgsPerSec()), micros(r.cpuPerMsg()), r.allocsPerMsg(),
					float64(r.peakHeap)/(1<<20), float64(r.peakSys)/(1<<20), r.peakGoroutines, handler)
			}
		}
	}
	return results, nil
}

// runToken names one invocation: the time in seconds and 4 random bytes.
func runToken() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random run token: %w", err)
	}
	return fmt.Sprintf("%d-%x", time.Now().Unix(), b), nil
}

func writeAllocProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
