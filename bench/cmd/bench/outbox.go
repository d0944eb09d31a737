package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/jackc/pgx/v5/stdlib" // the database/sql driver "pgx"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/outbox"
)

// defaultPostgresDSN is the PostgreSQL of the outbox scenario when
// HERALD_POSTGRES_DSN is unset.
const defaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// The outbox scenario's tables.
const (
	outboxTablePublish = "publish into the outbox"
	outboxTableRelay   = "relay a backlog to a handler"
	outboxTableLatency = "commit to handler at 1,000 events/s"
)

// The latency table's settings: the rate the brief asks for, and the poll
// interval that makes Watermill's SQL subscriber a fair match (its default,
// 1 s, puts its median near half a second).
const (
	outboxLatencyRate       = 1000
	outboxWatermillPollFast = 10 * time.Millisecond
)

// outboxScenario compares transactional outboxes on the PostgreSQL at
// HERALD_POSTGRES_DSN: herald's outbox (Writer inside the caller's
// transaction, Relay to the memory driver) against Watermill's
// watermill-sql (Publisher on the transaction, Subscriber), with a bare
// single-row INSERT transaction as the publish reference.
func outboxScenario() scenario {
	return scenario{
		name:   "outbox",
		about:  "PostgreSQL outbox: herald outbox.Writer + Relay vs Watermill watermill-sql vs a bare INSERT transaction",
		cases:  outboxCases,
		server: postgresServer,
	}
}

func outboxCases(cfg config) []benchCase {
	b := cfg.batch
	// Shares of -n picked for about 1-3 s per run; the relay rows run a
	// backlog of half of -n (100,000 rows by default).
	return []benchCase{
		heraldOutboxCase("herald-outbox-batch", fmt.Sprintf("outbox.Writer via Bus.PublishMessages, %d per transaction", b),
			heraldVariant{mode: publishOnly, batched: true}).in(outboxTablePublish),
		heraldOutboxCase("herald-outbox", "outbox.Writer via Bus.PublishMessages, 1 per transaction",
			heraldVariant{mode: publishOnly}).in(outboxTablePublish).scaled(0.05),
		bareInsertCase("bare-insert", "single-row INSERT transaction by hand").in(outboxTablePublish).scaled(0.05),
		bareInsertBatchCase("bare-insert-batch", fmt.Sprintf("multi-row INSERT transaction by hand, the rows and columns the Writer inserts, %d per transaction", b)).
			in(outboxTablePublish),
		watermillCase("watermill-sql-batch", fmt.Sprintf("SQL Publisher on the transaction, %d per transaction", b),
			watermillSQL(cfg), watermillVariant{mode: publishOnly, batched: true}, false).in(outboxTablePublish),
		watermillCase("watermill-sql", "SQL Publisher on the transaction, 1 per transaction",
			watermillSQL(cfg), watermillVariant{mode: publishOnly}, true).in(outboxTablePublish).scaled(0.05),

		heraldOutboxCase("herald-relay", "Relay to memdriver, Bus.Handle, concurrency 1",
			heraldVariant{mode: consumeOnly}).in(outboxTableRelay).scaled(0.5),
		watermillCase("watermill-sql-subscriber", "SQL Subscriber + Router",
			watermillSQL(cfg), watermillVariant{mode: consumeOnly}, true).in(outboxTableRelay).scaled(0.5),

		heraldOutboxCase("herald-latency", "Relay (LISTEN/NOTIFY, polling) to memdriver, Bus.Handle, defaults",
			heraldVariant{mode: paced, rate: outboxLatencyRate}).in(outboxTableLatency).scaled(0.015),
		watermillCase("watermill-sql-latency", fmt.Sprintf("SQL Subscriber + Router, PollInterval %s", outboxWatermillPollFast),
			watermillSQLPolling(cfg, outboxWatermillPollFast), watermillVariant{mode: paced, rate: outboxLatencyRate}, true).
			in(outboxTableLatency).scaled(0.015),
	}
}

// openPostgres opens the scenario's database with a pool large enough for
// every publisher (database/sql keeps only 2 idle connections by default,
// which would make each transaction dial).
func openPostgres(cfg config) (*sql.DB, error) {
	db, err := sql.Open("pgx", cfg.postgresDSN)
	if err != nil {
		return nil, fmt.Errorf("open postgres (HERALD_POSTGRES_DSN): %w", err)
	}
	db.SetMaxOpenConns(cfg.publishers + 4)
	db.SetMaxIdleConns(cfg.publishers + 4)
	return db, nil
}

// openPostgresCounted is openPostgres on a pool that counts the
// statements it sends (see openCounted).
func openPostgresCounted(cfg config) (*sql.DB, func() int64, error) {
	db, n, err := openCounted("pgx", cfg.postgresDSN)
	if err != nil {
		return nil, nil, fmt.Errorf("open postgres (HERALD_POSTGRES_DSN): %w", err)
	}
	db.SetMaxOpenConns(cfg.publishers + 4)
	db.SetMaxIdleConns(cfg.publishers + 4)
	return db, n.Load, nil
}

// postgresServer checks that PostgreSQL answers and names its version.
func postgresServer(ctx context.Context, cfg config) (string, error) {
	db, err := openPostgres(cfg)
	if err != nil {
		return "", err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var version string
	if err := db.QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		return "", fmt.Errorf("postgres (HERALD_POSTGRES_DSN): %w", err)
	}
	return "PostgreSQL " + version, nil
}

// outboxTableName derives a short table name from a run's topic: unique
// per run, valid for outbox.ValidateTable and, with Watermill's prefixes,
// far below PostgreSQL's 63-byte identifier limit.
func outboxTableName(topic string) string {
	h := fnv.New64a()
	h.Write([]byte(topic))
	return fmt.Sprintf("bench_%016x", h.Sum64())
}

// dropTables drops the given tables (quoted identifiers of our own making).
func dropTables(ctx context.Context, db *sql.DB, quoted ...string) error {
	var errs []error
	for _, t := range quoted {
		if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+t); err != nil {
			errs = append(errs, fmt.Errorf("drop table %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// countRows returns the row count of a table (a quoted identifier).
func countRows(db *sql.DB, quoted string) func(ctx context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		var n int
		err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+quoted).Scan(&n)
		return n, err
	}
}

// outboxTable is a run's outbox table, which outbox.Migrate made, on a
// pool of the run's own.
type outboxTable struct {
	db   *sql.DB
	name string
}

// migrateOutboxTable opens a pool and migrates an outbox table named after
// the run's topic.
func migrateOutboxTable(ctx context.Context, cfg config, topic string) (outboxTable, error) {
	db, err := openPostgres(cfg)
	if err != nil {
		return outboxTable{}, err
	}
	t := outboxTable{db: db, name: outboxTableName(topic)}
	if err := outbox.Migrate(ctx, db, outbox.Postgres, t.name); err != nil {
		return outboxTable{}, errors.Join(fmt.Errorf("migrate outbox table %s: %w", t.name, err), t.release(ctx))
	}
	return t, nil
}

// quoted is the table's name as an SQL identifier.
func (t outboxTable) quoted() string { return `"` + t.name + `"` }

// stored counts the rows of the table.
func (t outboxTable) stored(ctx context.Context) (int, error) {
	return countRows(t.db, t.quoted())(ctx)
}

// release drops the tables outbox.Migrate made and closes the pool.
func (t outboxTable) release(ctx context.Context) error {
	quoted := []string{t.quoted(), `"` + t.name + `_quarantine"`, `"` + t.name + `_sent"`}
	return errors.Join(dropTables(ctx, t.db, quoted...), t.db.Close())
}

// inTx runs f in a transaction and commits it.
func inTx(ctx context.Context, db *sql.DB, f func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}

// heraldOutboxCase measures herald's outbox: a Bus whose publishing goes
// to an outbox.Writer, each publish call one transaction; in consumeOnly, a
// Relay forwards the backlog to the memory driver, where the Bus's handler
// counts it.
func heraldOutboxCase(id, label string, v heraldVariant) benchCase {
	return benchCase{
		id:          id,
		system:      "herald",
		label:       label,
		mode:        v.mode,
		concurrency: 1,
		setup: func(ctx context.Context, p runParams) (*pipeline, error) {
			return setupHeraldOutbox(ctx, p, v)
		},
	}
}

func setupHeraldOutbox(ctx context.Context, p runParams, v heraldVariant) (*pipeline, error) {
	cfg := p.cfg
	t, err := migrateOutboxTable(ctx, cfg, p.topic)
	if err != nil {
		return nil, err
	}
	db, release := t.db, t.release
	w, err := outbox.NewWriter(outbox.Postgres, t.name)
	if err != nil {
		return nil, errors.Join(err, release(ctx))
	}
	cnt := newCounter(p.n, 0)
	broker, err := memdriver.New()
	if err != nil {
		return nil, errors.Join(err, release(ctx))
	}
	bus, err := herald.NewBus(broker,
		herald.WithPublishWriter(w),
		herald.WithLogger(slog.New(slog.DiscardHandler)),
		herald.WithErrorHandler(func(err error) { cnt.fail(fmt.Errorf("bus reported: %w", err)) }),
	)
	if err != nil {
		return nil, errors.Join(err, broker.Close(), release(ctx))
	}
	relay, err := outbox.NewRelay(db, outbox.Postgres, t.name, broker,
		outbox.WithLogger(slog.New(reportingHandler{report: func(err error) { cnt.fail(fmt.Errorf("relay reported: %w", err)) }})))
	if err != nil {
		return nil, errors.Join(err, bus.Shutdown(ctx), broker.Close(), release(ctx))
	}
	topic := p.topic
	data := payload(cfg.payloadBytes)
	var (
		started  bool
		relayEnd = make(chan error, 1)
	)
	s := stages{
		mode:    v.mode,
		batch:   cfg.perCall(v.batched),
		rate:    v.rate,
		counter: cnt,
		stored:  t.stored,
		publish: func(ctx context.Context, first, count int) error {
			msgs := make([]*herald.Message, count)
			for i := range msgs {
				msgs[i] = &herald.Message{Topic: topic, Data: data}
				if v.mode == paced {
					// The index as ID lets the handler find the publish time.
					msgs[i].ID = strconv.Itoa(first + i)
				}
			}
			return inTx(ctx, db, func(tx *sql.Tx) error { return bus.PublishMessages(outbox.WithTx(ctx, tx), msgs...) })
		},
		warmUp: func(ctx context.Context) error {
			return inTx(ctx, db, func(tx *sql.Tx) error {
				return bus.PublishMessages(outbox.WithTx(ctx, tx), &herald.Message{Topic: topic})
			})
		},
		subscribe: func() error {
			return bus.Handle(topic, benchGroup, func(_ context.Context, m *herald.Message) error {
				cnt.seenID(m.ID)
				cnt.receive(len(m.Data), cfg.payloadBytes)
				return nil
			})
		},
		start: func(ctx context.Context) error {
			if err := bus.Start(context.WithoutCancel(ctx)); err != nil {
				return err
			}
			started = true
			go func() { relayEnd <- relay.Run(context.WithoutCancel(ctx)) }()
			return nil
		},
		teardown: func(ctx context.Context) error {
			var errs []error
			if started {
				errs = append(errs, relay.Shutdown(ctx))
				select {
				case err := <-relayEnd:
					errs = append(errs, err)
				case <-ctx.Done():
					errs = append(errs, fmt.Errorf("relay did not stop: %w", ctx.Err()))
				}
			}
			errs = append(errs, bus.Shutdown(ctx), broker.Close(), release(ctx))
			return errors.Join(errs...)
		},
	}
	return assemble(ctx, p, s)
}

// bareInsertCase is the publish reference: a transaction with one
// single-row INSERT of the columns herald's Writer fills, into a table
// outbox.Migrate made; what a commit costs on this server.
func bareInsertCase(id, label string) benchCase {
	return referenceCase(id, "PostgreSQL", label, publishOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		cfg := p.cfg
		t, err := migrateOutboxTable(ctx, cfg, p.topic)
		if err != nil {
			return nil, err
		}
		insert := `INSERT INTO ` + t.quoted() + ` (message_id, topic, msg_key, content_type, payload, created_at) VALUES ($1, $2, '', '', $3, $4)`
		data := payload(cfg.payloadBytes)
		write := func(ctx context.Context, count int, data []byte) error {
			return inTx(ctx, t.db, func(tx *sql.Tx) error {
				for range count {
					if _, err := tx.ExecContext(ctx, insert, herald.NewKSUID(), p.topic, data, time.Now().UTC()); err != nil {
						return err
					}
				}
				return nil
			})
		}
		return assemble(ctx, p, stages{
			mode:     publishOnly,
			batch:    1,
			counter:  newCounter(p.n, 0),
			publish:  func(ctx context.Context, _, count int) error { return write(ctx, count, data) },
			warmUp:   func(ctx context.Context) error { return write(ctx, 1, nil) },
			stored:   t.stored,
			teardown: t.release,
		})
	})
}

// bareInsertBatchCase is the batched publish reference: a transaction
// with one multi-row INSERT of the rows the Writer inserts for a batch
// (its eight columns, headers and deliver_at NULL as for these
// messages), into a table outbox.Migrate made.
// (The table's reference is the single-row one: this row is a plain case
// beside it.)
func bareInsertBatchCase(id, label string) benchCase {
	c := referenceCase(id, "PostgreSQL", label, publishOnly, func(ctx context.Context, p runParams) (*pipeline, error) {
		cfg := p.cfg
		t, err := migrateOutboxTable(ctx, cfg, p.topic)
		if err != nil {
			return nil, err
		}
		var (
			mu         sync.Mutex
			statements = map[int]string{}
		)
		statement := func(rows int) string {
			mu.Lock()
			defer mu.Unlock()
			if q, ok := statements[rows]; ok {
				return q
			}
			var b strings.Builder
			b.WriteString("INSERT INTO " + t.quoted() + " (message_id, topic, msg_key, headers, content_type, payload, created_at, deliver_at) VALUES ")
			for r := range rows {
				if r > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "($%d,$%d,$%d,$%d,$%d,$%d,$%d,$%d)", r*8+1, r*8+2, r*8+3, r*8+4, r*8+5, r*8+6, r*8+7, r*8+8)
			}
			statements[rows] = b.String()
			return statements[rows]
		}
		data := payload(cfg.payloadBytes)
		write := func(ctx context.Context, count int, data []byte) error {
			args := make([]any, 0, 8*count)
			now := time.Now().UTC()
			for range count {
				args = append(args, herald.NewKSUID(), p.topic, "", nil, "", data, now, nil)
			}
			return inTx(ctx, t.db, func(tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, statement(count), args...)
				return err
			})
		}
		return assemble(ctx, p, stages{
			mode:     publishOnly,
			batch:    cfg.batch,
			counter:  newCounter(p.n, 0),
			publish:  func(ctx context.Context, _, count int) error { return write(ctx, count, data) },
			warmUp:   func(ctx context.Context) error { return write(ctx, 1, nil) },
			stored:   t.stored,
			teardown: t.release,
		})
	})
	c.reference = false
	return c
}

// txPublisher is how a Watermill user publishes in a transaction: a
// watermill-sql Publisher made on the *sql.Tx, per transaction (it is a
// small struct; schema initialization is not allowed on a transaction).
type txPublisher struct {
	db     *sql.DB
	config wmsql.PublisherConfig
	// beforeCommit, when set, is called with each call's messages right
	// before its COMMIT (see commitMarker).
	beforeCommit func(msgs []*message.Message)
}

func (p *txPublisher) Publish(topic string, msgs ...*message.Message) error {
	ctx := context.Background()
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	pub, err := wmsql.NewPublisher(tx, p.config, watermill.NopLogger{})
	if err == nil {
		err = pub.Publish(topic, msgs...)
	}
	if err != nil {
		return errors.Join(err, tx.Rollback())
	}
	if p.beforeCommit != nil {
		p.beforeCommit(msgs)
	}
	return tx.Commit()
}

func (p *txPublisher) Close() error { return nil }

func (p *txPublisher) markBeforeCommit(f func(msgs []*message.Message)) { p.beforeCommit = f }

// watermillSQL gives each Watermill run a publisher that publishes in a
// transaction per call and a subscriber, on a short topic (its tables are
// watermill_<topic> and watermill_offsets_<topic>) with a BYTEA payload
// column (the default is JSON, which our payload is not), created before
// the clock starts.
func watermillSQL(cfg config) watermillPubSubFunc { return watermillSQLPolling(cfg, 0) }

// watermillSQLPolling is watermillSQL with the subscriber's PollInterval
// (0: Watermill's default, 1 s).
func watermillSQLPolling(cfg config, poll time.Duration) watermillPubSubFunc {
	return watermillSQLBackend(cfg, poll, false)
}

// watermillSQLBackend is watermillSQLPolling whose pool counts its
// statements when counted is set (the idle rows).
func watermillSQLBackend(cfg config, poll time.Duration, counted bool) watermillPubSubFunc {
	return func(ctx context.Context, topic string) (watermillBackend, error) {
		var (
			db         *sql.DB
			statements func() int64
			err        error
		)
		if counted {
			db, statements, err = openPostgresCounted(cfg)
		} else {
			db, err = openPostgres(cfg)
		}
		if err != nil {
			return watermillBackend{}, err
		}
		short := outboxTableName(topic)
		schema := wmsql.DefaultPostgreSQLSchema{GeneratePayloadType: func(string) string { return "BYTEA" }}
		offsets := wmsql.DefaultPostgreSQLOffsetsAdapter{}
		release := func(ctx context.Context) error {
			return errors.Join(dropTables(ctx, db, schema.MessagesTable(short), offsets.MessagesOffsetsTable(short)), db.Close())
		}
		sub, err := wmsql.NewSubscriber(db, wmsql.SubscriberConfig{
			ConsumerGroup:    benchGroup,
			PollInterval:     poll,
			SchemaAdapter:    schema,
			OffsetsAdapter:   offsets,
			InitializeSchema: true,
		}, watermill.NopLogger{})
		if err != nil {
			return watermillBackend{}, errors.Join(err, release(ctx))
		}
		if err := sub.SubscribeInitialize(short); err != nil {
			return watermillBackend{}, errors.Join(fmt.Errorf("create the tables of topic %s: %w", short, err), sub.Close(), release(ctx))
		}
		var releaseOnce sync.Once
		return watermillBackend{
			pub:        &txPublisher{db: db, config: wmsql.PublisherConfig{SchemaAdapter: schema}},
			sub:        sub,
			topic:      short,
			statements: statements,
			stored:     countRows(db, schema.MessagesTable(short)),
			release: func(ctx context.Context) error {
				var err error
				releaseOnce.Do(func() { err = release(ctx) })
				return err
			},
		}, nil
	}
}
