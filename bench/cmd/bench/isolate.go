package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Each run happens in a fresh child process by default (-isolate). A run
// leaves traces in the process that would skew the next one: the Go runtime
// never frees a goroutine's descriptor, so the 50,000 goroutines of an
// unbounded GoChannel run keep about 15 MiB of heap alive for good, which
// raises the GC goal (and so the peak heap and the GC cost) of every case
// that runs after it. A child starts from the same clean heap every time.

// childSpec names the one run a child process performs. It travels in the
// hidden -child flag as scenario:case:messages:topic.
type childSpec struct {
	scenario string
	caseID   string
	n        int
	topic    string
}

func (s childSpec) String() string {
	return fmt.Sprintf("%s:%s:%d:%s", s.scenario, s.caseID, s.n, s.topic)
}

func parseChildSpec(v string) (childSpec, error) {
	parts := strings.SplitN(v, ":", 4)
	if len(parts) != 4 {
		return childSpec{}, fmt.Errorf("bad -child %q: want scenario:case:messages:topic", v)
	}
	n, err := strconv.Atoi(parts[2])
	if err != nil || n <= 0 {
		return childSpec{}, fmt.Errorf("bad -child %q: message count %q", v, parts[2])
	}
	return childSpec{scenario: parts[0], caseID: parts[1], n: n, topic: parts[3]}, nil
}

// wireResult is a result as a child prints it for its parent. CPUNS is
// always present: -1 (not measured) must not read as 0.
type wireResult struct {
	Messages       int     `json:"messages"`
	ElapsedNS      int64   `json:"elapsed_ns"`
	CPUNS          int64   `json:"cpu_ns"`
	Allocs         uint64  `json:"allocs"`
	AllocBytes     uint64  `json:"alloc_bytes"`
	PeakHeap       uint64  `json:"peak_heap"`
	PeakSys        uint64  `json:"peak_sys"`
	PeakGoroutines uint64  `json:"peak_goroutines"`
	HandlerNS      int64   `json:"handler_ns,omitempty"`
	LatP50NS       int64   `json:"lat_p50_ns,omitempty"`
	LatP99NS       int64   `json:"lat_p99_ns,omitempty"`
	LatMaxNS       int64   `json:"lat_max_ns,omitempty"`
	IdleRate       float64 `json:"idle_per_s,omitempty"`
	Violations     int64   `json:"violations,omitempty"`
}

// toWire encodes r for the parent.
func toWire(r result) wireResult {
	return wireResult{
		Messages:       r.messages,
		ElapsedNS:      int64(r.elapsed),
		CPUNS:          int64(r.cpu),
		Allocs:         r.allocs,
		AllocBytes:     r.allocBytes,
		PeakHeap:       r.peakHeap,
		PeakSys:        r.peakSys,
		PeakGoroutines: r.peakGoroutines,
		HandlerNS:      int64(r.handlerTime),
		LatP50NS:       int64(r.latP50),
		LatP99NS:       int64(r.latP99),
		LatMaxNS:       int64(r.latMax),
		IdleRate:       r.idleRate,
		Violations:     r.violations,
	}
}

// result decodes what a child sent.
func (w wireResult) result() result {
	return result{
		messages:       w.Messages,
		elapsed:        time.Duration(w.ElapsedNS),
		cpu:            time.Duration(w.CPUNS),
		allocs:         w.Allocs,
		allocBytes:     w.AllocBytes,
		peakHeap:       w.PeakHeap,
		peakSys:        w.PeakSys,
		peakGoroutines: w.PeakGoroutines,
		handlerTime:    time.Duration(w.HandlerNS),
		latP50:         time.Duration(w.LatP50NS),
		latP99:         time.Duration(w.LatP99NS),
		latMax:         time.Duration(w.LatMaxNS),
		idleRate:       w.IdleRate,
		violations:     w.Violations,
	}
}

// runChild performs the run spec names and prints its result as JSON.
func runChild(ctx context.Context, cfg config, spec childSpec, stdout io.Writer) error {
	chosen, err := selectScenarios(spec.scenario)
	if err != nil {
		return err
	}
	cases := chosen[0].cases(cfg)
	i := slices.IndexFunc(cases, func(c benchCase) bool { return c.id == spec.caseID })
	if i < 0 {
		return fmt.Errorf("no case %q in scenario %q", spec.caseID, spec.scenario)
	}
	r, err := measure(ctx, cfg, cases[i], spec.n, spec.topic)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(toWire(r))
}

// measureInChild runs spec in a child process started from this
// executable with the parent's flags, and returns what it measured.
func measureInChild(ctx context.Context, args []string, spec childSpec) (result, error) {
	exe, err := os.Executable()
	if err != nil {
		return result{}, fmt.Errorf("find own executable for -isolate: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, append(slices.Clone(args), "-child="+spec.String())...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return result{}, fmt.Errorf("child process for %s: %w: %s", spec.caseID, err, strings.TrimSpace(stderr.String()))
	}
	var w wireResult
	if err := json.Unmarshal(stdout.Bytes(), &w); err != nil {
		return result{}, fmt.Errorf("child process for %s printed %q: %w", spec.caseID, stdout.String(), err)
	}
	return w.result(), nil
}
