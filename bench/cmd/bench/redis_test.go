package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/redis/redistest"
)

// redisRun runs the redis scenario against the test Redis with small
// counts, on a key prefix of its own, and checks that every run deleted
// its streams.
func redisRun(t *testing.T, extra ...string) (table, progress string) {
	t.Helper()
	addr := testenv.RedisAddr(t)
	client := redistest.Client(t, addr)
	prefix := redistest.Prefix(t, client, "herald:bench:test:")
	t.Setenv("HERALD_REDIS_ADDR", addr)

	var out, prog bytes.Buffer
	args := slices.Concat([]string{"-scenario", "redis", "-redis-prefix", prefix}, small, extra)
	if err := run(args, &out, &prog); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, prog.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	left, err := client.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("the runs left %d keys behind: %q", len(left), left)
	}
	return out.String(), prog.String()
}

func TestRedisScenarioInProcess(t *testing.T) {
	out, progress := redisRun(t, "-isolate=false")
	cases := redisCases(config{messages: 3000, batch: 10, keys: 50})
	rows := checkRows(t, out, cases)
	checkSlowRows(t, rows, cases, "redis", 2)
	for _, want := range []string{
		"#### " + redisTablePublish, "#### " + redisTableConsume, "#### " + redisTableSlow,
		publishOnly.timed(), consumeOnly.timed(), "Servers: Redis ", "github.com/ThreeDotsLabs/watermill-redisstream v",
		"| vs reference |", "| handler time (mean) | of nominal ceiling | of bare-sleeper ceiling |",
		"Ceiling rows (bare goroutines): N goroutines that each call time.Sleep(1 ms) in a loop",
		"| bare goroutines | 64 goroutines each sleeping 1 ms in a loop, no broker",
		"| bare goroutines | 1 goroutine sleeping 1 ms in a loop, no broker",
		"(1,500 messages)", // herald's single-message publish runs half of -n
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(progress, "msgs/s"); got != len(cases) {
		t.Errorf("progress shows %d runs, want %d:\n%s", got, len(cases), progress)
	}
	if got := strings.Count(progress, "ms handler"); got != 4 {
		t.Errorf("progress shows the handler time of %d runs, want 4 (the 1 ms handler rows and their ceilings):\n%s", got, progress)
	}
}

// checkSlowRows checks the rows of a slow-handler table: every working row
// has a handler time and a share of the bare-sleeper ceiling of its
// concurrency (100% for the ceiling rows themselves), and the scenario has
// its ceiling rows.
func checkSlowRows(t *testing.T, rows []string, cases []benchCase, scenario string, wantCeilings int) {
	t.Helper()
	ceilings := 0
	for i, c := range cases {
		if c.work <= 0 {
			continue
		}
		cs := cells(rows[i])
		// system, configuration, msgs/s, min - max, CPU, vs baseline, vs
		// reference where the table has a reference, handler time, of
		// nominal, of bare-sleeper.
		h := 6
		if len(cs) > h && strings.HasSuffix(cs[h], "%") {
			h++
		}
		if len(cs) < h+3 || !strings.HasSuffix(cs[h], " ms") || !strings.HasSuffix(cs[h+1], "%") || !strings.HasSuffix(cs[h+2], "%") {
			t.Errorf("row %q of a handler that works lacks the handler time or a ceiling share", rows[i])
			continue
		}
		if c.ceiling {
			ceilings++
			if cs[h+2] != "100%" {
				t.Errorf("ceiling row %q is not 100%% of itself", rows[i])
			}
		}
	}
	if ceilings != wantCeilings {
		t.Errorf("the %s scenario has %d ceiling rows, want %d", scenario, ceilings, wantCeilings)
	}
}

// TestRedisScenarioIsolated runs one case of each mode, and a ceiling, in
// child processes, which hand the handler and CPU time back to the parent.
func TestRedisScenarioIsolated(t *testing.T) {
	out, _ := redisRun(t, "-case", "herald-publish-batch,herald-slow-c64,watermill-slow,ceiling-c64")
	rows := tableRows(out)
	if len(rows) != 4 {
		t.Fatalf("rows = %q, want 4", rows)
	}
	for _, r := range rows {
		checkCPU(t, r)
	}
	for _, r := range rows[1:] {
		if strings.Contains(r, "| 0.00 ms |") || !strings.Contains(r, " ms | ") {
			t.Errorf("row %q lacks a measured handler time", r)
		}
	}
	// herald's row is divided by the ceiling at its concurrency; Watermill
	// (concurrency 1) has none in this plan.
	if cs := cells(rows[1]); len(cs) < 9 || cs[8] == "-" {
		t.Errorf("row %q lacks its share of the bare-sleeper ceiling", rows[1])
	}
	if cs := cells(rows[2]); len(cs) < 9 || cs[8] != "-" {
		t.Errorf("row %q shows a share of a ceiling row that did not run", rows[2])
	}
}

func TestRedisUnreachable(t *testing.T) {
	// Nothing listens on port 1: the scenario fails before any run, and says
	// where it looked.
	t.Setenv("HERALD_REDIS_ADDR", "127.0.0.1:1")
	var out, progress bytes.Buffer
	err := run(slices.Concat([]string{"-scenario", "redis"}, small), &out, &progress)
	if err == nil || !strings.Contains(err.Error(), "redis at 127.0.0.1:1 (HERALD_REDIS_ADDR)") {
		t.Fatalf("run = %v, want an error naming the address", err)
	}
	if progress.Len() > 0 {
		t.Errorf("runs happened:\n%s", progress.String())
	}
}
