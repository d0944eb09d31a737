package inbox

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// Handler handles one message in tx, the transaction that also holds the
// message's mark. Returning nil commits tx (the handler must neither
// commit nor roll it back); an error rolls it back, mark and all, so the
// message runs again when it is retried or redelivered. ctx carries tx
// (as outbox.WithTx and sqldriver.WithTx put it): a Publish with ctx on a
// Bus whose writer is an outbox Writer (herald.WithOutbox,
// herald.WithPublishWriter) or the SQL driver on the same database writes
// its rows in tx too.
type Handler func(ctx context.Context, tx *sql.Tx, m *herald.Message) error

// Handler returns a herald.HandlerFunc that runs h for group in a
// transaction with the message's mark (see the package doc), for a
// subscription of group: Bus.Handle(topic, group, ...), or any scheduler.
// The group must be the subscription's: a redrive is keyed by the group
// it is addressed to (herald.DedupKey). Handle is the shorter way with a
// Bus.
func (ib *Inbox) Handler(group string, h Handler) (herald.HandlerFunc, error) {
	if err := ib.check(group, h == nil); err != nil {
		return nil, err
	}
	return func(ctx context.Context, m *herald.Message) error {
		return ib.run(ctx, group, m, func(ctx context.Context, tx *sql.Tx) error { return h(ctx, tx, m) })
	}, nil
}

// Handle subscribes h to every message of topic as a member of group
// (Bus.Handle), each run in a transaction with its mark. opts are the
// subscription's: herald.WithRetry runs each attempt in a transaction of
// its own, herald.WithDeadLetter takes what the handler gave up on (its
// mark rolled back, so a redrive runs it again). herald.WithDedup is not
// needed.
func (ib *Inbox) Handle(bus *herald.Bus, topic, group string, h Handler, opts ...herald.SubscribeOption) error {
	if bus == nil {
		return fmt.Errorf("inbox: handle topic %q group %q: %w: nil *herald.Bus", topic, group, herald.ErrInvalidOption)
	}
	hf, err := ib.Handler(group, h)
	if err != nil {
		return err
	}
	return bus.Handle(topic, group, hf, opts...)
}

// Subscribe runs h for every event of type E on E's topic as a member of
// group (herald.Subscribe), each in a transaction of ib that holds its
// mark: h's writes in tx and the mark commit together, so the effect of
// each message happens exactly once, whatever crashes and redeliveries.
// See Handle for opts.
func Subscribe[E any](bus *herald.Bus, ib *Inbox, group string, h func(ctx context.Context, tx *sql.Tx, e E, m *herald.Message) error, opts ...herald.SubscribeOption) error {
	if ib == nil {
		return errNilInbox
	}
	if bus == nil {
		return fmt.Errorf("inbox: subscribe group %q: %w: nil *herald.Bus", group, herald.ErrInvalidOption)
	}
	if err := ib.check(group, h == nil); err != nil {
		return err
	}
	return herald.Subscribe(bus, group, func(ctx context.Context, e E, m *herald.Message) error {
		return ib.run(ctx, group, m, func(ctx context.Context, tx *sql.Tx) error { return h(ctx, tx, e, m) })
	}, opts...)
}

// check validates a subscription's group and handler.
func (ib *Inbox) check(group string, nilHandler bool) error {
	if ib == nil {
		return errNilInbox
	}
	if err := herald.ValidateName("group", group); err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	if nilHandler {
		return fmt.Errorf("inbox: group %q: %w", group, herald.ErrNilHandler)
	}
	return nil
}

// run is one delivery: begin, claim the mark, run h, commit. A mark that
// exists (committed by an earlier delivery) ends it at once: nothing is
// committed and nil acknowledges the message. A concurrent delivery of
// the same message waits on the database's lock of the mark until the
// first one commits (then it is a duplicate) or rolls back (then it runs).
func (ib *Inbox) run(ctx context.Context, group string, m *herald.Message, h func(context.Context, *sql.Tx) error) error {
	key := herald.DedupKey(group, m)
	if key != "" {
		if err := checkKey(group, key, m); err != nil {
			return err
		}
	}
	tx, err := ib.db.BeginTx(ctx, ib.cfg.txOptions)
	if err != nil {
		return fmt.Errorf("inbox: begin for message %q group %q: %w", m.ID, group, err)
	}
	// Rolls back unless committed, a panic of h included.
	defer func() { _ = tx.Rollback() }()
	if key != "" {
		res, err := tx.ExecContext(ctx, ib.insert, group, key, ib.d.TimeArg(time.Now()))
		if err != nil {
			return fmt.Errorf("inbox: claim %s/%s in %s: %w", group, key, ib.cfg.table, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("inbox: claim %s/%s in %s: %w", group, key, ib.cfg.table, err)
		}
		if n == 0 {
			herald.ReportDuplicate(ctx, m)
			if ib.cfg.onDuplicate != nil {
				ib.cfg.onDuplicate(group, m)
			}
			return nil
		}
	}
	if err := h(sqlcore.WithTx(ctx, tx), tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		// The commit may have happened (a connection lost on its way
		// back): the redelivery then finds the mark and skips.
		return fmt.Errorf("inbox: commit message %q group %q: %w", m.ID, group, err)
	}
	return nil
}
