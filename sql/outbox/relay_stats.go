package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqlcore"

	"github.com/heraldbus/herald"
)

// Stats is what a relay reports to operators (Relay.Stats, WithStatsHook).
// The counters cover this relay since Run started; the gauges are read from
// the database and are the same whichever relay reports them.
type Stats struct {
	// Active is true while this relay holds the table's lock and delivers.
	Active bool
	// Backlog is the number of rows waiting in the outbox table to be
	// forwarded: delayed rows count once they are due (and the relay has
	// seen that they are).
	Backlog int64
	// Delayed is the number of delayed rows waiting for their due time.
	Delayed int64
	// OldestAge is how long ago the oldest row of the Backlog was written
	// (by its created_at, the message's Time, on this host's clock); 0 when
	// the Backlog is empty. A delayed row that has just come due counts
	// from its write, so a long delay shows here until it is forwarded.
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
	if err := r.db.QueryRowContext(ctx, r.q.stats).Scan(&st.Backlog, &st.Delayed, sqlcore.TimeDest{T: &oldest}); err != nil {
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

// Check reports whether the relay can do its work, once, bounded by ctx:
// the database answers, the outbox and quarantine tables (and the sent
// table under WithRetention) can be read, and the target answers when it
// is a herald.Pinger. Run does not need it and never gives up on its own;
// a process that runs a relay calls Check first, so that a wrong DSN,
// table or target stops the start with the reason instead of being
// retried in the logs. A missing table wraps ErrNoTable.
func (r *Relay) Check(ctx context.Context) error {
	if err := r.db.PingContext(ctx); err != nil {
		return fmt.Errorf("outbox: relay %s: database: %w", r.t.name, err)
	}
	tables := []string{r.t.main, r.t.quarantine}
	if r.cfg.Retention > 0 {
		tables = append(tables, r.t.sent)
	}
	if r.t.dialect == Postgres {
		tables = append(tables, r.t.delayedSeq) // SchemaVersion 3
	}
	for i, t := range tables {
		cols := "1"
		if i == 0 {
			cols = "deliver_at" // SchemaVersion 2
		}
		rows, err := r.db.QueryContext(ctx, "SELECT "+cols+" FROM "+t+" WHERE 1 = 0")
		if err == nil {
			err = rows.Close()
		}
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("outbox: relay %s: read table %s: %w", r.t.name, t, ctx.Err())
			}
			return fmt.Errorf("outbox: relay %s: table %s, or a table of an earlier SchemaVersion (run outbox.Migrate, or herald relay -migrate): %w: %w", r.t.name, t, ErrNoTable, err)
		}
	}
	if p, ok := r.target.(herald.Pinger); ok {
		if err := p.Ping(ctx); err != nil {
			return fmt.Errorf("outbox: relay %s: target: %w", r.t.name, err)
		}
	}
	return nil
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
