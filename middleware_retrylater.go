package herald

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/heraldbus/herald/internal/backoff"
)

// RetryLaterConfig configures non-blocking retry (WithRetryLater). The
// zero value of a field means its default.
type RetryLaterConfig struct {
	// Rounds is how many times a failed message is re-published for a
	// later retry before it goes to the dead-letter topic (default 3). The
	// delivery of the original is round 0; its copies are rounds 1 to
	// Rounds.
	Rounds int
	// Backoff is how long after the failure the first copy is due (default
	// 10 s); each later round waits twice as long as the one before, up to
	// MaxBackoff (default 10 min, and at least Backoff).
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Jitter lengthens each wait by up to Jitter of itself (default 0.2; a
	// negative value disables it). A copy is never due before its backoff.
	Jitter float64
	// Retryable decides whether a failure is worth a later round; one it
	// refuses goes to the dead-letter topic at once. Default: every error
	// except permanent ones (Permanent, undecodable payloads).
	Retryable func(error) bool
	// OnRetryLater, if set, is called after a copy was written, with the
	// failed message, the copy's round, when it is due and the error. It
	// must not block.
	OnRetryLater func(m *Message, round int, due time.Time, err error)

	now func() time.Time // tests; default time.Now
}

func (c RetryLaterConfig) validate() error {
	return errors.Join(
		badIf(c.Rounds < 0, "RetryLaterConfig.Rounds", c.Rounds, "want 0 (default 3) or more"),
		badIf(c.Backoff < 0, "RetryLaterConfig.Backoff", c.Backoff, "want 0 (default 10s) or more"),
		badIf(c.MaxBackoff < 0, "RetryLaterConfig.MaxBackoff", c.MaxBackoff, "want 0 (default 10m) or more"),
		badIf(c.MaxBackoff > 0 && c.MaxBackoff < c.Backoff, "RetryLaterConfig.MaxBackoff", c.MaxBackoff, "below Backoff"),
		badIf(c.MaxBackoff > MaxDelay, "RetryLaterConfig.MaxBackoff", c.MaxBackoff, "above herald.MaxDelay"),
		badIf(c.Backoff > MaxDelay, "RetryLaterConfig.Backoff", c.Backoff, "above herald.MaxDelay"),
		badIf(c.Jitter > 1, "RetryLaterConfig.Jitter", c.Jitter, "want at most 1 (a negative value turns jitter off)"))
}

func (c RetryLaterConfig) withDefaults() RetryLaterConfig {
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Backoff <= 0 {
		c.Backoff = 10 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = max(10*time.Minute, c.Backoff)
	}
	if c.Jitter == 0 {
		c.Jitter = 0.2
	}
	if c.Retryable == nil {
		c.Retryable = func(err error) bool { return !IsPermanent(err) }
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// wait is the delay of round n (1 for the first copy).
func (c RetryLaterConfig) wait(n int) time.Duration {
	d := backoff.Exponential(c.Backoff, c.MaxBackoff, n)
	if c.Jitter > 0 {
		d += time.Duration(rand.Float64() * c.Jitter * float64(d))
	}
	return min(d, MaxDelay)
}

// WithRetryLater makes the subscription retry a failing message later
// without holding up its key: instead of being redelivered in place, the
// message is re-published to its topic as a delayed copy (HeaderDeliverAt,
// due after a backoff that doubles each round) addressed to this group
// alone, and the failed delivery is acknowledged, so the key's later
// messages go on. After Rounds copies have failed too, the message goes to
// the dead-letter topic, whose record counts every attempt of every round.
//
// This gives up per-key order for the key of a failing message: its later
// messages are handled before its retry. That is why it is opt-in; use it
// where messages of one key do not depend on each other's order.
//
// Within one round, WithRetry's attempts run as usual; a round fails when
// retry gives up. Permanent errors (Permanent, undecodable payloads) go
// to the dead-letter topic at once. While a breaker (WithBreaker) is open
// it holds the message, which spends no round. The copy keeps the
// message's ID, key, content type, payload, publish time and headers
// (traceparent included), with HeaderRetryGroup, HeaderRetryRound,
// HeaderRetryAttempts and its own HeaderDeliverAt; RetryRound tells the
// handler which round runs, Attempt which attempt within it. If writing
// the copy fails, the delivery is not acknowledged and is redelivered in
// place: nothing is lost. A crash between the write and the
// acknowledgment writes the round twice; WithDedup runs it once (the
// round is part of its key).
//
// It needs WithDeadLetter, and a Bus driver that is a DelayedWriter
// (memdriver, redisdriver, sqldriver): the subscription fails with a
// *DelayError wrapping ErrDelayNotSupported otherwise. Batch handlers
// refuse it.
func WithRetryLater(cfg RetryLaterConfig) SubscribeOption {
	return func(o *subscribeOptions) { o.retryLater = &cfg }
}

// RetryLaterError is what the retry-later middleware returns when the
// last round failed too: the rounds run, the attempts of every round, and
// the last error, which errors.Is and errors.As see through to.
type RetryLaterError struct {
	Rounds   int // copies that ran (the original's delivery not counted)
	Attempts int // handler runs over every round
	Err      error
}

func (e *RetryLaterError) Error() string {
	return fmt.Sprintf("herald: gave up after %d later round(s), %d attempt(s) in all: %v", e.Rounds, e.Attempts, e.Err)
}

// Unwrap returns the last error.
func (e *RetryLaterError) Unwrap() error { return e.Err }

// RetryRound returns the retry-later round being run for the current
// delivery (see WithRetryLater): 0 for a message's own delivery, 1 and up
// for its copies.
func RetryRound(ctx context.Context) int {
	if m := delivered(ctx); m != nil && m.Headers.Get(HeaderRetryGroup) != "" {
		return headerInt(m, HeaderRetryRound)
	}
	return 0
}

// headerInt is the decimal value of header name of m, 0 when absent or
// malformed.
func headerInt(m *Message, name string) int {
	if n, err := strconv.Atoi(m.Headers.Get(name)); err == nil && n > 0 {
		return n
	}
	return 0
}

// retryState is the round and the earlier rounds' attempts of m in group.
func retryState(m *Message, group string) (round, attempts int) {
	if m.Headers.Get(HeaderRetryGroup) != group {
		return 0, 0
	}
	return headerInt(m, HeaderRetryRound), headerInt(m, HeaderRetryAttempts)
}

// forOtherGroup reports whether m is addressed to a group other than
// group: a dead-letter redrive (HeaderRedriveGroup) or a retry copy
// (HeaderRetryGroup). Such a message is skipped by every other group.
func forOtherGroup(m *Message, group string) bool {
	for _, h := range [...]string{HeaderRedriveGroup, HeaderRetryGroup} {
		if to := m.Headers.Get(h); to != "" && to != group {
			return true
		}
	}
	return false
}

// isRetryHeader reports whether name is one of a retry copy's headers.
func isRetryHeader(name string) bool {
	return name == HeaderRetryGroup || name == HeaderRetryRound || name == HeaderRetryAttempts
}

// attemptsOf is how many times the handler ran before err: a
// *RetryLaterError's or *RetryError's count, else 1.
func attemptsOf(err error) int {
	var rl *RetryLaterError
	if errors.As(err, &rl) {
		return rl.Attempts
	}
	var re *RetryError
	if errors.As(err, &re) {
		return re.Attempts
	}
	return 1
}

// retryCopy is m as round round of group's retries, due at due.
func retryCopy(m *Message, group string, round, attempts int, due time.Time) *Message {
	c := *m
	c.Headers = make(Headers, len(m.Headers)+4)
	maps.Copy(c.Headers, m.Headers)
	c.Headers[HeaderRetryGroup] = group
	c.Headers[HeaderRetryRound] = strconv.Itoa(round)
	c.Headers[HeaderRetryAttempts] = strconv.Itoa(attempts)
	c.SetDeliverAt(due)
	return &c
}

// notRepublishedError is a failed delivery whose retry copy could not be
// written: it stays unacknowledged (the dead-letter middleware passes it
// through) and is redelivered in place.
type notRepublishedError struct {
	err, werr error
	round     int
}

func (e *notRepublishedError) Error() string {
	return fmt.Sprintf("herald: retry later: round %d not written, redelivering in place: %v; handler: %v", e.round, e.werr, e.err)
}

func (e *notRepublishedError) Unwrap() []error { return []error{e.err, e.werr} }

// retryLaterSettings are what the Bus adds to a RetryLaterConfig.
type retryLaterSettings struct {
	RetryLaterConfig
	group  string
	writer Writer   // the Bus's driver, a DelayedWriter
	report reporter // nil: nobody
}

// retryLater sits inside dead letter and around retry: a failure retry
// gave up on (not permanent, not a shutdown, not a breaker or throttle
// wait, not a dedup claim held elsewhere) is written as a delayed copy of
// the message addressed to the group, and the delivery succeeds; after
// the last round the failure goes on to dead letter as a
// *RetryLaterError.
func retryLater(s retryLaterSettings) Middleware {
	cfg := s.withDefaults()
	report := s.report.orNop()
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			err := next(ctx, m)
			if err == nil || ctx.Err() != nil || errors.Is(err, ErrInProgress) || heldBack(err) || !cfg.Retryable(err) {
				return err
			}
			round, earlier := retryState(m, s.group)
			attempts := earlier + attemptsOf(err)
			if round >= cfg.Rounds {
				return &RetryLaterError{Rounds: round, Attempts: attempts, Err: err}
			}
			due := cfg.now().Add(cfg.wait(round + 1))
			c := retryCopy(m, s.group, round+1, attempts, due)
			if werr := s.writer.Write(ctx, []*Message{c}); werr != nil {
				return &notRepublishedError{err: err, werr: werr, round: round + 1}
			}
			report(ctx, event{kind: eventRetryLater, msg: m, attempt: round + 1, err: err, due: due})
			if cfg.OnRetryLater != nil {
				cfg.OnRetryLater(m, round+1, due, err)
			}
			return nil
		}
	}
}

// retryLaterSettings checks that the Bus can run WithRetryLater for a
// handler of r and returns its settings.
func (b *Bus) retryLaterSettings(r *route, o *subscribeOptions) (retryLaterSettings, error) {
	if o.deadLetter == nil {
		return retryLaterSettings{}, &OptionError{Option: "WithRetryLater", Value: o.retryLater.Rounds,
			Reason: "needs WithDeadLetter: after its last round a message goes to the dead-letter topic"}
	}
	if !delayCapable(context.Background(), b.driver) {
		return retryLaterSettings{}, &DelayError{Writer: writerName(b.driver), Topic: r.topic,
			Reason: "WithRetryLater re-publishes a failed message as a delayed copy through the Bus's driver, which cannot hold it until it is due",
			Err:    ErrDelayNotSupported}
	}
	return retryLaterSettings{RetryLaterConfig: *o.retryLater, group: r.group, writer: b.driver, report: r.obs.report}, nil
}
