package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// config is the shape of every run, from the command-line flags.
type config struct {
	messages        int           // messages per run (-n)
	runs            int           // runs per case (-runs)
	publishers      int           // publishing goroutines (-publishers)
	payloadBytes    int           // payload size (-payload)
	batch           int           // messages per call in the batched rows (-batch)
	keys            int           // distinct keys in the keyed rows (-keys)
	concurrency     int           // herald handler concurrency of the parallel rows (-concurrency)
	unboundedMax    int           // message cap of configurations without backpressure (-unbounded-max)
	sampleEvery     time.Duration // memory sampling period (-sample)
	runTimeout      time.Duration // liveness bound of one run (-timeout)
	shutdownTimeout time.Duration // bound of one teardown
	isolate         bool          // every run in a fresh child process (-isolate)
}

// result is what one timed run measured.
type result struct {
	messages       int
	elapsed        time.Duration
	allocs         uint64 // heap objects allocated during the run (whole process)
	allocBytes     uint64 // heap bytes allocated during the run (whole process)
	peakHeap       uint64 // largest heap-objects size sampled, live and not yet swept
	peakSys        uint64 // largest memory the Go runtime held from the OS (MemStats.Sys), sampled
	peakGoroutines uint64 // most goroutines sampled
}

func (r result) msgsPerSec() float64   { return float64(r.messages) / r.elapsed.Seconds() }
func (r result) allocsPerMsg() float64 { return float64(r.allocs) / float64(r.messages) }
func (r result) bytesPerMsg() float64  { return float64(r.allocBytes) / float64(r.messages) }

// measure runs c once with n messages: set-up and warm-up untimed, then a
// garbage collection, then the timed run with memory sampled every
// cfg.sampleEvery, then the teardown (untimed, but its errors fail the run).
func measure(ctx context.Context, cfg config, c benchCase, n int, topic string) (result, error) {
	p, err := c.setup(ctx, runParams{cfg: cfg, n: n, topic: topic})
	if err != nil {
		return result{}, fmt.Errorf("%s: set-up: %w", c.id, err)
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := startSampler(cfg.sampleEvery)
	start := time.Now()

	runCtx, cancel := context.WithTimeout(ctx, cfg.runTimeout)
	runErr := p.run(runCtx)
	cancel()

	elapsed := time.Since(start)
	peak := s.stop()
	runtime.ReadMemStats(&after)

	closeCtx, cancelClose := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
	closeErr := p.close(closeCtx)
	cancelClose()
	if err := errors.Join(runErr, closeErr); err != nil {
		return result{}, fmt.Errorf("%s: %w", c.id, err)
	}
	return result{
		messages:       n,
		elapsed:        elapsed,
		allocs:         after.Mallocs - before.Mallocs,
		allocBytes:     after.TotalAlloc - before.TotalAlloc,
		peakHeap:       peak.heap,
		peakSys:        peak.sys,
		peakGoroutines: peak.goroutines,
	}, nil
}

// sampler records peak memory and goroutine count through runtime/metrics,
// which unlike ReadMemStats does not stop the world, so sampling every few
// milliseconds barely disturbs the run.
type sampler struct {
	done     chan struct{}
	finished chan struct{}
	peak     peaks
}

type peaks struct{ heap, sys, goroutines uint64 }

func startSampler(every time.Duration) *sampler {
	s := &sampler{done: make(chan struct{}), finished: make(chan struct{})}
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	read := func() {
		metrics.Read(samples)
		s.peak.heap = max(s.peak.heap, samples[0].Value.Uint64())
		s.peak.sys = max(s.peak.sys, samples[1].Value.Uint64())
		s.peak.goroutines = max(s.peak.goroutines, samples[2].Value.Uint64())
	}
	read()
	go func() {
		defer close(s.finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				read()
			case <-s.done:
				read()
				return
			}
		}
	}()
	return s
}

func (s *sampler) stop() peaks {
	close(s.done)
	<-s.finished
	return s.peak
}

// counter is the subscriber side's bookkeeping: it counts handled
// messages, closes done when the target is reached, and keeps the first
// problem a handler saw.
type counter struct {
	target  int64
	handled atomic.Int64
	done    chan struct{}
	errOnce sync.Once
	err     error
	failed  atomic.Bool
}

func newCounter(target int) *counter {
	return &counter{target: int64(target), done: make(chan struct{})}
}

func (c *counter) add() {
	if c.handled.Add(1) == c.target {
		close(c.done)
	}
}

// fail records a handler-side problem (a wrong payload, a decode error);
// the run fails when it ends.
func (c *counter) fail(err error) {
	c.errOnce.Do(func() { c.err = err; c.failed.Store(true) })
}

// wait blocks until every message was handled or ctx ends.
func (c *counter) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("handler saw %d of %d messages: %w", c.handled.Load(), c.target, ctx.Err())
	}
}

// check reports a handler-side problem or a count other than the target;
// call it after the subscriber stopped.
func (c *counter) check() error {
	if c.failed.Load() {
		return c.err
	}
	if got := c.handled.Load(); got != c.target {
		return fmt.Errorf("handler saw %d messages, want exactly %d", got, c.target)
	}
	return nil
}

// publishAll publishes messages 0..n-1 from the given number of
// goroutines, each taking a contiguous share and handing publish up to
// batch consecutive indices per call. It returns the first error.
func publishAll(ctx context.Context, n, publishers, batch int, publish func(ctx context.Context, first, count int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for p := range publishers {
		lo, hi := p*n/publishers, (p+1)*n/publishers
		wg.Go(func() {
			for first := lo; first < hi; first += batch {
				if err := publish(ctx, first, min(batch, hi-first)); err != nil {
					cancel(fmt.Errorf("publish message %d: %w", first, err))
					return
				}
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// warmUp sends one warm-up message at a time until the handler reports
// one, so that the subscription exists and its first-use costs are paid
// before the clock starts. A system that drops messages published before
// the subscriber joined may need more than one.
func warmUp(ctx context.Context, send func(ctx context.Context) error, seen <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if err := send(ctx); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		select {
		case <-seen:
			return nil
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("warm-up message never reached the handler: %w", ctx.Err())
		}
	}
}

// signalOnce closes a channel the first time it is called.
type signalOnce struct {
	once sync.Once
	ch   chan struct{}
}

func newSignalOnce() *signalOnce { return &signalOnce{ch: make(chan struct{})} }

func (s *signalOnce) fire() { s.once.Do(func() { close(s.ch) }) }

// summary is the median of a case's runs, metric by metric.
type summary struct {
	c                benchCase
	messages         int
	runs             int
	msgsPerSec       float64
	minRate, maxRate float64
	allocsPerMsg     float64
	bytesPerMsg      float64
	peakHeap         float64
	peakSys          float64
	peakGoroutines   float64
}

func summarize(c benchCase, rs []result) summary {
	metric := func(f func(result) float64) float64 {
		vs := make([]float64, len(rs))
		for i, r := range rs {
			vs[i] = f(r)
		}
		return median(vs)
	}
	rates := make([]float64, len(rs))
	for i, r := range rs {
		rates[i] = r.msgsPerSec()
	}
	return summary{
		c:              c,
		messages:       rs[0].messages,
		runs:           len(rs),
		msgsPerSec:     median(rates),
		minRate:        slices.Min(rates),
		maxRate:        slices.Max(rates),
		allocsPerMsg:   metric(result.allocsPerMsg),
		bytesPerMsg:    metric(result.bytesPerMsg),
		peakHeap:       metric(func(r result) float64 { return float64(r.peakHeap) }),
		peakSys:        metric(func(r result) float64 { return float64(r.peakSys) }),
		peakGoroutines: metric(func(r result) float64 { return float64(r.peakGoroutines) }),
	}
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
