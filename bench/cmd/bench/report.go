package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// environment describes the machine and build a run happened on, so that a
// pasted table carries what it takes to judge it.
type environment struct {
	date        time.Time
	goVersion   string
	platform    string
	gomaxprocs  int
	numCPU      int
	cpuModel    string
	loadAverage string
	modules     []string // "path version" of the measured libraries
	servers     []string // the servers the scenarios talk to, as they describe them
}

func readEnvironment() environment {
	env := environment{
		date:        time.Now().UTC(),
		goVersion:   runtime.Version(),
		platform:    runtime.GOOS + "/" + runtime.GOARCH,
		gomaxprocs:  runtime.GOMAXPROCS(0),
		numCPU:      runtime.NumCPU(),
		cpuModel:    cpuModel(),
		loadAverage: loadAverage(),
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, m := range info.Deps {
			switch m.Path {
			case "github.com/heraldbus/herald":
				v := m.Version
				if m.Replace != nil {
					v = "local checkout (replace " + m.Replace.Path + ")"
				}
				env.modules = append(env.modules, m.Path+" "+v)
			case "github.com/ThreeDotsLabs/watermill",
				"github.com/ThreeDotsLabs/watermill-redisstream",
				"github.com/redis/go-redis/v9",
				"github.com/ThreeDotsLabs/watermill-kafka/v3",
				"github.com/IBM/sarama",
				"github.com/segmentio/kafka-go",
				"github.com/twmb/franz-go/pkg/kfake",
				"github.com/ThreeDotsLabs/watermill-sql/v3",
				"github.com/jackc/pgx/v5",
				"github.com/ThreeDotsLabs/watermill-nats/v2",
				"github.com/nats-io/nats.go",
				"github.com/ThreeDotsLabs/watermill-amqp/v3",
				"github.com/rabbitmq/amqp091-go":
				env.modules = append(env.modules, m.Path+" "+m.Version)
			}
		}
	}
	return env
}

// cpuModel reads the first "model name" of /proc/cpuinfo ("unknown"
// elsewhere).
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return "unknown"
}

// loadAverage reads the 1, 5 and 15 minute load averages, a hint of how
// much else was running.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	fields := strings.Fields(string(b))
	if len(fields) < 3 {
		return "unknown"
	}
	return strings.Join(fields[:3], " ")
}

// commandLine is the command that reproduces this run, from the repository
// root.
func commandLine(args []string) string {
	var b strings.Builder
	b.WriteString("cd bench && go run ./cmd/bench")
	for _, a := range args {
		b.WriteByte(' ')
		if strings.ContainsAny(a, " \t\"'$\\*?;&|<>()") {
			a = strconv.Quote(a)
		}
		b.WriteString(a)
	}
	return b.String()
}

func writeHeader(w io.Writer, env environment, cfg config, args []string) {
	fmt.Fprintf(w, "Measured %s, %s %s, GOMAXPROCS=%d (NumCPU %d), CPU: %s, load average at start: %s.\n\n",
		env.date.Format("2006-01-02 15:04 MST"), env.goVersion, env.platform, env.gomaxprocs, env.numCPU, env.cpuModel, env.loadAverage)
	if len(env.modules) > 0 {
		fmt.Fprintf(w, "Modules: %s.\n\n", strings.Join(env.modules, ", "))
	}
	if len(env.servers) > 0 {
		fmt.Fprintf(w, "Servers: %s.\n\n", strings.Join(env.servers, ", "))
	}
	fmt.Fprintf(w, "%d-byte payloads, %d publishing goroutines, one subscriber, "+
		"%s messages per run unless a row says otherwise, median of %d runs (cases interleaved round by round), %s.\n\n",
		cfg.payloadBytes, cfg.publishers, thousands(cfg.messages), cfg.runs, isolation(cfg))
	fmt.Fprintf(w, "Command: `%s`\n\n", commandLine(args))
}

func isolation(cfg config) string {
	if cfg.isolate {
		return "each run in a fresh process"
	}
	return "every run in this one process"
}

// writeTables writes a scenario's tables: one per run of rows that share
// benchCase.table, in the order of sums.
func writeTables(w io.Writer, cfg config, s scenario, sums []summary) {
	fmt.Fprintf(w, "### Scenario %s: %s\n\n", s.name, s.about)
	for start := 0; start < len(sums); {
		end := start + 1
		for end < len(sums) && sums[end].c.table == sums[start].c.table {
			end++
		}
		writeTable(w, cfg, sums[start:end])
		start = end
	}
}

// writeTable writes the rows of one table. The ratio columns divide by the
// table's baseline and reference rows; a table whose rows do work per
// message adds the handler time and the share of two ceilings: the
// nominal one (concurrency / work) and the msgs/s of the table's
// bare-sleeper row of the same concurrency.
func writeTable(w io.Writer, cfg config, sums []summary) {
	cols := columnsOf(sums)
	first := sums[0].c
	if first.table != "" {
		fmt.Fprintf(w, "#### %s\n\n", first.table)
	}
	fmt.Fprintf(w, "%s\n\n", first.timed())
	if cols.idle {
		fmt.Fprintf(w, "Idle statements/s per member: after the timed part and %s of quiet, the statements the subscriber's "+
			"connection pool sent (every Exec and Query, BEGIN, COMMIT, ROLLBACK and Ping, counted by a wrapping "+
			"database/sql connector) over %s, per second and per member; the median of the runs.\n\n",
			idleSettle, cfg.sqlIdle)
	}
	if cols.order {
		fmt.Fprintln(w, "Order violations: messages whose handler started after that of a later message of their key "+
			"(each key is published by one goroutine, in order), summed over the runs.")
		fmt.Fprintln(w)
	}
	if cols.hasWork {
		sleep := fmt.Sprintf("%g ms", float64(cols.work)/float64(time.Millisecond))
		fmt.Fprintf(w, "Ceiling rows (bare goroutines): N goroutines that each call time.Sleep(%s) in a loop, no broker and "+
			"no library, timed like the other rows until the run's count of sleeps has completed: what N handlers sleeping %s "+
			"reach in a Go process on this machine, the overshoot of time.Sleep included. Of bare-sleeper ceiling: msgs/s "+
			"over the msgs/s of the ceiling row of the same concurrency; of nominal ceiling: over concurrency / %s.\n\n",
			sleep, sleep, sleep)
	}
	header, align := cols.header()
	fmt.Fprintln(w, header)
	fmt.Fprintln(w, align)
	for _, sm := range sums {
		fmt.Fprintln(w, cols.row(cfg, sm))
	}
	fmt.Fprintln(w)
}

// tableColumns is what the rows of one table share: the rates the ratio
// columns divide by, and the optional columns the table has.
type tableColumns struct {
	base     float64         // msgs/s of the baseline row
	ref      float64         // msgs/s of the reference row
	hasRef   bool            // a reference row, so a "vs reference" column
	hasWork  bool            // rows that do work per message, so the ceiling columns
	work     time.Duration   // that work
	paced    bool            // a paced table, so the latency columns
	idle     bool            // rows that measure the idle statement rate, so its column
	order    bool            // rows that check per-key order, so the violations column
	ceilings map[int]float64 // concurrency -> msgs/s of its ceiling row
}

func columnsOf(sums []summary) tableColumns {
	cols := tableColumns{paced: sums[0].c.mode == paced, ceilings: make(map[int]float64)}
	for _, sm := range sums {
		if sm.c.baseline {
			cols.base = sm.msgsPerSec
		}
		if sm.c.reference {
			cols.ref, cols.hasRef = sm.msgsPerSec, true
		}
		if sm.c.ceiling {
			cols.ceilings[sm.c.concurrency] = sm.msgsPerSec
		}
		if sm.c.work > 0 {
			cols.hasWork, cols.work = true, sm.c.work
		}
		cols.idle = cols.idle || sm.c.idle
		cols.order = cols.order || sm.c.order
	}
	return cols
}

// header returns the table's header line and its alignment line.
func (t tableColumns) header() (header, align string) {
	header = "| system | configuration | msgs/s (median) | min - max | CPU µs/msg | vs baseline |"
	align = "|---|---|--:|--:|--:|--:|"
	if t.hasRef {
		header += " vs reference |"
		align += "--:|"
	}
	if t.hasWork {
		header += " handler time (mean) | of nominal ceiling | of bare-sleeper ceiling |"
		align += "--:|--:|--:|"
	}
	if t.paced {
		header += " latency p50 | latency p99 | latency max |"
		align += "--:|--:|--:|"
	}
	if t.idle {
		header += " idle statements/s per member |"
		align += "--:|"
	}
	if t.order {
		header += " order violations |"
		align += "--:|"
	}
	header += " allocs/msg | B/msg | peak heap | peak Sys | peak goroutines |"
	align += "--:|--:|--:|--:|--:|"
	return header, align
}

// row formats the row of sm.
func (t tableColumns) row(cfg config, sm summary) string {
	c := sm.c
	row := fmt.Sprintf("| %s | %s | %s | %s - %s | %s | %s |",
		c.system, rowLabel(cfg, sm), rate(sm.msgsPerSec), rate(sm.minRate), rate(sm.maxRate), micros(sm.cpuPerMsg),
		ratio(sm.msgsPerSec, t.base))
	if t.hasRef {
		row += fmt.Sprintf(" %s |", percentOf(sm.msgsPerSec, t.ref))
	}
	if t.hasWork {
		if c.work > 0 {
			row += fmt.Sprintf(" %.2f ms | %.0f%% | %s |", sm.handlerTime/1e6, 100*sm.nominalShare,
				percentOf(sm.msgsPerSec, t.ceilings[c.concurrency]))
		} else {
			row += " - | - | - |"
		}
	}
	if t.paced {
		row += fmt.Sprintf(" %.2f ms | %.2f ms | %.2f ms |", sm.latP50/1e6, sm.latP99/1e6, sm.latMax/1e6)
	}
	if t.idle {
		if c.idle && cfg.sqlIdle > 0 {
			row += fmt.Sprintf(" %.1f |", sm.idleRate)
		} else {
			row += " - |"
		}
	}
	if t.order {
		if c.order {
			row += fmt.Sprintf(" %d |", sm.violations)
		} else {
			row += " - |"
		}
	}
	return row + fmt.Sprintf(" %.1f | %s | %.1f MiB | %.1f MiB | %s |",
		sm.allocsPerMsg, thousands(int(sm.bytesPerMsg+0.5)), sm.peakHeap/(1<<20), sm.peakSys/(1<<20),
		thousands(int(sm.peakGoroutines)))
}

// rowLabel is the configuration column of sm: the case's label, its role
// in the table, and its message count where that is not -n.
func rowLabel(cfg config, sm summary) string {
	c := sm.c
	label := c.label
	switch {
	case c.baseline:
		label += " (baseline)"
	case c.reference:
		label += " (reference)"
	}
	switch {
	case c.maxMessages > 0 && sm.messages == c.maxMessages:
		label += fmt.Sprintf(" (capped at %s messages)", thousands(sm.messages))
	case sm.messages != cfg.messages:
		label += fmt.Sprintf(" (%s messages)", thousands(sm.messages))
	}
	return label
}

// ratio formats v as a multiple of of ("-" without a baseline).
func ratio(v, of float64) string {
	if of <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", v/of)
}

// percentOf formats v as a percentage of of ("-" without a reference).
func percentOf(v, of float64) string {
	if of <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*v/of)
}

// micros formats a CPU time per message in microseconds with three
// significant digits ("-" when it was not measured).
func micros(v float64) string {
	switch {
	case v < 0:
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// rate formats messages per second with three significant digits.
func rate(v float64) string {
	switch {
	case v >= 10e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 100e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 10e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// thousands formats n with comma separators.
func thousands(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
