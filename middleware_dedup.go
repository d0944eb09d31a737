package herald

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/heraldbus/herald/dedup"
)

// DedupConfig configures deduplication (WithDedup, WithDedupConfig). The
// zero value of a field means its default.
type DedupConfig struct {
	// Storage keeps the processed set (required): memdedup for one
	// process, redisdedup for every instance of a service.
	Storage dedup.Storage
	// Lease is how long a claim protects a delivery in progress (default
	// 5 min). It must exceed the longest time the chain inside can take,
	// retries included: a claim that expires mid-handling lets a concurrent
	// duplicate run.
	Lease time.Duration
	// Window is how long a processed message is remembered (default 24 h).
	// A storage may cap it: memdedup remembers at most its own window
	// (memdedup.WithWindow, 1 h by default), to bound its memory.
	Window time.Duration
	// OnDuplicate, if set, is called for each skipped duplicate. It must
	// not block.
	OnDuplicate func(m *Message)
	// OnError receives commit and release failures, which do not fail the
	// message (the claim then expires with its lease). Default: the Bus's
	// error handler.
	OnError func(error)
}

func (c DedupConfig) validate() error {
	return errors.Join(
		badIf(isNil(c.Storage), "DedupConfig.Storage", nil, "required"),
		badIf(c.Lease < 0, "DedupConfig.Lease", c.Lease, "want 0 (default) or more"),
		badIf(c.Window < 0, "DedupConfig.Window", c.Window, "want 0 (default) or more"))
}

// withDefaults fills the zero fields of c with their defaults (shared by
// the dedup middleware and batch handlers).
func (c DedupConfig) withDefaults() DedupConfig {
	if c.Lease <= 0 {
		c.Lease = 5 * time.Minute
	}
	if c.Window <= 0 {
		c.Window = 24 * time.Hour
	}
	if c.OnError == nil {
		c.OnError = func(error) {}
	}
	return c
}

// DedupKey is the key under which group records m as processed, within
// the group's own records: m.ID, and for a message a dead-letter redrive
// addressed to group (HeaderRedriveGroup, HeaderRedriveCount) m.ID +
// "#redrive-" + the count, so that the redrive runs once more although
// its dead-lettering marked the ID done, and a second copy of the same
// redrive is a duplicate; likewise a retry copy addressed to group
// (WithRetryLater: HeaderRetryGroup, HeaderRetryRound) is keyed by its
// round, + "#retry-" + the round. It is "" for a message without an ID, which
// cannot be deduplicated. The dedup middleware stores it under group +
// ":"; sql/inbox keys its rows by (group, DedupKey).
func DedupKey(group string, m *Message) string {
	if m.ID == "" {
		return ""
	}
	key := m.ID
	if n := m.Headers.Get(HeaderRedriveCount); n != "" && m.Headers.Get(HeaderRedriveGroup) == group {
		// A redrive to this group: its dead-lettering marked the ID
		// done, and this copy must run once more.
		key += "#redrive-" + n
	}
	if n := m.Headers.Get(HeaderRetryRound); n != "" && m.Headers.Get(HeaderRetryGroup) == group {
		key += "#retry-" + n
	}
	return key
}

// deduplicate runs the handler at most once per (group, message ID) within
// the window, even for concurrent deliveries of one message: it claims the
// ID with a lease before running, commits on success and releases on
// failure so a redelivery can run. A delivery that finds the ID claimed by
// another returns ErrInProgress and is redelivered later; one that finds it
// done is acknowledged without running. A storage error fails the delivery
// (it is redelivered), so an unreachable store never causes a double run.
// Messages without an ID are passed through. A message a dead-letter
// redrive addressed to this group (HeaderRedriveGroup, HeaderRedriveCount)
// is keyed by its ID and its redrive count: it runs once more although its
// dead-lettering marked the ID done, and a second copy of the same redrive
// is skipped. A skipped duplicate is reported to report (nil: nobody).
func deduplicate(cfg DedupConfig, group string, report reporter) Middleware {
	report = report.orNop()
	cfg = cfg.withDefaults()
	prefix := group + ":"
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			if m.ID == "" {
				return next(ctx, m)
			}
			key := prefix + DedupKey(group, m)
			claim, err := cfg.Storage.Claim(ctx, key, cfg.Lease)
			if err != nil {
				return fmt.Errorf("herald: dedup claim %q: %w", key, err)
			}
			switch claim.State {
			case dedup.Done:
				report(ctx, event{kind: eventDuplicate, msg: m})
				if cfg.OnDuplicate != nil {
					cfg.OnDuplicate(m)
				}
				return nil
			case dedup.Busy:
				return ErrInProgress
			}
			if err := next(ctx, m); err != nil {
				if rerr := cfg.Storage.Release(context.WithoutCancel(ctx), key, claim.Token); rerr != nil {
					cfg.OnError(fmt.Errorf("herald: dedup release %q: %w", key, rerr))
				}
				return err
			}
			if cerr := cfg.Storage.Commit(context.WithoutCancel(ctx), key, claim.Token, cfg.Window); cerr != nil {
				cfg.OnError(fmt.Errorf("herald: dedup commit %q: %w", key, cerr))
			}
			return nil
		}
	}
}
