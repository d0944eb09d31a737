package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// -isolate starts this executable again with -child: in a test that is
	// the test binary, which then performs the run instead of the tests.
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-child=") {
			if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
				os.Stderr.WriteString(err.Error() + "\n")
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("os/signal.signal_recv"),
		// Sarama (Watermill's Kafka client) registers go-metrics meters,
		// and go-metrics ticks them from one process-wide goroutine that it
		// starts with the first meter and never stops, whatever Close is
		// called (rcrowley/go-metrics meterArbiter).
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"))
}

// small keeps the tests quick: a few thousand messages, one run.
var small = []string{"-n", "3000", "-runs", "1", "-publishers", "4", "-batch", "10", "-keys", "50", "-unbounded-max", "1000"}

func TestMemoryScenarioInProcess(t *testing.T) {
	var out, progress bytes.Buffer
	args := slices.Concat([]string{"-isolate=false"}, small)
	if err := run(args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	cases := memoryCases(config{concurrency: 4, batch: 10, keys: 50, unboundedMax: 1000})
	table := out.String()
	rows := tableRows(table)
	if len(rows) != len(cases) {
		t.Fatalf("table has %d rows, want one per case (%d):\n%s", len(rows), len(cases), table)
	}
	for i, c := range cases {
		if !strings.HasPrefix(rows[i], "| "+c.system+" | "+c.label) {
			t.Errorf("row %d = %q, want case %s (%s)", i, rows[i], c.id, c.label)
		}
		if c.baseline && !strings.Contains(rows[i], "| 1.00x |") {
			t.Errorf("baseline row %q does not show 1.00x", rows[i])
		}
		if c.maxMessages > 0 && !strings.Contains(rows[i], "capped at 1,000 messages") {
			t.Errorf("capped row %q does not say how many messages it ran", rows[i])
		}
		checkCPU(t, rows[i])
	}
	checkHeaders(t, table)
	for _, want := range []string{"GOMAXPROCS=", "CPU: ", "3,000 messages per run", "every run in this one process",
		"Command: `cd bench && go run ./cmd/bench -isolate=false -n 3000"} {
		if !strings.Contains(table, want) {
			t.Errorf("output lacks %q:\n%s", want, table)
		}
	}
	if got := strings.Count(progress.String(), "msgs/s"); got != len(cases) {
		t.Errorf("progress shows %d runs, want %d:\n%s", got, len(cases), progress.String())
	}
}

func TestIsolatedRunsInChildProcesses(t *testing.T) {
	var out, progress bytes.Buffer
	args := slices.Concat(small, []string{"-case", "herald-raw,watermill", "-runs", "2"})
	if err := run(args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	rows := tableRows(out.String())
	if len(rows) != 2 || !strings.HasPrefix(rows[0], "| herald | raw messages, 1 per call") || !strings.HasPrefix(rows[1], "| Watermill |") {
		t.Fatalf("rows = %q, want herald-raw then watermill", rows)
	}
	if !strings.Contains(out.String(), "each run in a fresh process") {
		t.Errorf("output does not say runs were isolated:\n%s", out.String())
	}
	// The CPU time travels from the child to the parent with the rest.
	for _, r := range rows {
		checkCPU(t, r)
	}
	if got := strings.Count(progress.String(), "msgs/s"); got != 2*2 {
		t.Errorf("progress shows %d runs, want 4:\n%s", got, progress.String())
	}
}

// cells splits a table row into its cells, without the outer pipes.
func cells(row string) []string {
	return strings.Split(strings.TrimSuffix(strings.TrimPrefix(row, "| "), " |"), " | ")
}

// cpuColumn is the index of "CPU µs/msg" in every table: right after the
// msgs/s columns (system, configuration, msgs/s, min - max).
const cpuColumn = 4

// checkCPU checks that row shows a positive CPU time per message, which
// every run measures (user + system time of the process is never zero
// over thousands of messages).
func checkCPU(t *testing.T, row string) {
	t.Helper()
	cs := cells(row)
	if len(cs) <= cpuColumn {
		t.Errorf("row %q has no CPU column", row)
		return
	}
	v, err := strconv.ParseFloat(cs[cpuColumn], 64)
	if err != nil || v <= 0 {
		t.Errorf("row %q: CPU µs/msg %q, want a positive number", row, cs[cpuColumn])
	}
}

// checkHeaders checks that every table of out has the CPU column right
// after the msgs/s columns.
func checkHeaders(t *testing.T, out string) {
	t.Helper()
	n := 0
	for line := range strings.SplitSeq(out, "\n") {
		if !strings.HasPrefix(line, "| system ") {
			continue
		}
		n++
		if !strings.HasPrefix(line, "| system | configuration | msgs/s (median) | min - max | CPU µs/msg | vs baseline |") {
			t.Errorf("table header %q does not have CPU µs/msg right after the msgs/s columns", line)
		}
	}
	if n == 0 {
		t.Errorf("no table header in:\n%s", out)
	}
}

// tableRows returns the data rows of the Markdown tables in out.
func tableRows(out string) []string {
	var rows []string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(line, "| ") && !strings.HasPrefix(line, "| system ") {
			rows = append(rows, line)
		}
	}
	return rows
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"every bad number at once", []string{"-n", "0", "-runs", "-1", "-publishers", "0"},
			[]string{"-n must be positive", "-runs must be positive", "-publishers must be positive"}},
		{"unknown scenario", []string{"-scenario", "nosuch"}, []string{`unknown scenario "nosuch"`, "memory", "nats", "rabbitmq"}},
		{"unknown case", []string{"-case", "herald-raw,nope,zap"}, []string{"no case nope, zap in scenarios memory"}},
		{"stray argument", []string{"extra"}, []string{"unexpected arguments"}},
		{"bad child spec", []string{"-child", "memory:herald-raw:many:t"}, []string{"message count"}},
		{"bad sqldriver settings", []string{"-sql-backlogs", "100:200,x", "-sql-members", "0", "-sql-idle", "-1s"},
			[]string{"Watermill reads 1 to 100", `"x"`, "-sql-members must be positive", "-sql-idle must not be negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := run(tt.args, &out, &errOut)
			if err == nil {
				t.Fatalf("run(%q) = nil, want an error", tt.args)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestList(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-list"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range memoryCases(config{}) {
		if !strings.Contains(out.String(), "  "+c.id+" ") {
			t.Errorf("-list lacks case %s:\n%s", c.id, out.String())
		}
	}
}

func TestChildSpecRoundTrip(t *testing.T) {
	in := childSpec{scenario: "memory", caseID: "herald-raw", n: 1234, topic: "bench.herald-raw.17.0"}
	got, err := parseChildSpec(in.String())
	if err != nil || got != in {
		t.Fatalf("parseChildSpec(%q) = %+v, %v; want %+v", in.String(), got, err, in)
	}
	for _, bad := range []string{"", "memory:herald-raw:10", "memory:herald-raw:0:t", "memory:herald-raw:x:t"} {
		if _, err := parseChildSpec(bad); err == nil {
			t.Errorf("parseChildSpec(%q) = nil error", bad)
		}
	}
}

func TestWireResultRoundTrip(t *testing.T) {
	in := result{
		messages: 3000, elapsed: 1500 * time.Millisecond, cpu: 2100 * time.Millisecond,
		allocs: 45_000, allocBytes: 3 << 20, peakHeap: 4 << 20, peakSys: 12 << 20, peakGoroutines: 81,
		handlerTime: 1660 * time.Microsecond, latP50: 2 * time.Millisecond, latP99: 7 * time.Millisecond,
		latMax: 31 * time.Millisecond, idleRate: 7.5, violations: 2,
	}
	for _, r := range []result{in, {messages: 10, elapsed: time.Second, cpu: -1}} {
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(toWire(r)); err != nil {
			t.Fatal(err)
		}
		var w wireResult
		if err := json.Unmarshal(buf.Bytes(), &w); err != nil {
			t.Fatal(err)
		}
		if got := w.result(); got != r {
			t.Errorf("round trip of %+v through %s = %+v", r, buf.String(), got)
		}
	}
	if got := in.cpuPerMsg(); got != 700 {
		t.Errorf("2.1 s of CPU over 3,000 messages = %v µs/msg, want 700", got)
	}
}

func TestMedianCPU(t *testing.T) {
	rs := []result{
		{messages: 1000, cpu: 3 * time.Millisecond},
		{messages: 1000, cpu: time.Millisecond},
		{messages: 1000, cpu: 2 * time.Millisecond},
	}
	if got := medianCPUPerMsg(rs); got != 2 {
		t.Errorf("median CPU of 3, 1 and 2 µs/msg = %v", got)
	}
	// A run that could not measure it makes the figure "-", not the median
	// of the others.
	rs[1].cpu = -1
	if got := medianCPUPerMsg(rs); got >= 0 {
		t.Errorf("median CPU with an unmeasured run = %v, want negative", got)
	}
	if got := micros(-1); got != "-" {
		t.Errorf("micros(-1) = %q, want -", got)
	}
}

func TestFormatting(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		want string
	}{{12_345_678, "12.3M"}, {1_234_567, "1.23M"}, {987_654, "988k"}, {45_678, "45.7k"}, {950, "950"}} {
		if got := rate(tt.v); got != tt.want {
			t.Errorf("rate(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
	for _, tt := range []struct {
		n    int
		want string
	}{{0, "0"}, {999, "999"}, {1000, "1,000"}, {200_000, "200,000"}, {-1234567, "-1,234,567"}} {
		if got := thousands(tt.n); got != tt.want {
			t.Errorf("thousands(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	for _, tt := range []struct {
		v    float64
		want string
	}{{268.4, "268"}, {93.34, "93.3"}, {3.152, "3.15"}, {0.648, "0.65"}} {
		if got := micros(tt.v); got != tt.want {
			t.Errorf("micros(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median of 3,1,2 = %v", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median of 4,1,3,2 = %v", got)
	}
	if got := commandLine([]string{"-case", "a,b", "-timeout", "1 m"}); got != `cd bench && go run ./cmd/bench -case a,b -timeout "1 m"` {
		t.Errorf("commandLine = %q", got)
	}
}

func TestCaseMessages(t *testing.T) {
	cfg := config{messages: 200_000}
	for _, tt := range []struct {
		c    benchCase
		want int
	}{
		{benchCase{}, 200_000},
		{benchCase{scale: 0.01}, 2_000},
		{benchCase{scale: 2}, 400_000},
		{benchCase{scale: 1e-9}, 1},
		{benchCase{maxMessages: 50_000}, 50_000},
		{benchCase{scale: 0.1, maxMessages: 50_000}, 20_000},
	} {
		if got := tt.c.messages(cfg); got != tt.want {
			t.Errorf("scale %v, cap %d: %d messages, want %d", tt.c.scale, tt.c.maxMessages, got, tt.want)
		}
	}
}

func TestCeilingShare(t *testing.T) {
	// 32,000 msgs/s with 64 handlers: half of 64 / 1 ms, all of 64 / 2 ms.
	r := result{messages: 64_000, elapsed: 2 * time.Second}
	if got := r.ceilingShare(64, time.Millisecond); got != 0.5 {
		t.Errorf("share of the 1 ms ceiling = %v, want 0.5", got)
	}
	if got := r.ceilingShare(64, 2*time.Millisecond); got != 1 {
		t.Errorf("share of the 2 ms ceiling = %v, want 1", got)
	}
	if got := r.ceilingShare(64, 0); got != 0 {
		t.Errorf("share without work = %v, want 0", got)
	}
}

func TestCheckStored(t *testing.T) {
	holds := func(n int, err error) func(context.Context) (int, error) {
		return func(context.Context) (int, error) { return n, err }
	}
	ctx := context.Background()
	if err := checkStored(ctx, holds(101, nil), 101); err != nil {
		t.Errorf("exact count: %v", err)
	}
	if err := checkStored(ctx, nil, 101); err != nil {
		t.Errorf("no count function: %v", err)
	}
	if err := checkStored(ctx, holds(100, nil), 101); err == nil || !strings.Contains(err.Error(), "holds 100 messages, want 101") {
		t.Errorf("a missing message: %v", err)
	}
	boom := errors.New("boom")
	if err := checkStored(ctx, holds(0, boom), 101); !errors.Is(err, boom) {
		t.Errorf("a failed count: %v, want it wrapped", err)
	}
}

// checkRows checks that out has one table row per case, in order, naming
// its system and label, with the baseline at 1.00x and the reference at
// 100%; it returns the rows for scenario-specific checks.
func checkRows(t *testing.T, out string, cases []benchCase) []string {
	t.Helper()
	rows := tableRows(out)
	if len(rows) != len(cases) {
		t.Fatalf("tables have %d rows, want one per case (%d):\n%s", len(rows), len(cases), out)
	}
	checkHeaders(t, out)
	for i, c := range cases {
		checkCPU(t, rows[i])
		if !strings.HasPrefix(rows[i], "| "+c.system+" | "+c.label) {
			t.Errorf("row %d = %q, want case %s (%s)", i, rows[i], c.id, c.label)
		}
		if c.baseline && !strings.Contains(rows[i], "| 1.00x |") {
			t.Errorf("baseline row %q does not show 1.00x", rows[i])
		}
		if c.reference && !strings.Contains(rows[i], "| 100% |") {
			t.Errorf("reference row %q does not show 100%%", rows[i])
		}
	}
	return rows
}
