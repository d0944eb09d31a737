// Package inbox gives handlers whose effects go to a SQL database
// (PostgreSQL, MySQL/MariaDB, SQLite) exactly-once effects: each message
// is handled in a transaction that also inserts its mark, (group,
// message key), into an inbox table, so the handler's writes and the
// record that the group handled the message commit together or not at
// all.
//
//	ib, err := inbox.New(db, inbox.Postgres)          // inbox.WithTable, WithRetention, ...
//	err = ib.Migrate(ctx)                              // once, at start-up (or run ib.Schema with your tool)
//	err = inbox.Subscribe(bus, ib, "billing", func(ctx context.Context, tx *sql.Tx, e OrderPlaced, m *herald.Message) error {
//		_, err := tx.ExecContext(ctx, "INSERT INTO charges ...")
//		if err != nil {
//			return err                                 // rolled back: runs again on retry or redelivery
//		}
//		return bus.Publish(ctx, OrderCharged{...})     // through the outbox: in tx too
//	}, herald.WithRetry(herald.RetryConfig{}), herald.WithDeadLetter())
//	go ib.Run(ctx)                                     // purges marks older than the retention
//
// The Handle method is the same for raw messages (Bus.Handle), and the
// Handler method returns the herald.HandlerFunc for any other use.
//
// # What happens to a delivery
//
//  1. The inbox begins a transaction on its *sql.DB (WithTxOptions).
//  2. It inserts the mark (INSERT ... ON CONFLICT DO NOTHING, INSERT
//     IGNORE, INSERT OR IGNORE), before anything else. If the mark is
//     already there, an earlier delivery committed: the transaction is
//     rolled back with nothing in it, the handler does not run, and the
//     delivery returns nil, so it is acknowledged. The subscription
//     counts it as a duplicate, as herald's dedup middleware does
//     (herald.ReportDuplicate: the span event herald.duplicate, the
//     counter herald.messages.deduplicated), and WithOnDuplicate hears
//     of it. If another delivery of the same message holds the mark
//     uncommitted, the insert waits for it on the database's row lock:
//     two concurrent deliveries never both run.
//  3. It runs the handler with the transaction, and with a context that
//     carries it (the context of outbox.WithTx and sqldriver.WithTx).
//  4. If the handler returns nil it commits, and returns nil: the
//     scheduler acknowledges the message. If the handler fails (or
//     panics) it rolls back, mark and effects, and returns the error:
//     the message is retried or redelivered and runs again.
//
// A crash at any point therefore leaves either nothing (before the
// commit: the redelivery runs the handler) or the effects with their
// mark (after the commit, before the acknowledgment: the redelivery finds
// the mark and is skipped). A commit that fails on a lost connection may
// still have committed; the message is then redelivered and skipped. The
// crash test of this package kills consumer processes with SIGKILL at
// random moments across thousands of messages and finds every effect
// exactly once on each dialect.
//
// Exactly once covers what the handler writes in tx, and nothing else: a
// call to another service, an e-mail, or a Publish that does not go
// through tx happens at least once. To publish follow-up events exactly
// once, publish through a transactional writer with the handler's ctx:
// the Bus's outbox (herald.WithOutbox(outboxWriter) or
// herald.WithPublishWriter), or the SQL driver (sql/sqldriver) when it is
// the Bus's driver on the same database. Both find tx in ctx, so the
// event rows commit with the effect and the mark.
//
// # Keys, groups and redrives
//
// The mark's key is herald.DedupKey(group, m), the key of herald's dedup
// middleware: the message ID, and for a dead-letter redrive addressed to
// the group (herald.HeaderRedriveGroup, herald.HeaderRedriveCount) the ID
// with "#redrive-" and the count. A redrive therefore runs once more in
// the group it is addressed to, and a second copy of the same redrive is
// skipped. Each group has marks of its own: two groups that handle one
// message both run. A message without an ID cannot be marked: its handler
// runs in a transaction with no mark (at least once). A key longer than
// MaxKeyBytes, not valid UTF-8, or holding a NUL byte fails permanently
// (herald.ErrPermanent, wrapping ErrInvalidMessage), which the
// dead-letter middleware parks at once.
//
// # With retry, dead letters and dedup
//
// The inbox runs innermost, inside the subscription's middleware:
// herald.WithRetry runs each attempt in a transaction of its own (a
// failed attempt rolls back its mark and effects); herald.WithDeadLetter
// parks a message the handler gave up on, with no mark left, so that a
// later redrive runs it. herald.WithDedup adds nothing the inbox does not
// do, and its store would have to agree with the database; leave it out.
//
// # Transactions and the pool
//
// An error the database reports in the transaction (a deadlock, a
// serialization failure under WithTxOptions' REPEATABLE READ or
// SERIALIZABLE, a lost connection) fails the delivery like a handler
// error: everything rolls back and the message runs again.
//
// Each running handler holds one connection of the *sql.DB for its
// transaction: give the pool more connections than the subscriptions'
// concurrency, and do not use the pool (instead of tx) inside a handler
// on a small pool. On SQLite the transaction takes the write lock at the
// mark's insert, its first statement, so handlers run one at a time and
// a deferred transaction never has to upgrade a read lock; use the DSN
// the outbox recommends (WAL, a busy timeout). The transaction is a
// *sql.Tx; native pgx transactions are not supported.
//
// # Retention
//
// Marks are kept until they are purged: Purge deletes those older than
// WithRetention (default DefaultRetention, seven days) in batches, and
// Run purges every PurgeInterval until its context ends. A message
// delivered again after its mark was purged runs again, so keep the
// retention longer than the longest a redelivery can take: a broker's
// redelivery comes within its lease, but a replay from an old offset, an
// outbox relay resending after a crash, or a dead-letter redrive can come
// days later.
//
// # Table
//
// Migrate creates the table (default DefaultTable) with the columns grp,
// msg_key and handled_at, the primary key (grp, msg_key) and an index on
// handled_at; Schema returns the statements for a migration tool. Table
// names are checked like the outbox's (lower-case letters, digits,
// underscores, at most 40 bytes) and quoted in every statement.
package inbox
