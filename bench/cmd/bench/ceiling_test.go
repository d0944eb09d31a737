package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSleeperCeilings checks that a slow table gets one ceiling row per
// concurrency of its working rows, in its table, with the message share of
// the first row of that concurrency.
func TestSleeperCeilings(t *testing.T) {
	slow := []benchCase{
		{id: "a-c64", concurrency: 64, work: time.Millisecond, table: "slow", scale: 0.5},
		{id: "b-c1", concurrency: 1, work: time.Millisecond, table: "slow", scale: 0.01},
		{id: "c-c64", concurrency: 64, work: time.Millisecond, table: "slow", scale: 0.2},
		{id: "no-work", concurrency: 16, table: "slow"},
	}
	got := sleeperCeilings(slow)
	if len(got) != 2 {
		t.Fatalf("got %d ceiling rows, want 2 (concurrency 64 and 1): %+v", len(got), got)
	}
	for i, want := range []struct {
		id, label   string
		concurrency int
		scale       float64
	}{
		{"ceiling-c64", "64 goroutines each sleeping 1 ms in a loop, no broker", 64, 0.5},
		{"ceiling-c1", "1 goroutine sleeping 1 ms in a loop, no broker", 1, 0.01},
	} {
		c := got[i]
		if c.id != want.id || c.label != want.label || c.concurrency != want.concurrency || c.scale != want.scale ||
			c.table != "slow" || c.system != "bare goroutines" || !c.ceiling || !c.standalone || c.work != time.Millisecond {
			t.Errorf("ceiling row %d = %+v, want %+v in table slow", i, c, want)
		}
	}
}

// TestBareSleeperShare checks the slow table's columns: each row's msgs/s
// over the ceiling row of its own concurrency, "-" without one, and no
// trace of the old ceiling computed from a row's own handler time.
func TestBareSleeperShare(t *testing.T) {
	cfg := config{messages: 1000}
	row := func(c benchCase, msgs float64) summary {
		c.table, c.mode, c.work = "slow", consumeOnly, time.Millisecond
		return summary{c: c, messages: 1000, runs: 1, msgsPerSec: msgs, minRate: msgs, maxRate: msgs,
			cpuPerMsg: 12.5, handlerTime: 1.5e6, nominalShare: msgs / 1000 / float64(c.concurrency)}
	}
	sums := []summary{
		row(benchCase{system: "herald", label: "c64", concurrency: 64}, 32_000),
		row(benchCase{system: "Watermill", label: "c1", concurrency: 1, baseline: true}, 700),
		row(benchCase{system: "herald", label: "c16", concurrency: 16}, 12_000),
		row(sleeperCeilingCase(64, time.Millisecond), 48_000),
		row(sleeperCeilingCase(1, time.Millisecond), 1000),
	}
	var out bytes.Buffer
	writeTable(&out, cfg, sums)
	text := out.String()
	for _, want := range []string{
		"| system | configuration | msgs/s (median) | min - max | CPU µs/msg | vs baseline | handler time (mean) | of nominal ceiling | of bare-sleeper ceiling |",
		"Ceiling rows (bare goroutines): N goroutines that each call time.Sleep(1 ms) in a loop",
		"over concurrency / 1 ms",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("table lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "measured ceiling") {
		t.Errorf("table still shows the measured ceiling:\n%s", text)
	}
	rows := tableRows(text)
	if len(rows) != len(sums) {
		t.Fatalf("got %d rows, want %d:\n%s", len(rows), len(sums), text)
	}
	// system, configuration, msgs/s, min - max, CPU, vs baseline, handler
	// time, of nominal, of bare-sleeper.
	for i, want := range []struct{ cpu, nominal, bare string }{
		{"12.5", "50%", "67%"},
		{"12.5", "70%", "70%"},
		{"12.5", "75%", "-"}, // no ceiling row at concurrency 16
		{"12.5", "75%", "100%"},
		{"12.5", "100%", "100%"},
	} {
		cs := cells(rows[i])
		if len(cs) < 9 || cs[cpuColumn] != want.cpu || cs[6] != "1.50 ms" || cs[7] != want.nominal || cs[8] != want.bare {
			t.Errorf("row %d = %q, want CPU %s, handler 1.50 ms, nominal %s, bare-sleeper %s", i, rows[i], want.cpu, want.nominal, want.bare)
		}
	}
}

// TestCeilingNeedsNoServer runs the ceiling rows of the redis and kafka
// scenarios, each in a child process, with both servers unreachable: the
// rows talk to neither, and the scenarios do not contact them.
func TestCeilingNeedsNoServer(t *testing.T) {
	// Nothing listens on port 1.
	t.Setenv("HERALD_REDIS_ADDR", "127.0.0.1:1")
	for _, tt := range []struct {
		scenario string
		cases    []benchCase
		extra    []string
	}{
		{"redis", ceilingRows(redisCases(config{})), nil},
		{"kafka", ceilingRows(kafkaCases(config{})), []string{"-kafka-brokers", "127.0.0.1:1"}},
	} {
		t.Run(tt.scenario, func(t *testing.T) {
			if len(tt.cases) == 0 {
				t.Fatal("the scenario has no ceiling rows")
			}
			ids := make([]string, len(tt.cases))
			for i, c := range tt.cases {
				ids[i] = c.id
			}
			var out, progress bytes.Buffer
			args := slices.Concat([]string{"-scenario", tt.scenario, "-case", strings.Join(ids, ",")}, small, tt.extra)
			if err := run(args, &out, &progress); err != nil {
				t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
			}
			if strings.Contains(out.String(), "Servers:") {
				t.Errorf("the header names a server the rows did not use:\n%s", out.String())
			}
			rows := tableRows(out.String())
			if len(rows) != len(tt.cases) {
				t.Fatalf("rows = %q, want %d ceiling rows", rows, len(tt.cases))
			}
			for i, r := range rows {
				if cs := cells(r); !strings.HasPrefix(r, "| bare goroutines | "+tt.cases[i].label) || len(cs) < 9 || cs[8] != "100%" {
					t.Errorf("row %q is not ceiling row %s at 100%% of itself", r, tt.cases[i].id)
				}
				checkCPU(t, r)
			}
			if got := strings.Count(progress.String(), "ms handler"); got != len(tt.cases) {
				t.Errorf("progress shows the sleep time of %d runs, want %d:\n%s", got, len(tt.cases), progress.String())
			}
		})
	}
}

// ceilingRows returns the ceiling rows of a scenario's cases.
func ceilingRows(cases []benchCase) []benchCase {
	return slices.DeleteFunc(cases, func(c benchCase) bool { return !c.ceiling })
}
