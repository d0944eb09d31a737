package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A scenario is a family of benchmark cases that share a broker: the
// in-process brokers, a Redis server, later a Kafka cluster or a Postgres
// outbox. Each scenario lives in its own file and is listed in scenarios.
type scenario struct {
	name  string
	about string
	// cases returns the scenario's rows, in the order the tables show them.
	cases func(cfg config) []benchCase
	// server, when set, contacts the scenario's server once before any run
	// and describes it for the header ("Redis 7.0.15 at 127.0.0.1:6379"),
	// so that an unreachable server fails at once with a clear error.
	server func(ctx context.Context, cfg config) (string, error)
	// local, when set, starts an in-process server in the parent process
	// when none is configured and records its address in cfg, before
	// server is called; the parent passes the address on to its children
	// (see childArgs). stop shuts it down after the last run.
	local func(cfg *config) (stop func(), err error)
}

// scenarios lists every scenario -scenario can choose, in the order "all"
// runs them. A new scenario is a new file with a constructor added here;
// there is deliberately no init-time registration.
func scenarios() []scenario {
	return []scenario{
		memoryScenario(),
		redisScenario(),
		kafkaScenario(),
		natsScenario(),
		rabbitmqScenario(),
		outboxScenario(),
		sqldriverScenario(),
		otelScenario(),
	}
}

// mode is what the clock of a case measures.
type mode int

const (
	// endToEnd times publishers and subscriber running at once; the clock
	// stops when the handler has seen the last message.
	endToEnd mode = iota
	// publishOnly times the publishers alone (nothing consumes); the clock
	// stops when the last publish call returned.
	publishOnly
	// consumeOnly fills the topic with the run's messages before the clock
	// starts, then times the subscriber from its start until the handler
	// has seen the last message.
	consumeOnly
	// paced runs publishers and subscriber at once like endToEnd, but one
	// publisher sends one message per call at a fixed rate
	// (benchCase.rate), and the handler records, per message, the time
	// from the return of its publish call to the handler: the latency
	// columns.
	paced
)

// timed says in a sentence what the clock of a mode measures.
func (m mode) timed() string {
	switch m {
	case publishOnly:
		return "Timed: publishing only, until the last publish call returned; nothing consumes. " +
			"Each run then checks that the topic holds every message."
	case paced:
		return "Timed: one publisher at a fixed rate, one event per call (one transaction), and the subscriber at once, " +
			"until the handler has seen every message. Latency: from the return of the publish call (after COMMIT) " +
			"to the start of the handler, per message; the medians of the runs' p50 and p99, and the largest of any run."
	case consumeOnly:
		return "Timed: the subscriber, from its start (group creation included) until the handler has seen every message " +
			"of a topic filled before the clock started."
	default:
		return "Timed: end to end, publishers and subscriber at once, until the handler has seen every message."
	}
}

// timed says in a sentence what the clock of c's table measures.
func (c benchCase) timed() string {
	if c.mode == paced && c.beforeCommit {
		return "Timed: one publisher at a fixed rate, one event per call (one transaction), and the subscriber at once, " +
			"until the handler has seen every message. Latency: from just before the publishing transaction's COMMIT " +
			"to the start of the handler, per message; the medians of the runs' p50 and p99, and the largest of any run."
	}
	return c.mode.timed()
}

// benchCase is one row of a scenario's table: one system in one
// configuration, run with the same message count every run.
type benchCase struct {
	// id names the case on the command line (-case) and in progress output.
	id string
	// system is the library measured ("herald", "Watermill", "go-redis").
	system string
	// label describes the configuration in the table.
	label string
	// table names the scenario's table the row goes in (empty for a
	// scenario with one table). Rows of one table share a mode, a baseline
	// and a reference, and must be next to each other in cases.
	table string
	// mode is what the clock measures.
	mode mode
	// baseline marks the row of the table the other rows' throughput is
	// divided by (the Watermill equivalent).
	baseline bool
	// reference marks the row of the "vs reference" column: the broker's
	// client used by hand, what a library on it could reach at best.
	reference bool
	// ceiling marks a bare-sleeper row of a slow-handler table (see
	// sleeperCeilingCase): the "of bare-sleeper ceiling" column divides the
	// table's rows of the same concurrency by its msgs/s.
	ceiling bool
	// standalone marks a case that uses none of the scenario's servers: a
	// plan of such cases alone does not contact them.
	standalone bool
	// scale sets the messages per run as a share of -n (0 means 1), so
	// that slow configurations fit in the scenario's time; msgs/s is a
	// rate, so rows with different counts still compare.
	scale float64
	// maxMessages, when above 0, caps the message count of this case (a
	// configuration that cannot run the full count without exhausting
	// memory); the table shows the count used.
	maxMessages int
	// fixed, when above 0, is the message count of this case whatever -n
	// says (a backlog size given by a flag of its own).
	fixed int
	// beforeCommit marks a paced row whose latency starts just before the
	// COMMIT of the publishing transaction rather than when the publish
	// call returned; the rows of one table agree on it.
	beforeCommit bool
	// idle marks a row that measures the statements its subscriber sends
	// per second once idle: the table gets that column.
	idle bool
	// order marks a row that counts per-key order violations: the table
	// gets that column.
	order bool
	// concurrency is how many handlers the row runs at once (0 means 1);
	// with work it gives the ceiling columns.
	concurrency int
	// work is how long the handler sleeps per message (0: it only counts).
	work time.Duration
	// setup builds a fresh pipeline for one run: it connects, subscribes or
	// fills the topic as the mode needs, and returns the timed part and
	// the teardown. Nothing it does is measured.
	setup func(ctx context.Context, p runParams) (*pipeline, error)
}

// referenceCase is a row of a broker's own client used by hand, one
// handler at most: what a library on that client could reach at best. The
// "vs reference" column divides by its msgs/s.
func referenceCase(id, system, label string, m mode, setup func(ctx context.Context, p runParams) (*pipeline, error)) benchCase {
	return benchCase{id: id, system: system, label: label, mode: m, reference: true, concurrency: 1, setup: setup}
}

// messages is how many messages one run of c handles.
func (c benchCase) messages(cfg config) int {
	if c.fixed > 0 {
		return c.fixed
	}
	n := cfg.messages
	if c.scale > 0 {
		n = max(1, int(float64(n)*c.scale))
	}
	if c.maxMessages > 0 {
		n = min(n, c.maxMessages)
	}
	return n
}

// needsServer reports whether any of cases talks to its scenario's server.
func needsServer(cases []benchCase) bool {
	return slices.ContainsFunc(cases, func(c benchCase) bool { return !c.standalone })
}

// in puts c in the scenario's table named table.
func (c benchCase) in(table string) benchCase { c.table = table; return c }

// scaled sets c's share of -n.
func (c benchCase) scaled(share float64) benchCase { c.scale = share; return c }

// fixedAt sets c's message count whatever -n says.
func (c benchCase) fixedAt(n int) benchCase { c.fixed = n; return c }

// asBaseline makes c its table's baseline row.
func (c benchCase) asBaseline() benchCase { c.baseline = true; return c }

// runParams is what one run of a case needs to know.
type runParams struct {
	cfg   config
	n     int    // messages to publish or handle in the timed part
	topic string // unique per run, so runs never see each other's messages
}

// pipeline is one set-up run, ready to be timed.
type pipeline struct {
	// run does the timed part (see mode).
	run func(ctx context.Context) error
	// close tears the pipeline down and reports what went wrong in it
	// (handler errors, duplicates, a wrong count, messages missing from
	// the topic).
	close func(ctx context.Context) error
	// counter is the subscriber's bookkeeping; nil when nothing consumes.
	counter *counter
	// idle, when set, runs after the timed part (untimed) and returns the
	// statements per second per member the subscriber sends while idle.
	idle func(ctx context.Context) (float64, error)
}

// selectScenarios resolves the -scenario flag: a comma-separated list of
// names, or "all".
func selectScenarios(spec string) ([]scenario, error) {
	all := scenarios()
	if spec == "all" {
		return all, nil
	}
	var chosen []scenario
	for name := range strings.SplitSeq(spec, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(all, func(s scenario) bool { return s.name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", name, strings.Join(scenarioNames(all), ", "))
		}
		chosen = append(chosen, all[i])
	}
	return chosen, nil
}

func scenarioNames(ss []scenario) []string {
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = s.name
	}
	return names
}
