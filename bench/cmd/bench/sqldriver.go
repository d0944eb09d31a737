package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// defaultSQLBacklogs is -sql-backlogs: the consume tables' backlog sizes.
const defaultSQLBacklogs = "10000,100000"

// The sqldriver scenario's fixed settings.
const (
	// sqlLatencyRate is the steady rate of the latency tables.
	sqlLatencyRate = 1000
	// sqlWatermillPollFast makes Watermill's SQL subscriber a fair match
	// for latency, as in the outbox scenario.
	sqlWatermillPollFast = outboxWatermillPollFast
	// sqlMembersWork is the handler's sleep in the members table.
	sqlMembersWork = time.Millisecond
	// sqlPresequenceGroup is the group whose member sequences a backlog
	// before the clock starts (see sqlVariant.presequence).
	sqlPresequenceGroup = "bench-presequence"
	// sqlSetupPatience bounds a wait of the set-up: the members' balance,
	// a backlog's sequencing.
	sqlSetupPatience = 2 * time.Minute
)

// The sqldriver scenario's tables, besides one consume table per backlog
// (sqlConsumeTable).
const (
	sqlTablePublish       = "PostgreSQL: publish in the caller's transaction"
	sqlTableLatency       = "PostgreSQL: commit to handler at 1,000 events/s"
	sqlTableSQLitePublish = "SQLite: publish in the caller's transaction"
	sqlTableSQLiteConsume = "SQLite: consume a backlog, no-op handler, one member"
	sqlTableSQLiteLatency = "SQLite: commit to handler at 1,000 events/s"
)

// sqlConsumeTable names the consume table of a backlog of rows.
func sqlConsumeTable(rows int) string {
	return fmt.Sprintf("PostgreSQL: consume a backlog of %s rows, no-op handler, one member", thousands(rows))
}

// sqlMembersTable names the members table.
func sqlMembersTable(members int) string {
	return fmt.Sprintf("PostgreSQL: %d members vs 1 on %d partitions, handler sleeps 1 ms, keyed",
		members, sqldriver.DefaultPartitions)
}

// sqlBacklog is one backlog of the consume tables (-sql-backlogs): rows
// written before the clock starts, and how many of them Watermill's
// subscriber reads (all of them unless the flag says fewer: its rate falls
// as the rows ahead of it grow, so a million rows would take it hours).
type sqlBacklog struct {
	rows           int
	watermillReads int
}

// parseSQLBacklogs reads -sql-backlogs: comma-separated rows[:k].
func parseSQLBacklogs(spec string) ([]sqlBacklog, error) {
	var out []sqlBacklog
	var errs []error
	seen := make(map[string]bool)
	for item := range strings.SplitSeq(spec, ",") {
		item = strings.TrimSpace(item)
		rowsText, readsText, capped := strings.Cut(item, ":")
		rows, err := strconv.Atoi(rowsText)
		if err != nil || rows <= 0 {
			errs = append(errs, fmt.Errorf("-sql-backlogs: %q: want a positive row count, optionally :rows Watermill reads", item))
			continue
		}
		b := sqlBacklog{rows: rows, watermillReads: rows}
		if capped {
			reads, err := strconv.Atoi(readsText)
			if err != nil || reads <= 0 || reads > rows {
				errs = append(errs, fmt.Errorf("-sql-backlogs: %q: Watermill reads 1 to %d of its rows", item, rows))
				continue
			}
			b.watermillReads = reads
		}
		if tag := countTag(rows); seen[tag] {
			errs = append(errs, fmt.Errorf("-sql-backlogs: %d rows given twice", rows))
			continue
		} else {
			seen[tag] = true
		}
		out = append(out, b)
	}
	return out, errors.Join(errs...)
}

// countTag is a short form of a count for case ids: 10k, 100k, 1m, 2500.
func countTag(n int) string {
	switch {
	case n%1_000_000 == 0:
		return strconv.Itoa(n/1_000_000) + "m"
	case n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	default:
		return strconv.Itoa(n)
	}
}

// sqldriverScenario compares herald's SQL driver (sql/sqldriver), whose
// log is a table, with Watermill's watermill-sql and a bare multi-row
// INSERT on the PostgreSQL at HERALD_POSTGRES_DSN, and measures it on an
// SQLite file of each run's own.
func sqldriverScenario() scenario {
	return scenario{
		name:   "sqldriver",
		about:  "SQL driver: herald sqldriver vs Watermill watermill-sql vs a bare multi-row INSERT on PostgreSQL, and herald sqldriver on SQLite",
		cases:  sqldriverCases,
		server: postgresServer,
	}
}

func sqldriverCases(cfg config) []benchCase {
	b, c, m := cfg.batch, cfg.concurrency, cfg.sqlMembers
	k := publisherKeyCount(cfg.publishers, cfg.keys)
	pg, lite := sqldriver.Postgres, sqldriver.SQLite
	var cases []benchCase

	for _, bl := range cfg.sqlBacklogs {
		table, tag := sqlConsumeTable(bl.rows), countTag(bl.rows)
		label := "SQL Subscriber + Router"
		if bl.watermillReads < bl.rows {
			label += fmt.Sprintf(", the first %s rows of the backlog", thousands(bl.watermillReads))
		}
		cases = append(cases,
			sqlCase("sqld-consume-"+tag, "Bus.Handle, concurrency 1, rows written while no member ran (sequenced in the timed part)",
				sqlVariant{dialect: pg, mode: consumeOnly}).in(table).fixedAt(bl.rows),
			sqlCase("sqld-consume-seq-"+tag, "Bus.Handle, concurrency 1, rows sequenced before the clock (another group's member ran)",
				sqlVariant{dialect: pg, mode: consumeOnly, presequence: true}).in(table).fixedAt(bl.rows),
			watermillCase("watermill-sql-consume-"+tag, label, watermillSQL(cfg),
				watermillVariant{mode: consumeOnly, backlog: bl.rows}, true).in(table).fixedAt(bl.watermillReads),
		)
	}

	// Shares of -n picked for about 1-3 s per run.
	cases = append(cases,
		sqlCase("sqld-publish", fmt.Sprintf("Write via Bus.PublishMessages in the caller's transaction (sqldriver.WithTx), %d per transaction", b),
			sqlVariant{dialect: pg, mode: publishOnly, batched: true, inTx: true}).in(sqlTablePublish).scaled(0.5),
		sqlBareInsertCase("sqld-bare-insert", fmt.Sprintf("multi-row INSERT by hand, the rows and columns Write inserts, %d per transaction", b),
			pg).in(sqlTablePublish).scaled(0.5),
		watermillCase("watermill-sql-publish", fmt.Sprintf("SQL Publisher on the transaction, %d per transaction", b),
			watermillSQL(cfg), watermillVariant{mode: publishOnly, batched: true}, true).in(sqlTablePublish).scaled(0.5),

		sqlCase("sqld-latency", "Bus.Handle, defaults (LISTEN/NOTIFY, adaptive polling), Write in the caller's transaction",
			sqlVariant{dialect: pg, mode: paced, inTx: true, rate: sqlLatencyRate, counted: true}).in(sqlTableLatency).scaled(0.015),
		watermillLatencyCase(cfg).in(sqlTableLatency).scaled(0.015),
	)

	members := []benchCase{
		sqlCase("sqld-members-1", fmt.Sprintf("1 member (a Bus on a Driver and pool of its own), concurrency %d, %d keys", c, k),
			sqlVariant{dialect: pg, mode: endToEnd, batched: true, publisher: true, members: 1, concurrency: c, keyed: true, work: sqlMembersWork}).
			in(sqlMembersTable(m)).scaled(0.05).asBaseline(),
		sqlCase(fmt.Sprintf("sqld-members-%d", m), fmt.Sprintf("%d members (a Bus on a Driver and pool of its own each), concurrency %d each, %d keys", m, c, k),
			sqlVariant{dialect: pg, mode: endToEnd, batched: true, publisher: true, members: m, concurrency: c, keyed: true, work: sqlMembersWork}).
			in(sqlMembersTable(m)).scaled(0.05 * float64(m)),
	}
	cases = append(cases, members...)
	cases = append(cases, sleeperCeilings(members)...)

	return append(cases,
		sqlCase("sqlite-publish", fmt.Sprintf("Write via Bus.PublishMessages in the caller's transaction (sqldriver.WithTx), %d per transaction", b),
			sqlVariant{dialect: lite, mode: publishOnly, batched: true, inTx: true}).in(sqlTableSQLitePublish).scaled(0.25),
		sqlBareInsertCase("sqlite-bare-insert", fmt.Sprintf("multi-row INSERT by hand, the rows and columns Write inserts, %d per transaction", b),
			lite).in(sqlTableSQLitePublish).scaled(0.25),

		sqlCase("sqlite-consume", "Bus.Handle, concurrency 1",
			sqlVariant{dialect: lite, mode: consumeOnly}).in(sqlTableSQLiteConsume).fixedAt(cfg.sqlSQLiteRows),

		sqlCase("sqlite-latency", "Bus.Handle, defaults (adaptive polling), Write in the caller's transaction",
			sqlVariant{dialect: lite, mode: paced, inTx: true, rate: sqlLatencyRate, counted: true}).in(sqlTableSQLiteLatency).scaled(0.015),
	)
}

// watermillLatencyCase is Watermill's SQL subscriber polling every 10 ms,
// its latency taken like herald's (just before COMMIT) and its pool's
// statements counted for the idle rate.
func watermillLatencyCase(cfg config) benchCase {
	c := watermillCase("watermill-sql-latency", fmt.Sprintf("SQL Subscriber + Router, PollInterval %s", sqlWatermillPollFast),
		watermillSQLBackend(cfg, sqlWatermillPollFast, true),
		watermillVariant{mode: paced, rate: sqlLatencyRate, beforeCommit: true}, true)
	c.beforeCommit, c.idle = true, true
	return c
}

// sqlVariant is how one herald row on the SQL driver publishes and
// consumes.
type sqlVariant struct {
	dialect sqldriver.Dialect
	mode    mode
	// batched puts cfg.batch messages in each publish call instead of one.
	batched bool
	// inTx publishes in a transaction of the caller's (sqldriver.WithTx),
	// one per call; otherwise Write uses its own. A paced row's latency
	// then starts just before that transaction's COMMIT.
	inTx bool
	// presequence has a member of another group sequence a consume-only
	// backlog before the clock starts, so that the timed part only reads.
	presequence bool
	// publisher publishes through a Bus on a Driver and pool of its own
	// (another process); otherwise through the first member's.
	publisher bool
	// members is how many Buses, each on a Driver and pool of its own,
	// consume as one group (0 means 1).
	members int
	// concurrency is each member's handler concurrency (0 means 1).
	concurrency int
	// keyed gives each publishing goroutine keys of its own and checks
	// per-key order in the handler.
	keyed bool
	// work is how long the handler sleeps per message.
	work time.Duration
	// rate is the messages per second of a paced row.
	rate float64
	// counted counts the statements of the (single) member's pool, for
	// the idle rate.
	counted bool
}

// sqlCase measures herald's Bus on the SQL driver.
func sqlCase(id, label string, v sqlVariant) benchCase {
	return benchCase{
		id:           id,
		system:       "herald",
		label:        label,
		mode:         v.mode,
		standalone:   v.dialect == sqldriver.SQLite,
		concurrency:  max(v.members, 1) * max(v.concurrency, 1),
		work:         v.work,
		beforeCommit: v.mode == paced && v.inTx,
		idle:         v.counted,
		order:        v.keyed,
		setup: func(ctx context.Context, p runParams) (*pipeline, error) {
			return setupSQLDriver(ctx, p, v)
		},
	}
}

// sqlStore is one run's database: where it is, and the name of the log
// (a table of the run's own, with its companions).
type sqlStore struct {
	cfg   config
	d     sqldriver.Dialect
	dsn   string // SQLite: a file in dir
	dir   string // SQLite: the run's temporary directory
	table string
}

// sqliteDSN is the DSN the outbox and the SQL driver recommend: WAL, a
// busy timeout, immediate transactions.
func sqliteDSN(path string) string {
	return "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_txlock=immediate"
}

func newSQLStore(cfg config, d sqldriver.Dialect, topic string) (*sqlStore, error) {
	s := &sqlStore{cfg: cfg, d: d, table: outboxTableName(topic)}
	if d == sqldriver.SQLite {
		dir, err := os.MkdirTemp("", "herald-bench-sqlite-")
		if err != nil {
			return nil, err
		}
		s.dir, s.dsn = dir, sqliteDSN(filepath.Join(dir, "log.db"))
	}
	return s, nil
}

// open opens a pool of -publishers + 4 connections (see openPostgres),
// counting its statements when counted is set.
func (s *sqlStore) open(counted bool) (*sql.DB, func() int64, error) {
	if s.d != sqldriver.SQLite {
		if counted {
			return openPostgresCounted(s.cfg)
		}
		db, err := openPostgres(s.cfg)
		return db, nil, err
	}
	var (
		db         *sql.DB
		statements func() int64
		err        error
	)
	if counted {
		var n *atomic.Int64
		db, n, err = openCounted("sqlite", s.dsn)
		if n != nil {
			statements = n.Load
		}
	} else {
		db, err = sql.Open("sqlite", s.dsn)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open sqlite: %w", err)
	}
	db.SetMaxOpenConns(s.cfg.publishers + 4)
	db.SetMaxIdleConns(s.cfg.publishers + 4)
	return db, statements, nil
}

// quote quotes one of the log's tables (the same on both dialects).
func (s *sqlStore) quote(suffix string) string { return `"` + s.table + suffix + `"` }

// ph is the i-th (1-based) bind placeholder.
func (s *sqlStore) ph(i int) string {
	if s.d == sqldriver.SQLite {
		return "?"
	}
	return "$" + strconv.Itoa(i)
}

// stored counts the log's rows of topic.
func (s *sqlStore) stored(db *sql.DB, topic string) func(ctx context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		var n int
		err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+s.quote("")+" WHERE topic = "+s.ph(1), topic).Scan(&n)
		return n, err
	}
}

// release drops the log's tables through db (the SQLite file goes with its
// directory): the log and every companion Migrate made, found by name (the
// log's name and an underscore: the run's name is unique, and the driver
// may add companions), so that a schema change leaves nothing behind.
func (s *sqlStore) release(ctx context.Context, db *sql.DB) error {
	if s.d == sqldriver.SQLite {
		return nil
	}
	rows, err := db.QueryContext(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND (tablename = $1 OR tablename LIKE $2)`,
		s.table, strings.ReplaceAll(s.table, "_", `\_`)+`\_%`)
	if err != nil {
		return fmt.Errorf("list the tables of %s: %w", s.table, err)
	}
	var quoted []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		quoted = append(quoted, `"`+name+`"`)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	return dropTables(ctx, db, quoted...)
}

// removeDir removes an SQLite run's directory, once its pools are closed.
func (s *sqlStore) removeDir() error {
	if s.dir == "" {
		return nil
	}
	return os.RemoveAll(s.dir)
}

// closers are a run's teardown steps, added as the set-up builds things
// and run in reverse order, each whatever the others returned.
type closers []func(ctx context.Context) error

func (c *closers) add(f func(ctx context.Context) error) { *c = append(*c, f) }

func (c closers) close(ctx context.Context) error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i](ctx))
	}
	return errors.Join(errs...)
}

// sqlMember is one Bus on a Driver and a pool of its own.
type sqlMember struct {
	db  *sql.DB
	drv *sqldriver.Driver
	bus *herald.Bus
}

// newSQLMember opens a pool and a driver on the run's log (migrating it
// when migrate is set) and a Bus on it; its teardown goes to cl.
func newSQLMember(ctx context.Context, st *sqlStore, cl *closers, cnt *counter, migrate, counted bool) (sqlMember, func() int64, error) {
	db, statements, err := st.open(counted)
	if err != nil {
		return sqlMember{}, nil, err
	}
	cl.add(func(context.Context) error { return db.Close() })
	if migrate {
		// Dropping the tables needs a pool that is still open: this one,
		// closed right after.
		cl.add(func(ctx context.Context) error { return st.release(ctx, db) })
	}
	drv, err := sqldriver.New(db, st.d, sqldriver.WithTable(st.table),
		sqldriver.WithErrorHandler(func(err error) { cnt.fail(fmt.Errorf("driver reported: %w", err)) }))
	if err != nil {
		return sqlMember{}, nil, err
	}
	cl.add(func(context.Context) error { return drv.Close() })
	if migrate {
		if err := drv.Migrate(ctx); err != nil {
			return sqlMember{}, nil, err
		}
	}
	bus, err := herald.NewBus(drv,
		herald.WithLogger(slog.New(slog.DiscardHandler)),
		herald.WithErrorHandler(func(err error) { cnt.fail(fmt.Errorf("bus reported: %w", err)) }),
	)
	if err != nil {
		return sqlMember{}, nil, err
	}
	cl.add(bus.Shutdown)
	return sqlMember{db: db, drv: drv, bus: bus}, statements, nil
}

func setupSQLDriver(ctx context.Context, p runParams, v sqlVariant) (*pipeline, error) {
	cfg := p.cfg
	st, err := newSQLStore(cfg, v.dialect, p.topic)
	if err != nil {
		return nil, err
	}
	r := &sqlRun{v: v, cfg: cfg, topic: p.topic, data: payload(cfg.payloadBytes), cnt: newCounter(p.n, v.work)}
	r.cl = closers{func(context.Context) error { return st.removeDir() }}
	if err := r.newMembers(ctx, st); err != nil {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
		defer cancel()
		return nil, errors.Join(err, r.cl.close(closeCtx))
	}
	if v.keyed {
		r.keys, r.order = publisherKeys(p.n, cfg.publishers, cfg.keys), newKeyOrder()
	}
	var afterFill func(ctx context.Context) error
	if v.presequence {
		afterFill = func(ctx context.Context) error { return presequence(ctx, st, r.members[0], r.topic) }
	}
	return assemble(ctx, p, stages{
		mode:       v.mode,
		batch:      cfg.perCall(v.batched),
		rate:       v.rate,
		counter:    r.cnt,
		stored:     st.stored(r.pub.db, r.topic),
		afterFill:  afterFill,
		statements: r.statements,
		members:    len(r.members),
		publish: func(ctx context.Context, first, count int) error {
			return r.send(ctx, first, r.messages(first, count))
		},
		warmUp: func(ctx context.Context) error {
			return r.send(ctx, -1, []*herald.Message{{Topic: r.topic}})
		},
		subscribe: r.subscribe,
		// The subscribers outlive the timed part's context (a consume-only
		// run starts them there); the teardown stops them.
		start: func(ctx context.Context) error {
			for _, m := range r.members {
				if err := m.bus.Start(context.WithoutCancel(ctx)); err != nil {
					return err
				}
			}
			if v.mode == consumeOnly {
				return nil // the clock runs: the balance is the row's business
			}
			return waitBalanced(ctx, st, r.members[0].db, r.topic, len(r.members))
		},
		teardown: r.cl.close,
	})
}

// sqlRun is one run of a SQL driver row: its members, its publisher and
// what its messages carry.
type sqlRun struct {
	v          sqlVariant
	cfg        config
	topic      string
	data       []byte
	cnt        *counter
	cl         closers
	members    []sqlMember
	pub        sqlMember
	statements func() int64 // the first member's statement count, when counted
	keys       []string
	order      *keyOrder
}

// newMembers starts the row's members (and a publisher of its own when
// the row says so).
func (r *sqlRun) newMembers(ctx context.Context, st *sqlStore) error {
	r.members = make([]sqlMember, max(r.v.members, 1))
	for i := range r.members {
		var counted func() int64
		var err error
		if r.members[i], counted, err = newSQLMember(ctx, st, &r.cl, r.cnt, i == 0, r.v.counted && i == 0); err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
		if i == 0 {
			r.statements = counted
		}
	}
	r.pub = r.members[0]
	if r.v.publisher {
		var err error
		if r.pub, _, err = newSQLMember(ctx, st, &r.cl, r.cnt, false, false); err != nil {
			return fmt.Errorf("publisher: %w", err)
		}
	}
	return nil
}

// messages builds count messages from index first; IDs are indices when
// the row checks order or measures latency.
func (r *sqlRun) messages(first, count int) []*herald.Message {
	numbered := r.v.keyed || r.v.mode == paced
	msgs := make([]*herald.Message, count)
	for i := range msgs {
		m := &herald.Message{Topic: r.topic, Data: r.data}
		if numbered {
			m.ID = strconv.Itoa(first + i)
		}
		if r.keys != nil {
			m.Key = r.keys[first+i]
		}
		msgs[i] = m
	}
	return msgs
}

// send publishes msgs in one call: in a transaction of ours when the row
// says so, with the paced row's latency starting before COMMIT.
func (r *sqlRun) send(ctx context.Context, first int, msgs []*herald.Message) error {
	if !r.v.inTx {
		return r.pub.bus.PublishMessages(ctx, msgs...)
	}
	tx, err := r.pub.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := r.pub.bus.PublishMessages(sqldriver.WithTx(ctx, tx), msgs...); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	if r.v.mode == paced && first >= 0 {
		for i := range msgs {
			r.cnt.published(first + i)
		}
	}
	return tx.Commit()
}

func (r *sqlRun) handle(_ context.Context, m *herald.Message) error {
	r.cnt.seenID(m.ID)
	if r.order != nil && len(m.Data) > 0 {
		r.order.see(m.Key, m.ID, r.cnt)
	}
	r.cnt.receive(len(m.Data), r.cfg.payloadBytes)
	return nil
}

func (r *sqlRun) subscribe() error {
	for _, m := range r.members {
		if err := m.bus.Handle(r.topic, benchGroup, r.handle, herald.WithConcurrency(max(r.v.concurrency, 1))); err != nil {
			return err
		}
	}
	return nil
}

// presequence has a member of another group run the driver's sequencer
// over the backlog of topic, and leaves once every row has its position:
// the state of a backlog written while some process of the service had a
// subscription open.
func presequence(ctx context.Context, st *sqlStore, m sqlMember, topic string) error {
	sub, err := m.drv.Subscribe(ctx, topic, sqlPresequenceGroup)
	if err != nil {
		return err
	}
	waitErr := waitFor(ctx, "the backlog to be sequenced", func(ctx context.Context) (bool, error) {
		var left int
		err := m.db.QueryRowContext(ctx, "SELECT count(*) FROM "+st.quote("")+" WHERE seq IS NULL").Scan(&left)
		return left == 0, err
	})
	return errors.Join(waitErr, sub.Close(ctx))
}

// waitBalanced waits until the group's partitions of topic are shared by
// members owners, none with more than its fair share, so that the timed
// part sees no hand-over.
func waitBalanced(ctx context.Context, st *sqlStore, db *sql.DB, topic string, members int) error {
	query := "SELECT owner, count(*) FROM " + st.quote("_offsets") + " WHERE grp = " + st.ph(1) + " AND topic = " + st.ph(2) + " GROUP BY owner"
	return waitFor(ctx, fmt.Sprintf("%d members to share the partitions", members), func(ctx context.Context) (bool, error) {
		rows, err := db.QueryContext(ctx, query, benchGroup, topic)
		if err != nil {
			return false, err
		}
		defer rows.Close()
		var owners, total, most int
		free := false
		for rows.Next() {
			var owner sql.NullString
			var n int
			if err := rows.Scan(&owner, &n); err != nil {
				return false, err
			}
			total += n
			if !owner.Valid {
				free = true
				continue
			}
			owners++
			most = max(most, n)
		}
		if err := rows.Err(); err != nil {
			return false, err
		}
		fair := (total + members - 1) / members
		return total > 0 && !free && owners == members && most <= fair, nil
	})
}

// waitFor polls done every 20 ms until it says so, fails, or
// sqlSetupPatience passes.
func waitFor(ctx context.Context, what string, done func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, sqlSetupPatience)
	defer cancel()
	for {
		ok, err := done(ctx)
		switch {
		case err != nil:
			return fmt.Errorf("waiting for %s: %w", what, err)
		case ok:
			return nil
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		}
	}
}

// publisherKeyCount is how many distinct keys publisherKeys hands out.
func publisherKeyCount(publishers, keys int) int { return max(keys/publishers, 1) * publishers }

// publisherKeys gives message i of n a key that only the publishing
// goroutine of i (see publishAll: contiguous shares) uses, about keys
// keys in all: each key's messages are then published one after another,
// in index order, so a handler that sees a key's indices go down saw them
// out of order.
func publisherKeys(n, publishers, keys int) []string {
	perPublisher := max(keys/publishers, 1)
	out := make([]string, n)
	for p := range publishers {
		lo, hi := p*n/publishers, (p+1)*n/publishers
		for i := lo; i < hi; i++ {
			out[i] = fmt.Sprintf("p%d-k%d", p, i%perPublisher)
		}
	}
	return out
}

// keyOrder checks per-key order: the index (the message ID) of each key's
// messages must grow from one handler start to the next.
type keyOrder struct {
	mu   sync.Mutex
	last map[string]int
}

func newKeyOrder() *keyOrder { return &keyOrder{last: make(map[string]int)} }

// see records that the handler started on message id of key, and counts a
// violation in cnt when a later message of the key started before it.
func (o *keyOrder) see(key, id string, cnt *counter) {
	i, err := strconv.Atoi(id)
	if err != nil {
		cnt.fail(fmt.Errorf("message of key %q has the ID %q, not its index", key, id))
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if last, ok := o.last[key]; ok && i < last {
		cnt.violations.Add(1)
		return
	}
	o.last[key] = i
}

// sqlBareInsertCase is the publish reference of a dialect: a transaction
// with one multi-row INSERT of the rows and columns sqldriver's Write
// fills (topic, partition round robin, a KSUID, no key, headers or content
// type, the payload, the time), into a log Migrate made. Its statement
// text is built once per row count: the cheapest hand-written form.
func sqlBareInsertCase(id, label string, d sqldriver.Dialect) benchCase {
	system := "PostgreSQL"
	if d == sqldriver.SQLite {
		system = "SQLite"
	}
	c := referenceCase(id, system, label, publishOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		return setupBareInsert(ctx, p, d)
	})
	c.standalone = d == sqldriver.SQLite
	return c
}

func setupBareInsert(ctx context.Context, p runParams, d sqldriver.Dialect) (*pipeline, error) {
	cfg := p.cfg
	st, err := newSQLStore(cfg, d, p.topic)
	if err != nil {
		return nil, err
	}
	cl := closers{func(context.Context) error { return st.removeDir() }}
	cnt := newCounter(p.n, 0)
	m, _, err := newSQLMember(ctx, st, &cl, cnt, true, false)
	if err != nil {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
		defer cancel()
		return nil, errors.Join(err, cl.close(closeCtx))
	}
	var (
		mu         sync.Mutex
		statements = make(map[int]string)
		rr         atomic.Uint32 // the partition, round robin as sqldriver places keyless rows
	)
	statement := func(rows int) string {
		mu.Lock()
		defer mu.Unlock()
		q, ok := statements[rows]
		if !ok {
			var b strings.Builder
			b.WriteString("INSERT INTO " + st.quote("") + " (topic, part, message_id, msg_key, headers, content_type, payload, created_at) VALUES ")
			for r := range rows {
				if r > 0 {
					b.WriteByte(',')
				}
				b.WriteByte('(')
				for c := range 8 {
					if c > 0 {
						b.WriteByte(',')
					}
					b.WriteString(st.ph(r*8 + c + 1))
				}
				b.WriteByte(')')
			}
			q = b.String()
			statements[rows] = q
		}
		return q
	}
	timeArg := func(t time.Time) any {
		t = t.UTC().Truncate(time.Microsecond)
		if d == sqldriver.SQLite {
			return t.UnixMicro()
		}
		return t
	}
	write := func(ctx context.Context, count int, data []byte) error {
		args := make([]any, 0, 8*count)
		now := timeArg(time.Now())
		var body any
		if data != nil {
			body = data
		}
		for range count {
			part := int(rr.Add(1)-1) % sqldriver.DefaultPartitions
			args = append(args, p.topic, part, herald.NewKSUID(), "", nil, "", body, now)
		}
		return inTx(ctx, m.db, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, statement(count), args...)
			return err
		})
	}
	data := payload(cfg.payloadBytes)
	return assemble(ctx, p, stages{
		mode:     publishOnly,
		batch:    cfg.batch,
		counter:  cnt,
		publish:  func(ctx context.Context, _, count int) error { return write(ctx, count, data) },
		warmUp:   func(ctx context.Context) error { return write(ctx, 1, nil) },
		stored:   st.stored(m.db, p.topic),
		teardown: cl.close,
	})
}
