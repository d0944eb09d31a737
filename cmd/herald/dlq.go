package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/sql/sqldriver"
)

const dlqUsage = `Usage:

	herald dlq list    [flags]                      list the entries of a dead-letter topic
	herald dlq show    [flags] POSITION|ID          print one entry: fields, headers, payload
	herald dlq redrive [flags] (-all | POSITION|ID ...)
	                                                write entries back to their original topics

A dead-letter topic is where herald.WithDeadLetter parks the messages a
subscriber gave up on ("<topic>.dlq"). Positions are "partition:offset" on
Kafka, stream entry IDs on Redis, stream sequences on NATS JetStream,
stream offsets on RabbitMQ (the driver keeps each dead-letter topic in a
stream of its own) and "partition:position" in the log table of the SQL
driver (github.com/heraldbus/herald/sql/sqldriver); an ID is the message
ID. The memory driver keeps nothing outside its process, so -driver is one
of kafka, redis, nats, rabbitmq and sql.

redrive writes each entry to its original topic with the same ID, key,
payload and headers (the herald-dlq-* headers removed), addressed to the
group that gave up on it, then marks it redriven: Redis and NATS delete
the entry, Kafka records its position in the topic "<dead-letter
topic>.redriven", RabbitMQ in the stream "<dead-letter stream>#redriven",
the SQL driver in the table "<table>_redriven".
That group handles the message again, also when it deduplicates; the
topic's other groups skip it. It is safe to re-run: a run cut short writes
the last batch again, never loses it, and a second copy of a redrive is
deduplicated. Entries dead-lettered after the run started are left for the
next run.

Exit status: 0 on success; 1 when the broker failed, an entry was not
found, or an entry could not be redriven (no valid original topic); 2 for
bad flags, arguments or names.

Run "herald dlq list -h" (or show, redrive) for the flags.
`

// dlqConfig is what the "herald dlq" subcommands are configured with.
type dlqConfig struct {
	Driver string // a broker or sql; empty: inferred from the addresses
	brokerFlags
	SQL   dbFlags // the SQL driver's log
	Topic string

	Limit     int  // list
	JSON      bool // list
	All       bool // redrive
	DryRun    bool // redrive
	BatchSize int  // redrive
	// Partitions is the SQL log's partition count, which redrive's writes
	// must agree with (nil for list and show: they do not write).
	Partitions *int
	Args       []string
}

// dlqStore is an opened dead-letter store and the writer redrive uses.
type dlqStore struct {
	store  dlq.Store
	writer herald.Writer
	close  func() error
}

// runDLQ is "herald dlq".
func runDLQ(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	sub, code := subcommand("dlq", dlqUsage, args, []string{"list", "show", "redrive"}, stdout, stderr)
	if code >= 0 {
		return code
	}
	var cfg dlqConfig
	f := newDLQFlags(sub, &cfg)
	if code := f.setUp(args[1:], getenv, stdout, stderr, func() error {
		cfg.Args = f.Args()
		cfg.resolve()
		return cfg.validate(sub)
	}); code >= 0 {
		return code
	}
	s, err := cfg.open(newLogger(stderr, slog.LevelWarn))
	if err != nil {
		f.fail(stderr, err)
		if errors.Is(err, herald.ErrInvalidOption) { // a value only the driver checks, such as a -sql-table too long for its companions
			fmt.Fprintf(stderr, "Run '%s -h' for usage.\n", f.name)
			return 2
		}
		return 1
	}
	defer func() {
		if err := s.close(); err != nil {
			f.fail(stderr, fmt.Errorf("close: %w", err))
		}
	}()
	switch sub {
	case "list":
		err = dlqList(ctx, cfg, s, stdout, stderr)
	case "show":
		err = dlqShow(ctx, cfg, s, stdout)
	default:
		err = dlqRedrive(ctx, cfg, s, stdout, stderr)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, herald.ErrInvalidName):
		f.fail(stderr, err)
		return 2
	case errors.Is(err, sqldriver.ErrPartitions):
		f.fail(stderr, fmt.Errorf("%w: set -sql-partitions to the log's", err))
		return 2
	default:
		f.fail(stderr, err)
		return 1
	}
}

// newDLQFlags returns the flags of subcommand sub, bound to c.
func newDLQFlags(sub string, c *dlqConfig) *flagSet {
	synopsis := map[string]string{"list": "[flags]", "show": "[flags] POSITION|ID", "redrive": "[flags] (-all | POSITION|ID ...)"}[sub]
	f := newFlagSet("herald dlq "+sub, synopsis, dlqUsage, sub != "list")
	f.str(&c.Driver, "driver", "HERALD_DLQ_DRIVER", "", brokerKinds+" or sql (default: the first of "+brokerAddrs+", -sql-dsn that is set)")
	c.registerBrokers(f, "herald-dlq", false)
	c.SQL.registerAs(f, "sql-", "HERALD_SQL_", "the SQL driver's log", sqldriver.DefaultTable)
	f.str(&c.Topic, "topic", "HERALD_DLQ_TOPIC", "", "the dead-letter topic, for example orders.dlq (required)")
	switch sub {
	case "list":
		f.IntVar(&c.Limit, "limit", 50, "list at most this many entries (0: all)")
		f.BoolVar(&c.JSON, "json", false, "print one JSON object per line")
	case "redrive":
		f.BoolVar(&c.All, "all", false, "redrive every entry")
		f.BoolVar(&c.DryRun, "dry-run", false, "print what would be redriven; write and mark nothing")
		f.IntVar(&c.BatchSize, "batch-size", dlq.DefaultBatchSize, "entries written, then marked, at a time")
		c.Partitions = new(int)
		f.int(c.Partitions, "sql-partitions", "HERALD_SQL_PARTITIONS", sqldriver.DefaultPartitions,
			"partition count of the SQL driver's log (its sqldriver.WithPartitions), by which redriven keys are placed")
	}
	return f
}

// resolve infers the driver from the addresses, and the SQL dialect from
// its DSN.
func (c *dlqConfig) resolve() {
	c.inferBroker(&c.Driver)
	if c.Driver == "" && c.SQL.DSN != "" {
		c.Driver = targetSQL
	}
	c.SQL.resolve()
}

// validate reports every problem of c for subcommand sub at once.
func (c dlqConfig) validate(sub string) error {
	errs := c.flagProblems()
	switch c.Driver {
	case targetSQL:
		errs = append(errs, c.SQL.validate(true)...)
	case targetMemory:
		errs = append(errs, fmt.Errorf("-driver memory: the memory driver keeps no dead letters outside its own process; use %s or sql", brokerKinds))
	case "":
		errs = append(errs, fmt.Errorf("-driver is required (%s or sql), or set %s, -sql-dsn", brokerKinds, brokerAddrs))
	default:
		p, known := c.kindProblems("-driver", c.Driver)
		if !known {
			p = []error{fmt.Errorf("-driver %q: want %s or sql", c.Driver, brokerKinds)}
		}
		errs = append(errs, p...)
	}
	if c.Topic == "" {
		errs = append(errs, errors.New("-topic is required (the dead-letter topic, for example orders.dlq)"))
	} else if err := herald.ValidateName("topic", c.Topic); err != nil {
		errs = append(errs, fmt.Errorf("-topic: %w", err))
	}
	switch sub {
	case "list":
		if c.Limit < 0 {
			errs = append(errs, fmt.Errorf("-limit %d: want 0 (all) or more", c.Limit))
		}
	case "show":
		if len(c.Args) != 1 {
			errs = append(errs, fmt.Errorf("want one POSITION or ID, got %d arguments", len(c.Args)))
		}
	case "redrive":
		if c.All == (len(c.Args) > 0) {
			errs = append(errs, errors.New("give -all, or the POSITIONs or IDs to redrive, not both"))
		}
		if c.BatchSize <= 0 {
			errs = append(errs, fmt.Errorf("-batch-size %d: want at least 1", c.BatchSize))
		}
	}
	return errors.Join(errs...)
}

// open connects to the broker. An option the driver refuses is an error
// that wraps herald.ErrInvalidOption.
func (c dlqConfig) open(logger *slog.Logger) (dlqStore, error) {
	if c.Driver == targetSQL {
		return c.openSQL(logger)
	}
	b, err := c.openBroker(c.Driver, logger)
	if err != nil {
		return dlqStore{}, err
	}
	return dlqStore{store: b.deadLetters, writer: b.writer, close: b.close}, nil
}

// openSQL opens the database and a SQL driver on its log.
func (c dlqConfig) openSQL(logger *slog.Logger) (dlqStore, error) {
	opts := []sqldriver.Option{
		sqldriver.WithTable(c.SQL.Table),
		sqldriver.WithErrorHandler(func(err error) { logger.Warn("herald dlq", slog.Any("error", err)) }),
	}
	if c.Partitions != nil {
		opts = append(opts, sqldriver.WithPartitions(*c.Partitions))
	}
	db, err := c.SQL.open()
	if err != nil {
		return dlqStore{}, err
	}
	d, err := sqldriver.New(db, c.SQL.dialect(), opts...)
	if err != nil {
		_ = db.Close()
		return dlqStore{}, err
	}
	return dlqStore{store: d.DeadLetters(), writer: d, close: func() error { return errors.Join(d.Close(), db.Close()) }}, nil
}

// listPage is how many entries "list -limit 0" asks for at a time.
const listPage = 500

func dlqList(ctx context.Context, c dlqConfig, s dlqStore, stdout, stderr io.Writer) error {
	var entries []dlq.Entry
	cursor, more := "", false
	for {
		want := listPage
		if c.Limit > 0 {
			want = c.Limit - len(entries)
		}
		page, next, err := s.store.List(ctx, c.Topic, cursor, want)
		if err != nil {
			return err
		}
		entries = append(entries, page...)
		if next == "" {
			break
		}
		if c.Limit > 0 && len(entries) >= c.Limit {
			more = true
			break
		}
		cursor = next
	}
	if c.JSON {
		enc := json.NewEncoder(stdout)
		for _, e := range entries {
			if err := enc.Encode(newJSONEntry(e)); err != nil {
				return err
			}
		}
	} else if len(entries) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "POSITION\tID\tTOPIC\tGROUP\tATTEMPTS\tDEAD-LETTERED\tREASON")
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.Position, e.Message.ID, orDash(e.Topic), orDash(e.Group),
				e.Attempts, formatTime(e.Time, time.RFC3339), oneLine(e.Reason, 60))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	switch {
	case more:
		fmt.Fprintf(stderr, "more entries follow; raise -limit (0 lists all)\n")
	case len(entries) == 0 && !c.JSON:
		fmt.Fprintf(stderr, "no entries in %s\n", c.Topic)
	}
	return nil
}

// jsonEntry is one line of "list -json".
type jsonEntry struct {
	Position string `json:"position"`
	ID       string `json:"id"`
	Topic    string `json:"topic"`
	Group    string `json:"group"`
	Attempts int    `json:"attempts"`
	Redrives int    `json:"redrives"`
	Time     string `json:"time,omitempty"`
	Reason   string `json:"reason"`
	Key      string `json:"key,omitempty"`
}

func newJSONEntry(e dlq.Entry) jsonEntry {
	return jsonEntry{Position: e.Position, ID: e.Message.ID, Topic: e.Topic, Group: e.Group, Attempts: e.Attempts,
		Redrives: e.Redrives, Time: formatTime(e.Time, time.RFC3339Nano), Reason: e.Reason, Key: e.Message.Key}
}

func dlqShow(ctx context.Context, c dlqConfig, s dlqStore, stdout io.Writer) error {
	e, err := s.store.Get(ctx, c.Topic, c.Args[0])
	if err != nil {
		return err
	}
	m := e.Message
	for _, row := range [][2]string{
		{"position", e.Position},
		{"id", m.ID},
		{"topic", orDash(e.Topic)},
		{"group", orDash(e.Group)},
		{"attempts", fmt.Sprint(e.Attempts)},
		{"redriven", fmt.Sprintf("%d time(s) before", e.Redrives)},
		{"dead-lettered", orDash(formatTime(e.Time, time.RFC3339Nano))},
		{"reason", e.Reason},
		{"key", m.Key},
		{"content type", m.ContentType},
		{"published", orDash(formatTime(m.Time, time.RFC3339Nano))},
	} {
		// Multi-line values (a reason with a stack) stay in their column.
		fmt.Fprintf(stdout, "%-15s%s\n", row[0]+":", strings.ReplaceAll(row[1], "\n", "\n"+strings.Repeat(" ", 15)))
	}
	fmt.Fprintf(stdout, "headers:\n")
	keys := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(stdout, "  %s: %s\n", k, strings.ReplaceAll(m.Headers[k], "\n", "\n    "))
	}
	if utf8.Valid(m.Data) {
		fmt.Fprintf(stdout, "payload (%d bytes, text):\n%s\n", len(m.Data), m.Data)
	} else {
		fmt.Fprintf(stdout, "payload (%d bytes, base64):\n%s\n", len(m.Data), base64.StdEncoding.EncodeToString(m.Data))
	}
	return nil
}

func dlqRedrive(ctx context.Context, c dlqConfig, s dlqStore, stdout, stderr io.Writer) error {
	verb := "redriven"
	if c.DryRun {
		verb = "would redrive"
	}
	res, err := dlq.Redrive(ctx, s.store, s.writer, c.Topic, dlq.RedriveOptions{
		Select:    c.Args,
		BatchSize: c.BatchSize,
		DryRun:    c.DryRun,
		Progress: func(p dlq.Progress) {
			if c.DryRun {
				for _, e := range p.Batch {
					fmt.Fprintf(stdout, "would redrive %s %s to %s\n", e.Position, e.Message.ID, e.Topic)
				}
			}
			if p.Total > 0 {
				fmt.Fprintf(stderr, "%s %d/%d\n", verb, p.Done, p.Total)
			} else {
				fmt.Fprintf(stderr, "%s %d\n", verb, p.Done)
			}
		},
	})
	for _, sk := range res.Skipped {
		fmt.Fprintf(stderr, "skipped %s %s: %v\n", sk.Entry.Position, sk.Entry.Message.ID, sk.Err)
	}
	for _, sel := range res.NotFound {
		fmt.Fprintf(stderr, "not found: %s\n", sel)
	}
	summary := fmt.Sprintf("%s %s of %s", verb, countEntries(res.Redriven), c.Topic)
	if n := len(res.Skipped); n > 0 {
		summary += fmt.Sprintf("; %d skipped (left in place)", n)
	}
	if n := len(res.NotFound); n > 0 {
		summary += fmt.Sprintf("; %d not found", n)
	}
	if res.Deferred > 0 {
		summary += fmt.Sprintf("; %d dead-lettered after the start, left for the next run", res.Deferred)
	}
	fmt.Fprintln(stdout, summary)
	switch {
	case err != nil:
		return err
	case len(res.Skipped) > 0 && len(res.NotFound) > 0:
		return fmt.Errorf("%s skipped, %s not found", countEntries(len(res.Skipped)), countEntries(len(res.NotFound)))
	case len(res.Skipped) > 0:
		return fmt.Errorf("%s skipped: no valid original topic", countEntries(len(res.Skipped)))
	case len(res.NotFound) > 0:
		return fmt.Errorf("%s not found", countEntries(len(res.NotFound)))
	}
	return nil
}

func countEntries(n int) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}

func formatTime(t time.Time, layout string) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(layout)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine puts s on one line and cuts it to at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
