package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// sleeperCeilingCase is the reference row of a slow-handler table: no
// broker and no library, only concurrency goroutines that each sleep work
// in a loop until the run's message count of sleeps has completed. Its
// msgs/s (completed sleeps per second) is what concurrency handlers
// sleeping work each reach in a Go process on this machine, the overshoot
// of time.Sleep included, measured like every other row: the same harness
// and clock, its own child process with -isolate, its runs interleaved with
// the scenario's other cases. The "of bare-sleeper ceiling" column divides
// the table's rows of the same concurrency by it, rather than by a ceiling
// computed from a row's own handler time, which would flatter a system
// whose sleeps stretch.
//
// The row is consume-only like the rest of its table, with nothing to
// consume: the clock starts with the sleepers and stops when the counter
// has seen the last sleep.
func sleeperCeilingCase(concurrency int, work time.Duration) benchCase {
	return benchCase{
		id:          fmt.Sprintf("ceiling-c%d", concurrency),
		system:      "bare goroutines",
		label:       sleeperLabel(concurrency, work),
		mode:        consumeOnly,
		ceiling:     true,
		standalone:  true,
		concurrency: concurrency,
		work:        work,
		setup: func(ctx context.Context, p runParams) (*pipeline, error) {
			return setupSleepers(ctx, p, concurrency, work)
		},
	}
}

// sleeperLabel describes a ceiling row: "64 goroutines each sleeping 1 ms
// in a loop, no broker".
func sleeperLabel(concurrency int, work time.Duration) string {
	sleep := fmt.Sprintf("%g ms", float64(work)/float64(time.Millisecond))
	if concurrency == 1 {
		return fmt.Sprintf("1 goroutine sleeping %s in a loop, no broker", sleep)
	}
	return fmt.Sprintf("%d goroutines each sleeping %s in a loop, no broker", concurrency, sleep)
}

// setupSleepers builds one run of a ceiling row on the shared stages, so
// that the counting, the clock and the checks are those of every
// consume-only row.
func setupSleepers(ctx context.Context, p runParams, concurrency int, work time.Duration) (*pipeline, error) {
	cnt := newCounter(p.n, work)
	var (
		claimed  atomic.Int64 // sleeps handed out; exactly n complete
		stop     = make(chan struct{})
		stopOnce sync.Once
		wg       sync.WaitGroup
	)
	return assemble(ctx, p, stages{
		mode:    consumeOnly,
		counter: cnt,
		// There is no topic to fill: the sleeps need no messages.
		publish:   func(context.Context, int, int) error { return nil },
		subscribe: func() error { return nil },
		start: func(context.Context) error {
			for range concurrency {
				wg.Go(func() {
					// Each sleep is claimed before it starts, so the
					// sleepers stop after exactly n, as a handler sees
					// exactly n messages.
					for claimed.Add(1) <= int64(p.n) {
						select {
						case <-stop:
							return
						default:
						}
						// handle sleeps and times the sleep like the
						// handler of every other row, then counts.
						cnt.handle()
					}
				})
			}
			return nil
		},
		teardown: func(ctx context.Context) error {
			stopOnce.Do(func() { close(stop) })
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
				return nil
			case <-ctx.Done():
				return fmt.Errorf("sleepers did not stop: %w", ctx.Err())
			}
		},
	})
}

// sleeperCeilings returns a ceiling row for every distinct concurrency of
// the rows of cases whose handler does work, in the order the rows first
// use it, each with the message share of that first row so that it runs
// about as long as the rows it is compared with.
func sleeperCeilings(cases []benchCase) []benchCase {
	var ceilings []benchCase
	seen := make(map[int]bool)
	for _, c := range cases {
		if c.work <= 0 || c.ceiling || seen[c.concurrency] {
			continue
		}
		seen[c.concurrency] = true
		ceilings = append(ceilings, sleeperCeilingCase(c.concurrency, c.work).in(c.table).scaled(c.scale))
	}
	return ceilings
}
