package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	goredis "github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/redis/redisdriver"
	"github.com/heraldbus/herald/sql/outbox"
)

// Relay targets.
const (
	targetKafka  = "kafka"
	targetRedis  = "redis"
	targetMemory = "memory"
)

// relayConfig is everything "herald relay" is configured with.
type relayConfig struct {
	DSN     string
	Dialect string // empty: inferred from DSN
	Table   string
	Migrate bool

	Target          string // empty: kafka if brokers are set, else redis if an address is
	KafkaBrokers    string // comma-separated host:port list
	KafkaClientID   string
	KafkaAutoCreate bool
	RedisAddr       string
	RedisPassword   string
	RedisDB         int
	RedisKeyPrefix  string

	BatchSize       int
	Lanes           int
	MaxAttempts     int
	MinPoll         time.Duration
	MaxPoll         time.Duration
	LockRetry       time.Duration
	WriteTimeout    time.Duration
	Retention       time.Duration
	Listen          bool
	StatsInterval   time.Duration
	StartupTimeout  time.Duration
	ShutdownTimeout time.Duration
	LogLevel        string
}

// flagSet is a flag.FlagSet whose flags fall back to environment variables.
type flagSet struct {
	*flag.FlagSet
	env  map[string]string // flag name -> variable
	args bool              // arguments may follow the flags
}

func (f *flagSet) str(p *string, name, env, def, usage string) {
	f.StringVar(p, name, def, usage+" ($"+env+")")
	f.env[name] = env
}

func (f *flagSet) int(p *int, name, env string, def int, usage string) {
	f.IntVar(p, name, def, usage+" ($"+env+")")
	f.env[name] = env
}

func (f *flagSet) bool(p *bool, name, env string, def bool, usage string) {
	f.BoolVar(p, name, def, usage+" ($"+env+")")
	f.env[name] = env
}

func (f *flagSet) duration(p *time.Duration, name, env string, def time.Duration, usage string) {
	f.DurationVar(p, name, def, usage+" ($"+env+")")
	f.env[name] = env
}

// parse parses args, then sets every flag that args left alone from its
// environment variable, reporting every bad value at once.
func (f *flagSet) parse(args []string, getenv func(string) string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 && !f.args {
		return fmt.Errorf("unexpected arguments: %q", f.Args())
	}
	set := make(map[string]bool)
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		env := f.env[fl.Name]
		if set[fl.Name] || env == "" {
			return
		}
		if v := getenv(env); v != "" {
			if err := f.Set(fl.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("$%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// parseRelayFlags reads the relay's configuration from args and the
// environment. Usage goes to output on -h (flag.ErrHelp) or a bad flag.
func parseRelayFlags(args []string, getenv func(string) string, output io.Writer) (relayConfig, error) {
	var c relayConfig
	f := &flagSet{FlagSet: flag.NewFlagSet("herald relay", flag.ContinueOnError), env: make(map[string]string)}
	f.SetOutput(output)
	f.Usage = func() {
		fmt.Fprint(output, `Usage: herald relay [flags]

Forwards the committed rows of an outbox table (see package
github.com/heraldbus/herald/outbox) to Kafka or Redis. Run one or several:
one relay per table delivers at a time, the others stand by.

Flags:
`)
		f.PrintDefaults()
	}
	f.str(&c.DSN, "dsn", "HERALD_OUTBOX_DSN", "", "database to read the outbox from: postgres://..., user:pass@tcp(host:port)/db?parseTime=true, or file:path.db")
	f.str(&c.Dialect, "dialect", "HERALD_OUTBOX_DIALECT", "", "postgres, mysql or sqlite (default: inferred from -dsn)")
	f.str(&c.Table, "table", "HERALD_OUTBOX_TABLE", outbox.DefaultTable, "outbox table")
	f.bool(&c.Migrate, "migrate", "HERALD_OUTBOX_MIGRATE", false, "create the outbox tables first if they do not exist")

	f.str(&c.Target, "target", "HERALD_RELAY_TARGET", "", "kafka, redis, or memory (drops messages; for trying things out) (default: kafka if -kafka-brokers is set, else redis if -redis-addr is)")
	f.str(&c.KafkaBrokers, "kafka-brokers", "HERALD_KAFKA_BROKERS", "", "comma-separated Kafka bootstrap brokers, host:port")
	f.str(&c.KafkaClientID, "kafka-client-id", "HERALD_KAFKA_CLIENT_ID", "herald-relay", "Kafka client id")
	f.bool(&c.KafkaAutoCreate, "kafka-auto-create-topics", "HERALD_KAFKA_AUTO_CREATE_TOPICS", false, "let the brokers create missing topics")
	f.str(&c.RedisAddr, "redis-addr", "HERALD_REDIS_ADDR", "", "Redis address, host:port")
	f.str(&c.RedisPassword, "redis-password", "HERALD_REDIS_PASSWORD", "", "Redis password (prefer the environment variable)")
	f.int(&c.RedisDB, "redis-db", "HERALD_REDIS_DB", 0, "Redis database number")
	f.str(&c.RedisKeyPrefix, "redis-key-prefix", "HERALD_REDIS_KEY_PREFIX", redisdriver.DefaultKeyPrefix, "prefix of the Redis stream keys")

	f.int(&c.BatchSize, "batch-size", "HERALD_RELAY_BATCH_SIZE", outbox.DefaultBatchSize, "rows per round")
	f.int(&c.Lanes, "lanes", "HERALD_RELAY_LANES", outbox.DefaultLanes, "target writes per round that run at once (by key hash)")
	f.int(&c.MaxAttempts, "max-attempts", "HERALD_RELAY_MAX_ATTEMPTS", outbox.DefaultMaxAttempts, "failed deliveries before a row is quarantined (0: never)")
	f.duration(&c.MinPoll, "min-poll-interval", "HERALD_RELAY_MIN_POLL_INTERVAL", outbox.DefaultMinPollInterval, "first poll delay after activity")
	f.duration(&c.MaxPoll, "max-poll-interval", "HERALD_RELAY_MAX_POLL_INTERVAL", outbox.DefaultMaxPollInterval, "idle poll interval")
	f.duration(&c.LockRetry, "lock-retry-interval", "HERALD_RELAY_LOCK_RETRY_INTERVAL", outbox.DefaultLockRetryInterval, "how often a standby tries to take over")
	f.duration(&c.WriteTimeout, "write-timeout", "HERALD_RELAY_WRITE_TIMEOUT", outbox.DefaultWriteTimeout, "bound of one write to the target")
	f.duration(&c.Retention, "retention", "HERALD_RELAY_RETENTION", 0, "keep sent rows this long in <table>_sent (0: delete at once)")
	f.bool(&c.Listen, "listen", "HERALD_RELAY_LISTEN", true, "on PostgreSQL, wake on LISTEN/NOTIFY as well as polling")
	f.duration(&c.StatsInterval, "stats-interval", "HERALD_RELAY_STATS_INTERVAL", 30*time.Second, "log backlog and counters this often (0: never)")
	f.duration(&c.StartupTimeout, "startup-timeout", "HERALD_RELAY_STARTUP_TIMEOUT", 10*time.Second, "bound of the start-up checks (database, tables, target); the relay exits 1 when they fail")
	f.duration(&c.ShutdownTimeout, "shutdown-timeout", "HERALD_RELAY_SHUTDOWN_TIMEOUT", 10*time.Second, "bound of the graceful stop")
	f.str(&c.LogLevel, "log-level", "HERALD_LOG_LEVEL", "info", "debug, info, warn or error")

	if err := f.parse(args, getenv); err != nil {
		return c, err
	}
	if c.Target == "" {
		switch {
		case c.KafkaBrokers != "":
			c.Target = targetKafka
		case c.RedisAddr != "":
			c.Target = targetRedis
		}
	}
	if c.Dialect == "" {
		c.Dialect = inferDialect(c.DSN)
	}
	return c, nil
}

// inferDialect guesses the dialect from the shape of a DSN; "" when it
// cannot tell.
func inferDialect(dsn string) string {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return outbox.Postgres.String()
	case strings.Contains(dsn, "@tcp("), strings.Contains(dsn, "@unix("):
		return outbox.MySQL.String()
	case strings.HasPrefix(dsn, "file:"), strings.HasSuffix(dsn, ".db"), strings.HasSuffix(dsn, ".sqlite"), strings.HasSuffix(dsn, ".sqlite3"):
		return outbox.SQLite.String()
	}
	return ""
}

// relayOptions turns the configuration into relay options.
func (c relayConfig) relayOptions() []outbox.RelayOption {
	opts := []outbox.RelayOption{
		outbox.WithBatchSize(c.BatchSize),
		outbox.WithLanes(c.Lanes),
		outbox.WithMaxAttempts(c.MaxAttempts),
		outbox.WithPollInterval(c.MinPoll, c.MaxPoll),
		outbox.WithLockRetryInterval(c.LockRetry),
		outbox.WithWriteTimeout(c.WriteTimeout),
		outbox.WithRetention(c.Retention),
	}
	if !c.Listen {
		opts = append(opts, outbox.WithoutListen())
	}
	return opts
}

func (c relayConfig) level() (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(c.LogLevel))
	return l, err
}

// Validate reports every problem of c at once.
func (c relayConfig) Validate() error {
	var errs []error
	if c.DSN == "" {
		errs = append(errs, errors.New("-dsn is required"))
	}
	if c.Dialect == "" {
		if c.DSN != "" {
			errs = append(errs, errors.New("cannot infer the dialect from -dsn: set -dialect"))
		}
	} else if _, err := outbox.ParseDialect(c.Dialect); err != nil {
		errs = append(errs, err)
	}
	if err := outbox.ValidateTable(c.Table); err != nil {
		errs = append(errs, err)
	}
	if c.KafkaBrokers != "" {
		for _, b := range strings.Split(c.KafkaBrokers, ",") {
			if err := checkHostPort(strings.TrimSpace(b)); err != nil {
				errs = append(errs, fmt.Errorf("-kafka-brokers %q: broker %q: %w", c.KafkaBrokers, b, err))
			}
		}
	}
	if c.RedisAddr != "" {
		if err := checkHostPort(c.RedisAddr); err != nil {
			errs = append(errs, fmt.Errorf("-redis-addr %q: %w", c.RedisAddr, err))
		}
	}
	if c.RedisDB < 0 {
		errs = append(errs, fmt.Errorf("-redis-db %d: want 0 or more", c.RedisDB))
	}
	switch c.Target {
	case targetKafka:
		if c.KafkaBrokers == "" {
			errs = append(errs, errors.New("-target kafka needs -kafka-brokers"))
		}
	case targetRedis:
		if c.RedisAddr == "" {
			errs = append(errs, errors.New("-target redis needs -redis-addr"))
		}
	case targetMemory:
	case "":
		errs = append(errs, errors.New("-target is required (kafka, redis or memory), or set -kafka-brokers or -redis-addr"))
	default:
		errs = append(errs, fmt.Errorf("-target %q: want kafka, redis or memory", c.Target))
	}
	if err := outbox.ValidateRelayOptions(c.relayOptions()...); err != nil {
		errs = append(errs, err)
	}
	if c.StatsInterval < 0 {
		errs = append(errs, fmt.Errorf("-stats-interval %v: want >= 0", c.StatsInterval))
	}
	if c.StartupTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-startup-timeout %v: want > 0", c.StartupTimeout))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-shutdown-timeout %v: want > 0", c.ShutdownTimeout))
	}
	if _, err := c.level(); err != nil {
		errs = append(errs, fmt.Errorf("-log-level %q: %w", c.LogLevel, err))
	}
	return errors.Join(errs...)
}

// checkHostPort checks a host:port address with a port number.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
		return errors.New("want host:port with a port from 1 to 65535")
	}
	return nil
}

// runRelay is "herald relay".
func runRelay(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := parseRelayFlags(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "herald relay: %v\n", err)
		return 2
	}
	level, _ := cfg.level()
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))

	target, closeTarget, err := openTarget(cfg, logger)
	if err != nil {
		logger.Error("herald relay: target", slog.Any("error", err))
		return 1
	}
	defer func() {
		if err := closeTarget(); err != nil {
			logger.Warn("herald relay: close target", slog.Any("error", err))
		}
	}()
	dialect, _ := outbox.ParseDialect(cfg.Dialect)
	db, err := sql.Open(driverName(dialect), cfg.DSN)
	if err != nil {
		logger.Error("herald relay: database", slog.Any("error", err))
		return 1
	}
	defer db.Close()
	if err := relayMain(ctx, cfg, db, target, logger); err != nil {
		logger.Error("herald relay", slog.Any("error", err))
		return 1
	}
	return 0
}

func driverName(d outbox.Dialect) string {
	switch d {
	case outbox.Postgres:
		return "pgx"
	case outbox.MySQL:
		return "mysql"
	}
	return "sqlite"
}

// openTarget connects the writer the relay forwards to; the returned
// function releases it.
func openTarget(cfg relayConfig, logger *slog.Logger) (herald.Writer, func() error, error) {
	switch cfg.Target {
	case targetKafka:
		d, err := openKafka(cfg.KafkaBrokers, cfg.KafkaClientID, cfg.KafkaAutoCreate, logger)
		if err != nil {
			return nil, nil, err
		}
		return d, d.Close, nil
	case targetRedis:
		return openRedis(cfg.RedisAddr, cfg.RedisPassword, cfg.RedisDB, cfg.RedisKeyPrefix)
	default:
		logger.Warn("herald relay: target memory keeps messages in this process only, where nothing reads them; use it to try the relay out")
		b, err := memdriver.New()
		if err != nil {
			return nil, nil, err
		}
		return b, b.Close, nil
	}
}

// openKafka returns a Kafka driver for the comma-separated brokers; the
// caller closes it.
func openKafka(brokers, clientID string, autoCreate bool, logger *slog.Logger) (*kafkadriver.Driver, error) {
	opts := []kafkadriver.Option{kafkadriver.WithClientID(clientID), kafkadriver.WithLogger(logger)}
	if autoCreate {
		opts = append(opts, kafkadriver.WithAutoCreateTopics())
	}
	var list []string
	for _, b := range strings.Split(brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			list = append(list, b)
		}
	}
	return kafkadriver.New(list, opts...)
}

// openRedis returns a Redis driver and the function that closes its
// client.
func openRedis(addr, password string, db int, keyPrefix string) (*redisdriver.Driver, func() error, error) {
	client := goredis.NewClient(&goredis.Options{Addr: addr, Password: password, DB: db})
	d, err := redisdriver.New(client, redisdriver.WithKeyPrefix(keyPrefix))
	if err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	return d, client.Close, nil
}

// relayMain migrates if asked, checks that the relay can work (the
// database, its tables, the target), then relays until ctx ends, and
// stops gracefully within cfg.ShutdownTimeout. A failed check is an error
// (the relay never started); a stop signal during the start-up is a clean
// stop.
func relayMain(ctx context.Context, cfg relayConfig, db *sql.DB, target herald.Writer, logger *slog.Logger) error {
	dialect, err := outbox.ParseDialect(cfg.Dialect)
	if err != nil {
		return err
	}
	startup, cancel := context.WithTimeout(ctx, cfg.StartupTimeout)
	defer cancel()
	if cfg.Migrate {
		if err := outbox.Migrate(startup, db, dialect, cfg.Table); err != nil {
			return startupError(ctx, logger, err)
		}
		logger.Info("herald relay: tables ready", slog.String("table", cfg.Table))
	}
	opts := append(cfg.relayOptions(), outbox.WithLogger(logger))
	if cfg.StatsInterval > 0 {
		opts = append(opts, outbox.WithStatsHook(cfg.StatsInterval, func(s outbox.Stats) {
			logger.Info("herald relay: stats",
				slog.String("table", cfg.Table), slog.Bool("active", s.Active),
				slog.Int64("backlog", s.Backlog), slog.Duration("oldest_age", s.OldestAge),
				slog.Int64("quarantine", s.Quarantine), slog.Uint64("sent", s.Sent),
				slog.Uint64("failures", s.Failures), slog.Uint64("quarantined", s.Quarantined),
				slog.Uint64("reads", s.Reads))
		}))
	}
	r, err := outbox.NewRelay(db, dialect, cfg.Table, target, opts...)
	if err != nil {
		return err
	}
	if err := r.Check(startup); err != nil {
		return startupError(ctx, logger, err)
	}
	cancel()
	logger.Info("herald relay: starting", slog.String("table", cfg.Table), slog.String("dialect", dialect.String()),
		slog.String("target", cfg.Target))
	done := make(chan error, 1)
	// Run gets a context that signals do not cancel: the stop goes through
	// Shutdown, which lets the round in flight finish.
	go func() { done <- r.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-ctx.Done():
	case err := <-done:
		if err == nil {
			err = errors.New("relay stopped on its own")
		}
		return err
	}
	logger.Info("herald relay: stopping")
	sctx, cancelStop := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancelStop()
	serr := r.Shutdown(sctx)
	if err := <-done; err != nil {
		return err
	}
	if serr != nil {
		logger.Warn("herald relay: graceful stop timed out; the round in flight will be delivered again", slog.Any("error", serr))
	}
	logger.Info("herald relay: stopped")
	return nil
}

// startupError is what relayMain returns for err, met before the relay
// started: nil when a stop signal (ctx) cut the start-up short, else err
// saying the relay could not start.
func startupError(ctx context.Context, logger *slog.Logger, err error) error {
	if ctx.Err() != nil {
		logger.Info("herald relay: stopped before it started")
		return nil
	}
	return fmt.Errorf("cannot start: %w", err)
}
