package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Stats is what a relay reports to operators (Relay.Stats, WithStatsHook).
// The counters cover this relay since Run started; the gauges are read from
// the database and are the same whichever relay reports them.
type Stats struct {
	// Active is true while this relay holds the table's lock and delivers.
	Active bool
	// Backlog is the number of rows waiting in the outbox table.
	Backlog int64
	// OldestAge is how long ago the oldest waiting row was written (by its
	// created_at, the message's Time, on this host's clock); 0 when the
	// table is empty.
	OldestAge time.Duration
	// Quarantine is the number of rows in the quarantine table.
	Quarantine int64
	// Sent counts rows this relay delivered to the target.
	Sent uint64
	// Failures counts target writes that failed (a failed batch and each
	// failed retry of its parts count once each).
	Failures uint64
	// Quarantined counts rows this relay moved to the quarantine table.
	Quarantined uint64
	// Reads counts read queries, including those that found nothing: the
	// idle polling cost.
	Reads uint64
}

// Stats returns the relay's counters and reads the gauges with two
// queries through the *sql.DB (a full count of the outbox table, and of
// the quarantine table). It works whether or not Run is running.
func (r *Relay) Stats(ctx context.Context) (Stats, error) {
	st := Stats{
		Active:      r.active.Load(),
		Sent:        r.sent.Load(),
		Failures:    r.failures.Load(),
		Quarantined: r.quarantined.Load(),
		Reads:       r.reads.Load(),
	}
	var oldest time.Time
	if err := r.db.QueryRowContext(ctx, r.q.stats).Scan(&st.Backlog, timeDest{&oldest}); err != nil {
		return st, fmt.Errorf("outbox: stats of %s: %w", r.t.name, err)
	}
	if !oldest.IsZero() {
		st.OldestAge = max(time.Since(oldest), 0)
	}
	if err := r.db.QueryRowContext(ctx, r.q.qcount).Scan(&st.Quarantine); err != nil {
		return st, fmt.Errorf("outbox: stats of %s_quarantine: %w", r.t.name, err)
	}
	return st, nil
}

// reportStats calls the stats hook every StatsInterval until ctx ends.
func (r *Relay) reportStats(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(r.cfg.StatsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := r.Stats(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("outbox relay: stats", slog.Any("error", err))
			}
			continue
		}
		r.cfg.StatsHook(st)
	}
}
