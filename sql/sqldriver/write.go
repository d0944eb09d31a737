package sqldriver

import (
	"context"
	"fmt"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/keyhash"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

const (
	writeColumns = "topic, part, message_id, msg_key, headers, content_type, payload, created_at"
	writeParams  = 8
)

// Write inserts msgs into the log. When ctx carries a transaction (WithTx,
// WithPgxTx, or outbox.WithTx) the rows are inserted in it, so they are
// published if and only if it commits; otherwise the batch is written
// atomically on its own: as one statement in autocommit, or in a
// transaction of its own when it is split. A batch is one multi-row
// INSERT (split past the dialect's bind-parameter limit or 4 MiB). Every message is checked
// first: a nil message, an invalid topic, an oversized message or an ID,
// key or content type its column cannot hold fails the whole Write and
// nothing is inserted. Keyed messages go to the partition of their key
// (internal/keyhash, as the memory and Kafka drivers place them), keyless
// ones round robin. An empty ID is stored as a new KSUID; a zero Time as
// the time of the Write. A message whose herald.HeaderDeliverAt lies in
// the future goes to the delayed table instead, in the same transaction,
// until the mover moves it to the log (see "Delayed delivery" in the
// package documentation); a malformed one or one beyond herald.MaxDelay
// fails the whole Write with herald.ErrInvalidDelay.
func (d *Driver) Write(ctx context.Context, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if d.closed.Load() {
		return fail("write", topicOf(msgs[0]), "", "", herald.ErrClosed)
	}
	sizes, due, err := d.check(msgs)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	x := sqlcore.TxFrom(ctx)
	if x != nil && x.Pgx() && d.n.d != sqlcore.Postgres {
		return fail("write", msgs[0].Topic, "", "a pgx.Tx with dialect "+d.n.d.String(), herald.ErrInvalidOption)
	}
	if due != nil {
		return d.writeDelayed(ctx, x, msgs, sizes, due)
	}
	if x != nil {
		parts, err := d.partitionsIn(ctx, x)
		if err != nil {
			return fail("write", msgs[0].Topic, "", "", err)
		}
		if err := d.insertAll(ctx, x, msgs, sizes, parts); err != nil {
			return err
		}
		d.wakeLocal() // the caller commits soon: the pump polls briskly meanwhile
		return nil
	}
	parts, err := d.partitions(ctx)
	if err != nil {
		return fail("write", msgs[0].Topic, "", "", err)
	}
	if d.oneStatement(sizes) {
		// One statement is atomic by itself: no BEGIN and COMMIT round trips.
		if err := d.insertAll(ctx, sqlcore.DBExecer(d.db), msgs, sizes, parts); err != nil {
			return err
		}
		d.wakeLocal()
		return nil
	}
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fail("write", msgs[0].Topic, "", "begin", err)
	}
	if err := d.insertAll(ctx, sqlcore.SQLTx(tx), msgs, sizes, parts); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fail("write", msgs[0].Topic, "", "commit", err)
	}
	d.wakeLocal()
	return nil
}

// check checks every message of a Write and returns their sizes and,
// when some are delayed, their due times (see dues).
func (d *Driver) check(msgs []*herald.Message) ([]int, []int64, error) {
	sizes := make([]int, len(msgs))
	for i, m := range msgs {
		n, err := sqlcore.CheckMessage(m, d.n.name, d.cfg.maxMessageBytes)
		if err != nil {
			return nil, nil, fail("write", topicOf(m), "", fmt.Sprintf("message %d of %d", i, len(msgs)), err)
		}
		sizes[i] = n
	}
	due, err := dues(msgs, time.Now())
	return sizes, due, err
}

func topicOf(m *herald.Message) string {
	if m == nil {
		return ""
	}
	return m.Topic
}

func (d *Driver) insertAll(ctx context.Context, x sqlcore.TxExecer, msgs []*herald.Message, sizes []int, parts int) error {
	now := time.Now()
	notify := d.cfg.notify && d.notify.Due(now)
	return sqlcore.Batches(sizes, d.n.d.MaxParams()/writeParams, func(start, end int) error {
		channel := ""
		if notify {
			channel = d.n.written
		}
		notify = false // once per Write is enough
		query := sqlcore.InsertSQL(d.n.d, d.n.log, writeColumns, writeParams, end-start, channel)
		if err := x.Exec(ctx, query, d.rowArgs(msgs[start:end], parts, now)); err != nil {
			return fail("write", msgs[start].Topic, "", fmt.Sprintf("insert %d rows", end-start), err)
		}
		return nil
	})
}

func (d *Driver) rowArgs(msgs []*herald.Message, parts int, now time.Time) []any {
	args := make([]any, 0, len(msgs)*writeParams)
	var buf []byte
	for _, m := range msgs {
		var v sqlcore.Values
		v, buf = d.n.d.MessageValues(m, now, buf)
		args = append(args, m.Topic, d.partOf(m.Key, parts), v.ID, m.Key, v.Headers, m.ContentType, v.Payload, v.Time)
	}
	return args
}

// partOf places a message: its key's partition, or round robin.
func (d *Driver) partOf(key string, parts int) int {
	if key == "" {
		return int(d.rr.Add(1)-1) % parts
	}
	return keyhash.Partition(key, parts)
}

// oneStatement reports whether a batch of rows of these sizes is one INSERT.
func (d *Driver) oneStatement(sizes []int) bool {
	runs := 0
	_ = sqlcore.Batches(sizes, d.n.d.MaxParams()/writeParams, func(int, int) error { runs++; return nil })
	return runs == 1
}
