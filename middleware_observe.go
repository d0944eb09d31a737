package herald

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// HandleResult describes one run of a subscription's chain for a message.
type HandleResult struct {
	Topic    string
	Group    string
	Message  *Message
	Duration time.Duration
	// Err is what the chain returned: nil for handled, skipped duplicates
	// and dead-lettered messages alike (use the dedup and dead-letter
	// callbacks to tell those apart).
	Err error
	// Skipped says the group does not handle this message and acknowledged
	// it without running a handler: an event type the group has no handler
	// for on a shared topic, or a redrive addressed to another group.
	Skipped bool
}

// observe logs each handled message at debug level and each failure at
// warn level on logger (nil: no logging), and calls hook (nil: none) with
// every result: the place for metrics.
func observe(topic, group string, logger *slog.Logger, hook func(HandleResult)) Middleware {
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) error {
			start := time.Now()
			err := next(ctx, m)
			took := time.Since(start)
			skipped := err == errSkipped
			if logger != nil {
				switch {
				case skipped:
					if logger.Enabled(ctx, slog.LevelDebug) {
						logger.LogAttrs(ctx, slog.LevelDebug, "herald: skipped, not for this group",
							slog.String("topic", topic), slog.String("group", group),
							slog.String("message_id", m.ID), slog.String("event", m.Event()))
					}
				case err != nil:
					attempts := 1
					var re *RetryError
					if errors.As(err, &re) {
						attempts = re.Attempts
					}
					logger.LogAttrs(ctx, slog.LevelWarn, "herald: handler failed",
						slog.String("topic", topic), slog.String("group", group),
						slog.String("message_id", m.ID), slog.String("event", m.Event()),
						slog.Int("delivery", DeliveryCount(ctx)), slog.Int("attempts", attempts),
						slog.Duration("took", took), slog.Any("error", err))
				case logger.Enabled(ctx, slog.LevelDebug):
					logger.LogAttrs(ctx, slog.LevelDebug, "herald: handled",
						slog.String("topic", topic), slog.String("group", group),
						slog.String("message_id", m.ID), slog.String("event", m.Event()),
						slog.Duration("took", took))
				}
			}
			if hook != nil {
				r := HandleResult{Topic: topic, Group: group, Message: m, Duration: took, Err: err, Skipped: skipped}
				if skipped {
					r.Err = nil
				}
				hook(r)
			}
			return err
		}
	}
}
