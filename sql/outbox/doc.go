// Package outbox is herald's transactional outbox: a service writes its
// events as rows in the same SQL transaction as its business data, and a
// Relay forwards the committed rows to a broker. An event is published if
// and only if the business transaction commits.
//
//	outbox.Migrate(ctx, db, outbox.SQLite, "outbox")       // once, at start-up (or run outbox.Schema with your tool)
//	w, _ := outbox.NewWriter(outbox.SQLite, "outbox")
//	bus, _ := herald.NewBus(broker, herald.WithOutbox(w))   // in a transaction: the outbox; else the broker
//	relay, _ := outbox.NewRelay(db, outbox.SQLite, "outbox", broker)
//	go relay.Run(ctx)                                       // rows go to the broker
//
//	tx, _ := db.BeginTx(ctx, nil)
//	tx.ExecContext(ctx, "INSERT INTO orders ...")
//	bus.Publish(outbox.WithTx(ctx, tx), OrderPlaced{...})  // a row in tx
//	tx.Commit()                                             // now the relay sees it
//	bus.Publish(ctx, CacheWarmed{...})                      // no transaction: straight to the broker
//
// herald.WithPublishWriter(w) instead sends every Publish to the outbox (a
// Publish without a transaction is then ErrNoTransaction, never an
// autocommit).
//
// # Dialects and drivers
//
// The package imports pgx for its own use; the database/sql driver of
// each dialect is the application's import:
//
//	import _ "github.com/jackc/pgx/v5/stdlib" // Postgres: sql.Open("pgx", "postgres://...")
//	import _ "github.com/go-sql-driver/mysql" // MySQL: sql.Open("mysql", "user@tcp(host:3306)/db?parseTime=true")
//	import _ "modernc.org/sqlite"             // SQLite: sql.Open("sqlite", "file:app.db?...")
//
// Postgres (PostgreSQL 11+, through jackc/pgx/v5: the database/sql driver
// "pgx" for Migrate and the Relay, lib/pq is not supported; a *sql.Tx or a
// native pgx.Tx for the Writer; a pgxpool.Pool user gets a *sql.DB with
// stdlib.OpenDBFromPool), MySQL (MySQL 8 / MariaDB 10.3+,
// go-sql-driver/mysql; use parseTime=true, and the default loc=UTC or one
// loc for writers and relays) and SQLite (modernc.org/sqlite, driver
// "sqlite"). On SQLite the relay is a second writer of the file: use WAL, a
// busy timeout and immediate transactions, so that neither side fails with
// SQLITE_BUSY:
//
//	file:app.db?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_txlock=immediate
//
// Call Migrate before the first write: on a new file the first connections
// race to switch it to WAL, and that switch fails at once with SQLITE_BUSY
// whatever the busy timeout. Migrate rides that race out (several
// instances may migrate one new file at once); once it has run, the file
// stays in WAL mode and no later connection switches it.
//
// Migrate creates three tables. The outbox table has the columns id
// (identity / AUTO_INCREMENT / INTEGER PRIMARY KEY AUTOINCREMENT: never
// reused), message_id, topic, msg_key (empty for none), headers (a JSON
// object or NULL), content_type, payload (BYTEA / LONGBLOB / BLOB),
// created_at (Message.Time to the microsecond; Unix microseconds on
// SQLite), attempts, last_error and deliver_at (schema version 2: NULL,
// or the due time of a delayed message in Unix milliseconds, rounded up).
// Besides the primary key it has a partial index on (deliver_at, id) of
// the delayed rows (MySQL: an index on (deliver_at, id)). On PostgreSQL
// (schema version 3) delayed rows take ids below zero, from the sequence
// table+"_delayed_id_seq", so the relay reads the rows not delayed by the
// primary key from id 0 on and an ordinary row updates one index only;
// on SQLite a partial index on id of the rows not delayed serves the
// relay's read, and on MySQL the (deliver_at, id) index does. The relay deletes what it sent. The
// table+"_quarantine" table holds rows that failed too often (the same
// columns plus outbox_id and quarantined_at); table+"_sent" holds sent rows
// under WithRetention (plus outbox_id and sent_at, indexed). Table names
// are checked by ValidateTable (lower-case letters, digits, underscore, at
// most 40 bytes) and quoted in every statement.
//
// # Writing
//
// Writer is a herald.Writer. It finds the transaction in the context
// (WithTx for a *sql.Tx, WithPgxTx for a pgx.Tx) or takes it as an
// argument (WriteTx, WritePgxTx), and fails with ErrNoTransaction without
// one: it never inserts in autocommit mode. A batch is one multi-row
// INSERT, split into several in the same transaction only past the
// dialect's bind-parameter limit (65535 on PostgreSQL and MySQL, 32766 on
// SQLite, at seven parameters a row) or 4 MiB of data. On PostgreSQL the
// INSERT statement also calls pg_notify (in some transactions only, see
// Latency below), which the server delivers when the transaction commits
// and drops when it rolls back.
//
// # Relaying: what is guaranteed
//
// At-least-once, never a loss. A row leaves the outbox table only after the
// target's Write returned nil for it. If the relay dies between the two
// (crash, killed session, lost connection), the next relay sends the row
// again: consumers see a duplicate with the same Message.ID, which herald's
// dedup middleware (or any consumer keyed on the ID) drops. A rolled-back
// transaction leaves no row and so sends nothing.
//
// No skipped rows. The relay keeps no position: every read starts at the
// smallest id still in the table. PostgreSQL sequence values (and InnoDB
// auto-increment values) are handed out when a row is inserted but become
// visible when its transaction commits, so a row can appear after rows with
// larger ids were already sent. A relay that remembered "everything up to
// id N is done" would skip it for ever; this one finds it on its next read,
// because it is still in the table.
//
// Per-key order. Rows with one Message.Key reach the target in id order, in
// one Write or in successive Writes, never concurrently; every lane (see
// WithLanes) holds whole keys and a round starts after the previous one is
// settled. After a crash (see above) a batch is delivered again, so a
// consumer may see 1 2 3 2 3 4: the first deliveries still come in order.
// The id order is the order of the writes when the transactions
// that write one key are serialized, each committing before the next one
// inserts, which is what a service gets when it updates the key's
// aggregate row in the same transaction or writes one key from one place.
// Two transactions that write the same key at the same time have no
// "publish order" between them: the relay delivers the one that commits
// first first, even if its ids are larger. The relay does not wait for
// older in-flight transactions (the pg_snapshot_xmin technique) because it
// does not need a position to avoid skipping rows, and such a wait would
// stall every key behind any long-running writing transaction on the
// database, while still not ordering concurrent writers by id.
//
// One active relay per table. Several relays (one per service instance, or
// standalone processes) may run on one table: the active one holds a
// session lock, the others are standbys that try again every
// WithLockRetryInterval. On PostgreSQL it is pg_try_advisory_lock on a
// dedicated connection (key: a hash of the schema and table name), on MySQL
// GET_LOCK (name: "herald-outbox:" database "." table). The active relay
// reads, deletes and quarantines on that same connection, so if the
// session dies its lock and its work stop together; the connection is
// closed (never returned to the pool) when the relay stops. When the active
// process dies the server ends its session and a standby takes over within
// a lock-retry interval (on a network partition, when the server's TCP
// keepalive notices). A relay that loses its session in the middle of a
// target write may overlap with its successor for that one write:
// duplicates, never a loss. Use a direct connection or session pooling,
// not transaction pooling (PgBouncer), for the relay. SQLite has no session
// locks: run one relay per database file; a second one would duplicate
// messages and break per-key order.
//
// Latency. A PostgreSQL relay whose *sql.DB uses pgx LISTENs on a second
// dedicated connection (channel "herald_outbox_" + table) and reads as soon
// as a notifying transaction commits. A Writer notifies only in a write
// that follows a pause of WithNotifyPause (5 ms) in its writes: PostgreSQL
// serializes the commits of notifying transactions, and a NOTIFY in every
// transaction costs single-event transactions more than half their
// throughput. The relay also polls, which covers the writes of a steady
// stream and every other dialect: right after a read that found rows it
// reads again at once; an empty read waits WithPollInterval's minimum
// (5 ms), doubling to its maximum (1 s) while nothing comes; a
// notification resets it. An idle relay thus issues about one query per
// second.
//
// # Delayed delivery
//
// The Writer is a herald.DelayedWriter. A message whose
// herald.HeaderDeliverAt is after the Write is stored with its due time
// in deliver_at and without the header (and, on PostgreSQL, an id below
// zero); the relay does not read it (its read is WHERE deliver_at IS
// NULL), so it holds back no row behind it.
// Before every read the active relay looks for rows due by the
// database's clock, and re-inserts up to 500 of them, in due order, as
// ordinary rows (deliver_at NULL, a new id; message_id is kept),
// deleting the delayed ones in the same transaction: a row is delayed or
// forwardable, never both and never neither, whatever crashes. From
// then on it is forwarded, retried and quarantined like any row. When
// nothing is due the relay sleeps until the next due time it saw, and at
// most its poll interval, so a row comes through at most about
// WithPollInterval's maximum after it is due (DelayPrecision; set
// WithDelayPrecision to the relays' maximum poll interval if you change
// it). Per-key order: delayed rows of one key in due order (equal due
// times in write order), also when they came due while no relay ran; a
// row that comes due goes after the rows of its key already waiting, so
// an undelayed row may overtake a delayed one. The forwarded message has
// no HeaderDeliverAt: the target neither delays it again nor refuses it
// (a target that cannot delay calls herald.RefuseDelayed), and consumers
// do not see the due time. Clocks: the due time is the publisher's, the
// comparison the database's; skew between them shifts delivery by it.
// A malformed due time, or one beyond herald.MaxDelay, fails the Write
// with a *herald.DelayError wrapping herald.ErrInvalidDelay; with
// WithDelayPrecision(0) a message due in the future fails with
// herald.ErrDelayNotSupported, and a Publisher refuses it first.
//
// # Failures and quarantine
//
// A target Write that fails is split in halves, in id order, down to
// single rows, so the failure is pinned on the row that causes it while the
// rest of the batch goes through. A row whose single-row Write failed holds
// back the later rows of its key (they wait in the table), and the failure
// is charged to the row (attempts + 1, last_error); its key is retried
// after a backoff (WithBackoff, doubling per attempt) while other keys
// flow. When a row reaches WithMaxAttempts charged failures it moves to the
// quarantine table with its last error, and its key resumes with its next
// row: the delivered rows of the key keep their order, the quarantined one
// is left out. Quarantine lists, counts, replays (at the end of the outbox,
// so after the later rows of its key) and discards quarantined rows. A row
// the relay cannot decode (headers written by hand that are not a JSON
// object of strings) fails the same way, with a permanent error.
//
// Outages are not charged to rows. A Write error that says the target is
// unreachable (a net.Error, EOF, connection refused or reset,
// herald.ErrClosed, or the Write timing out, see WithWriteTimeout) ends the
// round at once without splitting the batch; and a round in which nothing
// got through while rows of three or more keys failed counts as an outage
// whatever the errors (a broker that rejects everything). In both cases
// nothing is charged except permanent errors (herald.IsPermanent,
// herald.ErrMessageTooLarge, herald.ErrInvalidName, herald.ErrNilEvent),
// and the relay backs off as a whole (WithBackoff, doubling) and tries
// again: a broker outage, however long, does not quarantine rows or break
// their order. The round after an outage round charges nothing but
// permanent errors either: the target may come back in the middle of it,
// after refusing a row or two. The rows that failed in an outage round are
// tried after the others next time, so a few poison rows at the head of the table cannot
// pass for an outage while other rows wait behind them. The price: a
// broker that rejects one or two keys at a time with errors that are not
// network errors (no leader for a partition, for example) while no other
// traffic flows is indistinguishable from poison rows, and charges them;
// WithMaxAttempts(0) never quarantines, for services that prefer a stalled
// key to a quarantined row.
//
// Database errors end the active relay's lease: its connection is closed
// and it competes for the lock again after a backoff; Run only returns when
// it is stopped.
//
// # Operations
//
// Relay.Stats and WithStatsHook report the backlog (rows waiting), the age
// of the oldest waiting row, the quarantine size, and this relay's counts
// of rows sent, failed writes, quarantined rows and read queries.
// WithRetention keeps sent rows in table+"_sent" for a while (for audits
// and replays by hand) and purges them in batches. The herald command runs
// a relay as a standalone process: "herald relay -h".
package outbox
