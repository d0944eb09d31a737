// Package sqldriver is a herald driver whose log is a SQL table in
// PostgreSQL, MySQL/MariaDB or SQLite: durable publish/subscribe with
// consumer groups, per-key order and replay for a service that owns a
// database and nothing else.
//
//	drv, err := sqldriver.New(db, sqldriver.Postgres)
//	err = drv.Migrate(ctx)                 // once, at start-up
//	bus, err := herald.NewBus(drv)
//
// # Writing
//
// Write inserts a batch as one multi-row INSERT. When the context carries
// a transaction (WithTx, WithPgxTx, or outbox.WithTx: they are the same)
// the rows are inserted in it, so a service publishes if and only if its
// business transaction commits, with no outbox relay in between; without
// one Write uses a transaction of its own. Rows carry a partition: a keyed
// message goes to the partition of its key (Kafka's murmur2, as the memory
// and Kafka drivers place keys), a keyless one round robin. A topic has
// the log's partition count (WithPartitions, fixed when Migrate creates
// the log).
//
// # Order and visibility: the sequencer
//
// Row ids are allocated when a row is inserted, but transactions commit in
// another order: a reader that followed ids would pass id 7 while the
// transaction holding id 6 is still open, and never see 6. So readers do
// not follow ids. On PostgreSQL and MySQL every row gets a second number,
// seq, from a sequencer, and readers follow seq:
//
//  1. A sequencer round is one transaction that first locks the meta row
//     (SELECT ... FOR UPDATE SKIP LOCKED): rounds are serial, across all
//     processes. Every process with an open subscription runs rounds;
//     whichever holds the lock stamps, the others only read the head.
//  2. The round reads the committed rows whose seq is NULL, oldest id
//     first (a plain MVCC read: an open writer transaction is neither
//     waited for nor seen), gives them last_seq+1, last_seq+2, ... in id
//     order, stores the new last_seq, and commits.
//  3. A row committed late is simply unstamped when an earlier round ran,
//     and is stamped by a later round, after every row stamped before it.
//
// Why no reader skips or reorders a committed row: positions only grow
// (each round starts above the previous round's last_seq, read under the
// lock); a round's stamps become visible all at once, at its commit; and
// round k+1 cannot take the lock before round k's commit has made its
// stamps visible (both databases make a transaction's changes visible
// before they release its locks). So the set of visible positions is
// always every position up to some round's last_seq, with no holes that
// fill later: a reader at position p that sees q > p has already been
// able to see every row between them. A reader's position (per group and
// partition) is the last seq it has acknowledged, so it resumes exactly
// there. Within a round rows are stamped in id order, so the messages of
// one Write, and of Writes one after another from one process, keep
// their order; rows of concurrent transactions get the order in which the
// sequencer first saw them committed. The test TestConcurrentWritersNeitherSkipNorReorder
// holds writer transactions open for random times while members read.
//
// On SQLite a write transaction holds the database's single write lock
// from its first insert to its commit, so ids are allocated in commit
// order already: readers follow id and there is no sequencer.
//
// The cost of the sequencer is one UPDATE of each row (on PostgreSQL one
// statement a round, up to 5,000 rows; on MySQL one statement per run of
// consecutive ids) and one hop of latency: a commit wakes the sequencer
// (NOTIFY on PostgreSQL, a poll on MySQL), whose commit wakes the readers.
// An idle round is one query (is anything unstamped?). On PostgreSQL a
// row so leaves two dead tuples, the stamp and the delete: the log needs
// autovacuum, which is on by default (see Retention).
//
// # Partitions, groups and members
//
// Each group keeps its position per partition in the offsets table
// (created at the group's first Subscribe, at the start that
// WithStartPosition names). The members of a group share the partitions
// with leases in the same rows: a member holds a partition while it
// renews the lease (every third of WithLease, default 6 s), and the
// members move toward an even share of the partitions (a member above
// its share hands partitions over after their running handlers finish;
// one below claims free or expired ones). When a member dies its
// partitions move after at most the lease plus a third of it. One member
// per partition at a time gives per-key order across the group; a
// failing message holds back its own key (the scheduler retries it)
// while the partition's other keys go on, but the partition's position
// cannot pass it until it is settled (at-least-once: a crash redelivers
// what was behind it). A member that lost a partition cannot commit its
// position (commits name the owner) and its undelivered messages report
// herald.Revoker's Revoked, so they do not run beside the new owner's.
// Positions are committed every WithCommitInterval (100 ms), before a
// hand-over and at Close.
//
// # Waking up
//
// On PostgreSQL writers NOTIFY (after a pause of 5 ms, so a steady stream
// does not serialize its commits on NOTIFY's lock) and the sequencer
// NOTIFYs after each round that stamped rows; each process LISTENs on one
// connection of its own. Elsewhere (and as a fallback) the log is polled
// with an adaptive interval (WithPollInterval: an eighth of the time since
// rows last arrived, between 1 ms and 1 s, so a steady stream is polled
// several times per gap between its rows): an idle process makes one sequencer
// transaction a second, and each member one read every ten seconds (a
// safety net; members read when the sequencer's head moves) and a
// heartbeat every third of the lease: three statements on PostgreSQL and
// SQLite, four on MySQL (register, renew and list its leases, count the
// live members).
//
// # Retention
//
// Rows older than WithRetention (24 h) that every group of their topic
// has acknowledged are deleted in batches of 2,000, by every process with
// subscriptions, every tenth of the retention (between 1 s and 1 min).
// Rows of a topic no group reads go by age alone (every tenth pass: it
// scans the table in id order); rows not sequenced yet are never deleted.
// On PostgreSQL, deleted and stamped rows are dead tuples until VACUUM:
// with autovacuum on (the default) the table's size levels off, with it
// off it grows with every message, so run VACUUM on the log yourself
// then.
//
// # Delayed delivery
//
// The Driver is a herald.DelayedWriter. Write puts a message whose
// herald.HeaderDeliverAt lies in the future (herald.DeliverAt,
// herald.DeliverAfter) in the delayed table (the log's name plus
// DelayedSuffix, created by Migrate) instead of the log, with its due
// time in Unix milliseconds rounded up; in the caller's transaction when
// ctx carries one, so a delayed publish commits or rolls back with it.
// Every process with subscriptions runs a mover beside its pump: every
// WithDelayPollInterval (DefaultDelayPollInterval, 250 ms), or at the
// next due time when that comes sooner, one query asks for the earliest
// due time; when rows are due, one transaction takes the sequencer's lock
// (the meta row; not on SQLite, whose writes are serial anyway), copies
// up to 500 due rows into the log in due order (INSERT ... SELECT ...
// ORDER BY due_at, id) and deletes them from the delayed table. A row is
// in one table or the other, never both and never neither, so movers in
// several processes, or one killed mid-way, neither lose nor duplicate a
// row; they take turns, so the rows of one key enter the log in due order
// (equal due times in write order), and then follow the log's order: an
// undelayed message overtakes a delayed one of its key. Due times are
// compared with the database's clock (as leases are), so the publisher's
// clock skew against the database shifts delivery by as much. The moved
// row gets a new id and is sequenced like any other, which adds the
// pump's hop to the precision (the tests log the lateness: on PostgreSQL
// and MySQL well within the poll interval at p50). Driver.Waiting counts
// a topic's delayed rows, MoveDue moves by hand. Retention does not touch
// the delayed table. A log migrated before this version has no delayed
// table until Migrate runs again: the mover reports the error, with a
// growing pause. Cost: a delayed message is written twice (the delayed
// row, then the log row) and deleted once; an idle process makes one
// query per poll interval.
//
// # What it does not do
//
// Delivery counts are not tracked (herald.Delivery.Count is 0; dead
// letters count the attempts of one process). StartLatest starts after the
// newest sequenced row: rows committed before the group was created but
// sequenced after it are delivered. A partition count cannot be changed
// once the log exists.
//
// # Group tables
//
// The driver keeps no group tables yet (herald.Table): a subscription
// given herald.WithTable fails with herald.ErrTablesNotSupported (tables kept in the same transaction as the group's position are planned).
package sqldriver
