package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// A scenario is a family of benchmark cases that share a set-up: the
// in-process brokers today, a Kafka or Redis server or a Postgres outbox
// later. Each scenario lives in its own file and is listed in scenarios.
type scenario struct {
	name  string
	about string
	// cases returns the scenario's rows, in the order the table shows them.
	cases func(cfg config) []benchCase
}

// scenarios lists every scenario -scenario can choose, in the order "all"
// runs them. A new scenario is a new file with a constructor added here;
// there is deliberately no init-time registration.
func scenarios() []scenario {
	return []scenario{
		memoryScenario(),
	}
}

// benchCase is one row of a scenario's table: one system in one
// configuration, run end to end with the same message count every run.
type benchCase struct {
	// id names the case on the command line (-case) and in progress output.
	id string
	// system is the library measured ("herald", "Watermill").
	system string
	// label describes the configuration in the table.
	label string
	// baseline marks the row the other rows' throughput is divided by.
	baseline bool
	// maxMessages, when above 0, caps the message count of this case (a
	// configuration that cannot run the full count without exhausting
	// memory); the table shows the count used.
	maxMessages int
	// setup builds a fresh pipeline for one run: it subscribes, waits until
	// a warm-up message went through, and returns the timed part and the
	// teardown. Nothing it does is measured.
	setup func(ctx context.Context, p runParams) (*pipeline, error)
}

// runParams is what one run of a case needs to know.
type runParams struct {
	cfg   config
	n     int    // messages to publish and handle in the timed part
	topic string // unique per run, so runs never see each other's messages
}

// pipeline is one set-up publisher-and-subscriber pair, ready to be timed.
type pipeline struct {
	// run publishes n messages from cfg.publishers goroutines and returns
	// once the subscriber's handler has seen all of them.
	run func(ctx context.Context) error
	// close tears the pipeline down and reports what went wrong in it
	// (handler errors, duplicates, a wrong count).
	close func(ctx context.Context) error
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
