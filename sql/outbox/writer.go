package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/heraldbus/herald/sql/internal/sqlcore"

	"github.com/jackc/pgx/v5"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/optcheck"
)

// insertColumns are the columns of a message, which the relay reads and
// copies; the database fills id, attempts and last_error.
const insertColumns = "message_id, topic, msg_key, headers, content_type, payload, created_at"

// writeColumns are the columns the Writer fills: a message's and its due
// time (NULL when not delayed).
const writeColumns = insertColumns + ", deliver_at"

const insertParams = 8

// DefaultNotifyPause is how long a PostgreSQL Writer must have been idle
// for its next write to call pg_notify (see WithNotifyPause).
const DefaultNotifyPause = 5 * time.Millisecond

// WriterOption configures a Writer. Defaults, in one place:
//
//   - largest message: herald.DefaultMaxMessageBytes (1 MiB), see WithMaxMessageBytes
//   - PostgreSQL NOTIFY: in a write that follows a pause of DefaultNotifyPause
//     (5 ms) or more, see WithNotifyPause and WithoutNotify
//   - delayed delivery: on, with a precision of DefaultMaxPollInterval (1 s),
//     see WithDelayPrecision
type WriterOption func(*writerConfig)

type writerConfig struct {
	maxMessageBytes int
	notify          bool
	notifyPause     time.Duration
	delayPrecision  time.Duration
}

// WithDelayPrecision sets what the Writer reports as its DelayPrecision
// (herald.DelayedWriter): how late after its due time a delayed message
// may reach the relay's target. The relay looks for due rows after every
// round and at least every maximum poll interval (WithPollInterval), and
// sleeps until the next due time it knows of, so set d to the relays'
// maximum poll interval (the default, DefaultMaxPollInterval, matches the
// relay's default). Zero or less turns delayed delivery off: Write then
// refuses a message due in the future (herald.ErrDelayNotSupported), and
// a Publisher refuses it before it reaches the Writer.
func WithDelayPrecision(d time.Duration) WriterOption {
	return func(c *writerConfig) { c.delayPrecision = d }
}

// WithMaxMessageBytes sets the largest message the Writer accepts, by
// herald.Message.Size (payload, key, ID, content type and headers); a
// larger message fails the whole Write with
// herald.ErrMessageTooLarge and nothing is inserted. Zero or less disables
// the check (the database's own limits still apply). Keep it at or below
// the relay target's limit, or oversized rows end in quarantine.
func WithMaxMessageBytes(n int) WriterOption {
	return func(c *writerConfig) { c.maxMessageBytes = n }
}

func (c writerConfig) validate() error {
	p := optcheck.New("outbox: writer")
	p.If(c.maxMessageBytes < 0, "max message bytes %d: want 0 (no check) or more", c.maxMessageBytes)
	p.If(c.notifyPause < 0, "notify pause %v: want 0 or more", c.notifyPause)
	return p.Err()
}

// WithNotifyPause makes the PostgreSQL Writer call pg_notify only in a
// write that comes at least d after its previous write: the first write
// after a pause wakes the relay, and the writes of a steady stream do not
// notify, because the relay is awake then and polls (right after a round
// that found rows, then after WithPollInterval's minimum). Zero notifies in
// every write.
//
// PostgreSQL serializes the commits of notifying transactions with a
// database-wide lock held through the commit's WAL flush, so a NOTIFY in
// every transaction caps them at about one per flush (measured here: a
// 2.5-fold slowdown of single-event transactions from 16 goroutines). If
// a notifying transaction rolls back, the writes right after it wait for
// the relay's next poll. Many writer processes that each write less often
// than once per d all notify: raise d, or use WithoutNotify, if their
// total rate reaches hundreds per second.
func WithNotifyPause(d time.Duration) WriterOption {
	return func(c *writerConfig) { c.notifyPause = max(d, 0) }
}

// WithoutNotify stops the PostgreSQL Writer from calling pg_notify: relays
// find its rows by polling only. It has no effect on other dialects.
func WithoutNotify() WriterOption {
	return func(c *writerConfig) { c.notify = false }
}

// Writer is a herald.Writer that inserts messages as rows of an outbox
// table inside the caller's SQL transaction, so they are published if and
// only if that transaction commits. A Relay forwards the committed rows to
// a broker.
//
// Write takes the transaction from the context (WithTx, WithPgxTx);
// WriteTx and WritePgxTx take it as an argument. Without a transaction,
// Write fails with ErrNoTransaction: it never inserts in autocommit mode.
// A batch is one multi-row INSERT (split only past the dialect's
// bind-parameter limit or 4 MiB of data, and on PostgreSQL into its rows
// not delayed and its delayed ones, which take ids below zero). On
// PostgreSQL the first statement calls pg_notify, so a listening relay
// wakes when the transaction commits (only after a pause in the Writer's
// writes, see WithNotifyPause).
//
// Every message is checked before anything is inserted: a nil message,
// an invalid topic (herald.ValidateName), a payload above the limit
// (herald.ErrMessageTooLarge), or an ID, key or content type that its
// column cannot hold (ErrInvalidMessage) fails the whole Write and inserts
// nothing. A message with an empty ID is stored with a new KSUID, so that
// consumers can deduplicate it; a zero Time is stored as the time of the
// Write. Message.Time is kept to the microsecond.
//
// A message whose herald.HeaderDeliverAt is after the time of the Write
// is delayed: its row carries the due time (deliver_at) and the relay
// forwards it once it is due by the database's clock, within
// DelayPrecision (see "Delayed delivery" in the package doc). The header
// itself is not stored: the delay is served by the outbox, and the
// forwarded message must not be held again, or refused, by the target. A
// malformed header, or a due time beyond herald.MaxDelay, fails the whole
// Write with a *herald.DelayError wrapping herald.ErrInvalidDelay.
//
// An error from the database leaves the transaction in whatever state the
// database puts it in (PostgreSQL aborts it); the caller decides whether to
// roll back. A Writer holds no connection and is safe for concurrent use.
type Writer struct {
	t            table
	cfg          writerConfig
	single       string        // the one-row statement, the most common one
	singleNotify string        // the same with pg_notify
	pacer        sqlcore.Pacer // which writes notify
}

var _ herald.Writer = (*Writer)(nil)

// NewWriter returns a Writer for the outbox table of dialect d. The table
// must exist (see Migrate); NewWriter does not touch the database.
func NewWriter(d Dialect, table string, opts ...WriterOption) (*Writer, error) {
	t, err := newTable(d, table)
	if err != nil {
		return nil, err
	}
	cfg := writerConfig{maxMessageBytes: herald.DefaultMaxMessageBytes, notify: true, notifyPause: DefaultNotifyPause,
		delayPrecision: DefaultMaxPollInterval}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.notify = cfg.notify && d == Postgres
	w := &Writer{t: t, cfg: cfg}
	w.pacer.Pause = cfg.notifyPause
	w.single = w.insertSQL(1, false)
	w.singleNotify = w.insertSQL(1, true)
	return w, nil
}

var _ herald.DelayedWriter = (*Writer)(nil)

// DelayPrecision is the bound set by WithDelayPrecision
// (herald.DelayedWriter); zero or less when delays are off.
func (w *Writer) DelayPrecision() time.Duration { return max(w.cfg.delayPrecision, 0) }

// MessagingSystem names the outbox for telemetry (herald.MessagingSystem).
func (w *Writer) MessagingSystem() string { return "herald.outbox" }

// Table returns the name of the outbox table the Writer inserts into.
func (w *Writer) Table() string { return w.t.name }

// Dialect returns the Writer's dialect.
func (w *Writer) Dialect() Dialect { return w.t.dialect }

// WithTx returns a context that carries tx, for Writer.Write (and so for a
// herald.Bus or Publisher whose writer is an outbox Writer). The context
// must not outlive the transaction. A nil tx carries nothing.
func WithTx(ctx context.Context, tx *sql.Tx) context.Context {
	return sqlcore.WithTx(ctx, tx)
}

// WithPgxTx is WithTx for a native pgx transaction (pgx.Conn.Begin,
// pgxpool.Pool.Begin); only a Postgres Writer accepts it.
func WithPgxTx(ctx context.Context, tx pgx.Tx) context.Context {
	return sqlcore.WithPgxTx(ctx, tx)
}

// Write inserts msgs in the transaction that ctx carries (WithTx,
// WithPgxTx), or fails with ErrNoTransaction. A nil or empty msgs is a
// no-op. See Writer for what is checked and how the rows are written.
func (w *Writer) Write(ctx context.Context, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	x := sqlcore.TxFrom(ctx)
	if x == nil {
		return fmt.Errorf("outbox: write %d messages to %s: %w", len(msgs), w.t.name, ErrNoTransaction)
	}
	return w.write(ctx, x, msgs)
}

// InTransaction reports whether ctx carries a transaction Write writes in
// (WithTx, WithPgxTx): what herald.WithOutbox asks to choose between this
// Writer and the driver (herald.TransactionalWriter).
func (w *Writer) InTransaction(ctx context.Context) bool {
	x := sqlcore.TxFrom(ctx)
	return x != nil
}

var _ herald.TransactionalWriter = (*Writer)(nil)

// WriteTx inserts msgs in tx; see Write.
func (w *Writer) WriteTx(ctx context.Context, tx *sql.Tx, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if tx == nil {
		return fmt.Errorf("outbox: write %d messages to %s: %w", len(msgs), w.t.name, ErrNoTransaction)
	}
	return w.write(ctx, sqlcore.SQLTx(tx), msgs)
}

// WritePgxTx inserts msgs in a native pgx transaction; see Write.
func (w *Writer) WritePgxTx(ctx context.Context, tx pgx.Tx, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if tx == nil {
		return fmt.Errorf("outbox: write %d messages to %s: %w", len(msgs), w.t.name, ErrNoTransaction)
	}
	return w.write(ctx, sqlcore.PgxTx(tx), msgs)
}

func (w *Writer) write(ctx context.Context, x sqlcore.TxExecer, msgs []*herald.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if x.Pgx() && w.t.dialect != Postgres {
		return fmt.Errorf("outbox: write to %s: pgx.Tx with dialect %v: %w", w.t.name, w.t.dialect, ErrDialectMismatch)
	}
	sizes := make([]int, len(msgs))
	for i, m := range msgs {
		n, err := sqlcore.CheckMessage(m, w.t.name, w.cfg.maxMessageBytes)
		if err != nil {
			return err
		}
		sizes[i] = n
	}
	now := time.Now()
	due, err := w.dues(msgs, now)
	if err != nil {
		return err
	}
	notify := w.shouldNotify(now)
	return sqlcore.Batches(sizes, w.t.dialect.MaxParams()/insertParams, func(start, end int) error {
		var d []any
		if due != nil {
			d = due[start:end]
		}
		if err := w.insert(ctx, x, msgs[start:end], d, now, notify); err != nil {
			return fmt.Errorf("outbox: insert %d messages into %s: %w", end-start, w.t.name, err)
		}
		notify = false // once per Write is enough
		return nil
	})
}

// shouldNotify reports whether this write calls pg_notify: on PostgreSQL,
// when the Writer's previous write is at least the notify pause ago.
func (w *Writer) shouldNotify(now time.Time) bool {
	if !w.cfg.notify {
		return false
	}
	return w.pacer.Due(now)
}

// dues returns, per message, nil when it has no HeaderDeliverAt, noDelay
// when its due time is not after now, else its due time in Unix
// milliseconds (an int64) rounded up, so that it is never forwarded
// early. It returns nil when no message carries HeaderDeliverAt.
func (w *Writer) dues(msgs []*herald.Message, now time.Time) ([]any, error) {
	times, _, err := herald.DueTimes("outbox", msgs, now)
	if err != nil {
		return nil, err
	}
	var out []any
	for i, m := range msgs {
		if _, ok := m.Headers[herald.HeaderDeliverAt]; !ok {
			continue
		}
		if out == nil {
			out = make([]any, len(msgs))
		}
		if times == nil || times[i].IsZero() {
			out[i] = noDelay
			continue
		}
		if w.cfg.delayPrecision <= 0 {
			return nil, &herald.DelayError{Writer: "outbox", MessageID: m.ID, Topic: m.Topic, DeliverAt: times[i],
				Reason: "delayed delivery is off (WithDelayPrecision)", Err: herald.ErrDelayNotSupported}
		}
		ns := times[i].UnixNano()
		ms := ns / 1e6
		if ns%1e6 != 0 {
			ms++
		}
		out[i] = ms
	}
	return out, nil
}

// noDelay marks a message with HeaderDeliverAt that is not delayed: its
// header is stripped and its deliver_at is NULL.
var noDelay = struct{}{}

func (w *Writer) insert(ctx context.Context, x sqlcore.TxExecer, msgs []*herald.Message, due []any, now time.Time, notify bool) error {
	if w.t.dialect == Postgres && due != nil {
		return w.insertSplit(ctx, x, msgs, due, now, notify)
	}
	return w.insertRows(ctx, x, msgs, due, now, notify, "")
}

// insertSplit inserts a PostgreSQL batch with delayed rows in two
// statements: the rows not delayed, then the delayed ones with ids below
// zero (SchemaVersion 3). The first statement notifies.
func (w *Writer) insertSplit(ctx context.Context, x sqlcore.TxExecer, msgs []*herald.Message, due []any, now time.Time, notify bool) error {
	var ready, delayed []*herald.Message
	var readyDue, delayedDue []any
	for i, m := range msgs {
		if _, ok := due[i].(int64); ok {
			delayed, delayedDue = append(delayed, m), append(delayedDue, due[i])
		} else {
			ready, readyDue = append(ready, m), append(readyDue, due[i])
		}
	}
	if len(ready) > 0 {
		if err := w.insertRows(ctx, x, ready, readyDue, now, notify, ""); err != nil {
			return err
		}
		notify = false
	}
	if len(delayed) == 0 { // due by now, every one: none is delayed
		return nil
	}
	return w.insertRows(ctx, x, delayed, delayedDue, now, notify, w.t.delayedID())
}

// insertRows inserts msgs in one statement; a non-empty lead is the id
// expression of every row (a delayed row on PostgreSQL).
func (w *Writer) insertRows(ctx context.Context, x sqlcore.TxExecer, msgs []*herald.Message, due []any, now time.Time, notify bool, lead string) error {
	var query string
	switch {
	case lead != "":
		query = sqlcore.InsertSQLLead(w.t.dialect, w.t.main, "id, "+writeColumns, lead, insertParams, len(msgs), w.channel(notify))
	case len(msgs) > 1:
		query = w.insertSQL(len(msgs), notify)
	case notify:
		query = w.singleNotify
	default:
		query = w.single
	}
	args := make([]any, 0, len(msgs)*insertParams)
	var buf []byte
	for i, m := range msgs {
		var at any // NULL
		if due != nil && due[i] != nil {
			m = withoutDeliverAt(m)
			if ms, ok := due[i].(int64); ok {
				at = ms
			}
		}
		var v sqlcore.Values
		v, buf = w.t.dialect.MessageValues(m, now, buf)
		args = append(args, v.ID, m.Topic, m.Key, v.Headers, m.ContentType, v.Payload, v.Time, at)
	}
	return x.Exec(ctx, query, args)
}

// insertSQL builds the INSERT of n rows, with pg_notify if notify.
func (w *Writer) insertSQL(n int, notify bool) string {
	return sqlcore.InsertSQL(w.t.dialect, w.t.main, writeColumns, insertParams, n, w.channel(notify))
}

// channel is the NOTIFY channel of a statement that notifies, else "".
func (w *Writer) channel(notify bool) string {
	if notify {
		return w.t.channel
	}
	return ""
}

// withoutDeliverAt returns a shallow copy of m without HeaderDeliverAt;
// the caller's message is not changed.
func withoutDeliverAt(m *herald.Message) *herald.Message {
	c := *m
	c.Headers = make(herald.Headers, len(m.Headers))
	for k, v := range m.Headers {
		if k != herald.HeaderDeliverAt {
			c.Headers[k] = v
		}
	}
	return &c
}
