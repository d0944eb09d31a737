package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/outbox"
)

const relayAbout = `Forwards the committed rows of an outbox table (see package
github.com/heraldbus/herald/sql/outbox) to Kafka, Redis, NATS JetStream
or RabbitMQ. Run one or
several: one relay per table delivers at a time, the others stand by and
one takes over within -lock-retry-interval of the active one dying.

Before it starts it checks, within -startup-timeout, that the database
answers, the outbox tables exist (or creates them with -migrate) and the
target answers; when one does not it exits 1 with the reason. It logs JSON
lines to standard error, among them one "herald relay: event" line per
change of leadership (active, standby, lease_lost) and per round it could
not deliver (round_failed). SIGINT or SIGTERM stops it gracefully, also
during the start-up: the round in flight finishes within -shutdown-timeout.

With -http it serves /healthz (the process runs), /readyz (the relay runs,
its database answers, its backlog is not too old: 200 or 503 with a JSON
body) and /metrics (Prometheus text: the herald.outbox.* metrics and
herald_relay_events_total by event).

Every flag can be set from the environment variable named after it; a flag
on the command line wins.

Exit status: 0 after a clean stop, 1 when the relay could not start, 2 for
bad flags or environment.`

// relayConfig is everything "herald relay" is configured with.
type relayConfig struct {
	DB      dbFlags
	Migrate bool

	Target string // empty: the broker whose address is set (Kafka first)
	brokerFlags

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
	HTTP            string
	LogLevel        string
}

func newRelayFlags(c *relayConfig) *flagSet {
	f := newFlagSet("herald relay", "[flags]", relayAbout, false)
	c.DB.register(f)
	f.bool(&c.Migrate, "migrate", "HERALD_OUTBOX_MIGRATE", false, "create the outbox tables first if they do not exist")
	f.str(&c.Target, "target", "HERALD_RELAY_TARGET", "", brokerKinds+", or memory (drops messages; for trying things out) (default: the first of "+brokerAddrs+" that is set)")
	c.registerBrokers(f, "herald-relay", true)
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
	f.duration(&c.StartupTimeout, "startup-timeout", "HERALD_RELAY_STARTUP_TIMEOUT", 10*time.Second, "bound of the start-up checks (database, tables, target)")
	f.duration(&c.ShutdownTimeout, "shutdown-timeout", "HERALD_RELAY_SHUTDOWN_TIMEOUT", 10*time.Second, "bound of the graceful stop")
	f.str(&c.HTTP, "http", "HERALD_RELAY_HTTP", "", "serve /healthz, /readyz and /metrics on this address, host:port (default: no listener)")
	f.str(&c.LogLevel, "log-level", "HERALD_LOG_LEVEL", "info", "debug, info, warn or error")
	return f
}

// resolve fills in what follows from other settings.
func (c *relayConfig) resolve() {
	c.DB.resolve()
	c.inferBroker(&c.Target)
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

// Validate reports every problem of c at once.
func (c relayConfig) Validate() error {
	errs := append(c.DB.validate(true), c.flagProblems()...)
	errs = append(errs, c.targetProblems()...)
	if err := outbox.ValidateRelayOptions(c.relayOptions()...); err != nil {
		errs = append(errs, err)
	}
	if c.StatsInterval < 0 {
		errs = append(errs, fmt.Errorf("-stats-interval %v: want 0 (never) or more", c.StatsInterval))
	}
	if c.StartupTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-startup-timeout %v: want more than 0", c.StartupTimeout))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-shutdown-timeout %v: want more than 0", c.ShutdownTimeout))
	}
	if c.HTTP != "" {
		if err := checkListenAddr(c.HTTP); err != nil {
			errs = append(errs, fmt.Errorf("-http %q: %w", c.HTTP, err))
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("-log-level %q: %w", c.LogLevel, err))
	}
	return errors.Join(errs...)
}

// runRelay is "herald relay".
func runRelay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var cfg relayConfig
	f := newRelayFlags(&cfg)
	if code := f.setUp(args, getenv, stdout, stderr, func() error { cfg.resolve(); return cfg.Validate() }); code >= 0 {
		return code
	}
	level, _ := parseLevel(cfg.LogLevel)
	logger := newLogger(stderr, level)
	target, closeTarget, err := openTarget(cfg, logger)
	if err != nil {
		logger.Error("herald relay: cannot start: target", slog.Any("error", err))
		if errors.Is(err, herald.ErrInvalidOption) { // a value only the driver checks, such as a -nats-stream-prefix
			return 2
		}
		return 1
	}
	defer func() {
		if err := closeTarget(); err != nil {
			logger.Warn("herald relay: close target", slog.Any("error", err))
		}
	}()
	db, err := cfg.DB.open()
	if err != nil {
		logger.Error("herald relay: cannot start: database", slog.Any("error", err))
		return 1
	}
	defer db.Close()
	if err := relayMain(ctx, cfg, db, target, logger); err != nil {
		logger.Error("herald relay", slog.Any("error", err))
		return 1
	}
	return 0
}

// targetProblems checks -target against the addresses given.
func (c relayConfig) targetProblems() []error {
	switch c.Target {
	case targetMemory:
		return nil
	case "":
		return []error{fmt.Errorf("-target is required (%s or memory), or set %s", brokerKinds, brokerAddrs)}
	}
	errs, known := c.kindProblems("-target", c.Target)
	if !known {
		return []error{fmt.Errorf("-target %q: want %s or memory", c.Target, brokerKinds)}
	}
	return errs
}

// openTarget connects the writer the relay forwards to; the returned
// function releases it.
func openTarget(cfg relayConfig, logger *slog.Logger) (herald.Writer, func() error, error) {
	if cfg.Target != targetMemory {
		b, err := cfg.openBroker(cfg.Target, logger)
		if err != nil {
			return nil, nil, err
		}
		return b.writer, b.close, nil
	}
	logger.Warn("herald relay: target memory keeps messages in this process only, where nothing reads them; use it to try the relay out")
	b, err := memdriver.New()
	if err != nil {
		return nil, nil, err
	}
	return b, b.Close, nil
}

// relayMain migrates if asked, checks that the relay can work (the
// database, its tables, the target), then relays until ctx ends, and
// stops gracefully within cfg.ShutdownTimeout. A failed check is an error
// (the relay never started); a stop signal during the start-up is a clean
// stop.
func relayMain(ctx context.Context, cfg relayConfig, db *sql.DB, target herald.Writer, logger *slog.Logger) error {
	dialect := cfg.DB.dialect()
	table := cfg.DB.Table
	startup, cancel := context.WithTimeout(ctx, cfg.StartupTimeout)
	defer cancel()
	if cfg.Migrate {
		if err := outbox.Migrate(startup, db, dialect, table); err != nil {
			return startupError(ctx, logger, err)
		}
		logger.Info("herald relay: tables ready", slog.String("table", table))
	}
	var admin *adminServer
	opts := append(cfg.relayOptions(), outbox.WithLogger(logger))
	var events metric.Int64Counter
	if cfg.HTTP != "" {
		m, err := newMetrics()
		if err != nil {
			return startupError(ctx, logger, err)
		}
		defer m.shutdown()
		opts = append(opts, outbox.WithMeterProvider(m.provider))
		events, err = m.provider.Meter("herald relay").Int64Counter("herald.relay.events", metric.WithUnit("{event}"),
			metric.WithDescription("Relay events: active, standby, lease_lost, round_failed."))
		if err != nil {
			return startupError(ctx, logger, err)
		}
		admin = &adminServer{metrics: m.handler}
	}
	opts = append(opts, outbox.WithEventHook(func(e outbox.RelayEvent) {
		attrs := []slog.Attr{slog.String("event", e.Kind.String()), slog.String("table", e.Table)}
		level := slog.LevelInfo
		if e.Err != nil {
			attrs = append(attrs, slog.Any("error", e.Err))
			level = slog.LevelWarn
		}
		if e.Kind == outbox.RoundFailed {
			attrs = append(attrs, slog.Int("rows", e.Rows), slog.Bool("outage", e.Outage))
		}
		logger.LogAttrs(context.Background(), level, "herald relay: event", attrs...)
		if events != nil {
			events.Add(context.Background(), 1, metric.WithAttributes(attribute.String("event", e.Kind.String())))
		}
	}))
	if cfg.StatsInterval > 0 {
		opts = append(opts, outbox.WithStatsHook(cfg.StatsInterval, func(s outbox.Stats) {
			logger.Info("herald relay: stats",
				slog.String("table", table), slog.Bool("active", s.Active),
				slog.Int64("backlog", s.Backlog), slog.Duration("oldest_age", s.OldestAge),
				slog.Int64("quarantine", s.Quarantine), slog.Uint64("sent", s.Sent),
				slog.Uint64("failures", s.Failures), slog.Uint64("quarantined", s.Quarantined),
				slog.Uint64("reads", s.Reads))
		}))
	}
	r, err := outbox.NewRelay(db, dialect, table, target, opts...)
	if err != nil {
		return err
	}
	if err := r.Check(startup); err != nil {
		return startupError(ctx, logger, err)
	}
	cancel()
	if admin != nil {
		admin.ready = r
		if err := admin.start(cfg.HTTP, logger); err != nil {
			return startupError(ctx, logger, err)
		}
		defer admin.stop()
	}
	logger.Info("herald relay: starting", slog.String("table", table), slog.String("dialect", dialect.String()),
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
