package herald

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/eapache/go-resiliency/retrier"
)

// RetryConfig configures retries (WithRetry). The zero value of a field
// means its default.
type RetryConfig struct {
	// MaxAttempts is how many times the handler runs per delivery, the
	// first run included (default 3; 1 disables retrying).
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt (default
	// 100 ms); each later wait doubles, up to MaxBackoff (default 10 s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// Jitter spreads each wait by up to ±Jitter of itself (default 0.2;
	// a negative value disables jitter).
	Jitter float64
	// AttemptTimeout bounds each attempt, not the whole retry loop (0: no
	// bound). A timed-out attempt is retried like any failure.
	AttemptTimeout time.Duration
	// Retryable decides whether an error is worth another attempt. Default:
	// everything except permanent errors (see Permanent) and the end of the
	// delivery's own context. A breaker or throttle wait cut short by
	// shutdown (ErrStopping) is never retried.
	Retryable func(error) bool
	// OnRetry, if set, is called before each attempt after the first, with
	// the number of that attempt (2 and up) and the error of the one
	// before. It must not block.
	OnRetry func(ctx context.Context, m *Message, attempt int, err error)
}

func (c RetryConfig) validate() error {
	return errors.Join(
		badIf(c.MaxAttempts < 0, "RetryConfig.MaxAttempts", c.MaxAttempts, "want 0 (default 3) or more"),
		badIf(c.InitialBackoff < 0, "RetryConfig.InitialBackoff", c.InitialBackoff, "want 0 (default) or more"),
		badIf(c.MaxBackoff < 0, "RetryConfig.MaxBackoff", c.MaxBackoff, "want 0 (default) or more"),
		badIf(c.MaxBackoff > 0 && c.MaxBackoff < c.InitialBackoff, "RetryConfig.MaxBackoff", c.MaxBackoff, "below InitialBackoff"),
		badIf(c.Jitter > 1, "RetryConfig.Jitter", c.Jitter, "want at most 1 (a negative value turns jitter off)"),
		badIf(c.AttemptTimeout < 0, "RetryConfig.AttemptTimeout", c.AttemptTimeout, "want 0 (no bound) or more"))
}

// withDefaults fills the zero fields of c with their defaults (shared by
// the retry middleware and batch handlers).
func (c RetryConfig) withDefaults() RetryConfig {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = max(10*time.Second, c.InitialBackoff)
	}
	if c.Jitter == 0 {
		c.Jitter = 0.2
	}
	if c.Retryable == nil {
		c.Retryable = func(err error) bool {
			return !IsPermanent(err) && !errors.Is(err, context.Canceled)
		}
	}
	return c
}

// RetryError is what the retry middleware returns when it gives up: the last error and how
// many attempts ran. errors.Is and errors.As see through it to that error.
type RetryError struct {
	Attempts int
	Err      error
}

func (e *RetryError) Error() string {
	if e.Attempts == 1 && IsPermanent(e.Err) {
		return fmt.Sprintf("herald: not retried: permanent: %v", e.Err)
	}
	return fmt.Sprintf("herald: gave up after %d attempt(s): %v", e.Attempts, e.Err)
}

// Unwrap returns the last attempt's error.
func (e *RetryError) Unwrap() error { return e.Err }

type attemptKey struct{}

// Attempt returns the retry attempt being run for the current delivery,
// starting at 1.
func Attempt(ctx context.Context) int {
	if n, ok := ctx.Value(attemptKey{}).(int); ok {
		return n
	}
	return 1
}

// retryClassifier adapts a Retryable function to the retrier package.
type retryClassifier struct {
	ctx       context.Context
	retryable func(error) bool
}

func (c retryClassifier) Classify(err error) retrier.Action {
	switch {
	case err == nil:
		return retrier.Succeed
	case c.ctx.Err() != nil || heldBack(err) || !c.retryable(err):
		return retrier.Fail
	}
	return retrier.Retry
}

// retry runs the handler up to MaxAttempts times per delivery, with
// exponential backoff and jitter between attempts (eapache/go-resiliency's
// retrier). Attempt(ctx) tells the handler which attempt it runs. A
// permanent error, or the end of the delivery's context, stops at once.
// When it gives up it returns a *RetryError. Each attempt after the first
// is reported to report (nil: nobody) before it runs.
func retry(cfg RetryConfig, report reporter) Middleware {
	report = report.orNop()
	cfg = cfg.withDefaults()
	backoffs := retrier.LimitedExponentialBackoff(cfg.MaxAttempts-1, cfg.InitialBackoff, cfg.MaxBackoff)
	return func(next HandlerFunc) HandlerFunc {
		attempt := next
		if cfg.AttemptTimeout > 0 {
			attempt = attemptTimeout(cfg.AttemptTimeout)(next)
		}
		return func(ctx context.Context, m *Message) error {
			// The first attempt runs inline: the success path allocates
			// nothing. The retrier takes over after a failure.
			err := attempt(ctx, m)
			if err == nil {
				return nil
			}
			classify := retryClassifier{ctx: ctx, retryable: cfg.Retryable}
			if cfg.MaxAttempts == 1 || classify.Classify(err) != retrier.Retry {
				return &RetryError{Attempts: 1, Err: err}
			}
			r := retrier.New(backoffs, classify).WithSurfaceWorkErrors()
			if cfg.Jitter > 0 {
				r.SetJitter(cfg.Jitter)
			}
			attempts := 1
			last := err
			err = r.RunFn(ctx, func(ctx context.Context, retries int) error {
				if retries == 0 {
					// Hand the retrier the first attempt's error so that
					// it starts with its first backoff.
					return err
				}
				attempts = retries + 1
				report(ctx, event{kind: eventRetry, msg: m, attempt: attempts, err: last})
				if cfg.OnRetry != nil {
					cfg.OnRetry(ctx, m, attempts, last)
				}
				last = attempt(context.WithValue(ctx, attemptKey{}, attempts), m)
				return last
			})
			if err == nil {
				return nil
			}
			return &RetryError{Attempts: attempts, Err: err}
		}
	}
}

// attemptTimeout bounds each call of the handler by d; the handler sees a
// context that ends after d.
func attemptTimeout(d time.Duration) Middleware {
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			return next(ctx, m)
		}
	}
}
