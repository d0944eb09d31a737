package herald

import (
	"log/slog"
	"time"
)

// The built-in middleware and the scheduler are unexported: the Bus
// installs them in the canonical order. The tests of package herald_test
// reach them here.

type Scheduler = scheduler

var (
	NewScheduler = newScheduler
	Recover      = recoverPanics
	Timeout      = attemptTimeout
)

func Retry(cfg RetryConfig) Middleware { return retry(cfg, nil) }

func Deduplicate(cfg DedupConfig, group string) Middleware { return deduplicate(cfg, group, nil) }

// Observe is the observer middleware of a subscription without telemetry.
func Observe(topic, group string, logger *slog.Logger, hook func(HandleResult)) Middleware {
	return newObserver(topic, group, logger, hook, nil).middleware()
}

// DeadLetterMiddleware is the dead-letter middleware of group, with clock now (nil:
// time.Now); onlyUndecodable is the Bus's setting without WithDeadLetter.
func DeadLetterMiddleware(cfg DeadLetterConfig, group string, now func() time.Time, onlyUndecodable bool) Middleware {
	return deadLetter(deadLetterSettings{DeadLetterConfig: cfg, group: group, now: now, onlyUndecodable: onlyUndecodable})
}
