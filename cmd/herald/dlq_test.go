package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	"github.com/heraldbus/herald/redis/redisdriver"
	"github.com/heraldbus/herald/redis/redistest"
	"github.com/heraldbus/herald/sql/sqldriver"
)

// dlqRun runs "herald dlq args..." and returns its exit status and output.
func dlqRun(vars map[string]string, args ...string) (code int, stdout, stderr string) {
	var out, errs bytes.Buffer
	code = run(context.Background(), append([]string{"dlq"}, args...), env(vars), &out, &errs)
	return code, out.String(), errs.String()
}

func TestDLQUsage(t *testing.T) {
	redisFlags := []string{"-redis-addr", "127.0.0.1:1"} // never dialled: the checks come first
	for _, c := range []struct {
		args []string
		vars map[string]string
		code int
		want string
	}{
		{nil, nil, 2, "missing command"},
		{[]string{"frobnicate"}, nil, 2, `unknown command "frobnicate"`},
		{[]string{"-h"}, nil, 0, "Exit status"},
		{[]string{"list", "-h"}, nil, 0, "-kafka-brokers"},
		{[]string{"list", "-topic", "orders.dlq"}, nil, 2, "-driver is required"},
		{[]string{"list", "-driver", "memory", "-topic", "orders.dlq"}, nil, 2, "memory driver keeps no dead letters"},
		{[]string{"list", "-driver", "kafka", "-topic", "orders.dlq"}, nil, 2, "-driver kafka needs -kafka-brokers"},
		{append([]string{"list"}, redisFlags...), nil, 2, "-topic is required"},
		{append([]string{"list", "-topic", "bad topic"}, redisFlags...), nil, 2, `invalid topic "bad topic"`},
		{append([]string{"list"}, redisFlags...), map[string]string{"HERALD_DLQ_TOPIC": "orders/../dlq?"}, 2, `invalid topic "orders/../dlq?"`},
		{append([]string{"list", "-topic", "orders.dlq", "-limit", "-1"}, redisFlags...), nil, 2, "-limit -1"},
		{append([]string{"list", "-topic", "orders.dlq"}, append(redisFlags, "extra")...), nil, 2, "unexpected arguments"},
		{append([]string{"show", "-topic", "orders.dlq"}, redisFlags...), nil, 2, "want one POSITION or ID"},
		{append([]string{"redrive", "-topic", "orders.dlq"}, redisFlags...), nil, 2, "give -all, or the POSITIONs or IDs"},
		{append([]string{"redrive", "-topic", "orders.dlq", "-all"}, append(redisFlags, "m1")...), nil, 2, "not both"},
		{append([]string{"redrive", "-topic", "orders.dlq", "-all", "-batch-size", "0"}, redisFlags...), nil, 2, "-batch-size 0"},
	} {
		code, stdout, stderr := dlqRun(c.vars, c.args...)
		if code != c.code || !strings.Contains(stdout+stderr, c.want) {
			t.Errorf("%q: exit %d, want %d with %q in:\n%s%s", c.args, code, c.code, c.want, stdout, stderr)
		}
	}
	if code, _, stderr := dlqRun(nil, "list", "-driver", "memory", "-topic", "bad topic"); code != 2 ||
		!strings.Contains(stderr, "memory driver") || !strings.Contains(stderr, "invalid topic") {
		t.Errorf("every problem at once: exit %d, %s", code, stderr)
	}
}

// dlqFixture publishes three messages to topic and dead-letters them with
// herald's DeadLetter middleware, as a subscriber of group "billing" that
// gives up would; m3's payload is not text.
func dlqFixture(t *testing.T, w herald.Writer, topic string) map[string]*herald.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	now := time.Now().UTC()
	sent := make(map[string]*herald.Message)
	var msgs []*herald.Message
	for i, data := range [][]byte{[]byte(`{"n":1}`), []byte(`{"n":2}`), {0xff, 0x00, 0xfe}} {
		id := fmt.Sprintf("m%d", i+1)
		m := &herald.Message{ID: id, Topic: topic, Key: "k" + id, ContentType: "application/json", Data: data, Time: now,
			Headers: herald.Headers{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
		sent[id] = m.Clone()
		msgs = append(msgs, m)
	}
	if err := w.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	for _, m := range sent {
		rec := herald.DeadLetterRecord{Reason: fmt.Sprintf("cannot bill order %s:\nthe card was declined %s", m.ID, strings.Repeat("again and ", 10)),
			Attempts: 1, Topic: m.Topic, Group: "billing", Time: time.Now()}
		if err := w.Write(ctx, []*herald.Message{rec.Message(m, herald.DeadLetterTopic(m.Topic))}); err != nil {
			t.Fatal(err)
		}
	}
	return sent
}

// testDLQCommands runs list, show and redrive against a dead-letter topic
// filled by dlqFixture; flags reach the broker.
func testDLQCommands(t *testing.T, flags []string, w herald.Writer, store dlq.Store, topic string) {
	testDLQCommandsWith(t, func(args ...string) (int, string, string) { return dlqRun(nil, args...) }, flags, w, store, topic)
}

// testDLQCommandsWith is testDLQCommands with "herald dlq args..." run by
// dlqCmd: in this process, or as a process of the built command.
func testDLQCommandsWith(t *testing.T, dlqCmd func(args ...string) (int, string, string), flags []string, w herald.Writer, store dlq.Store, topic string) {
	dlqTopic := herald.DeadLetterTopic(topic)
	sent := dlqFixture(t, w, topic)
	cmd := func(args ...string) (int, string, string) {
		return dlqCmd(append(append(args[:1:1], flags...), append([]string{"-topic", dlqTopic}, args[1:]...)...)...)
	}

	code, stdout, stderr := cmd("list")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 4 || !strings.HasPrefix(lines[0], "POSITION") {
		t.Fatalf("list: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, id := range []string{"m1", "m2", "m3"} {
		i := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, " "+id+" ") })
		if i < 0 {
			t.Errorf("list: no line for %s:\n%s", id, stdout)
			continue
		}
		f := strings.Fields(lines[i])
		if f[2] != topic || f[3] != "billing" || f[4] != "1" || !strings.Contains(lines[i], "cannot bill order "+id+": the card") ||
			!strings.HasSuffix(lines[i], "…") || strings.Count(lines[i], "again") > 5 {
			t.Errorf("list line of %s: %q", id, lines[i])
		}
	}

	code, stdout, _ = cmd("list", "-json")
	positions := make(map[string]string)
	for line := range strings.Lines(stdout) {
		var e jsonEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("list -json: %q: %v", line, err)
		}
		if e.Topic != topic || e.Group != "billing" || e.Attempts != 1 || e.Time == "" || e.Key != "k"+e.ID ||
			!strings.Contains(e.Reason, "declined again and again") {
			t.Errorf("list -json: %+v", e)
		}
		positions[e.ID] = e.Position
	}
	if code != 0 || len(positions) != 3 {
		t.Fatalf("list -json: exit %d, %v", code, positions)
	}

	code, stdout, stderr = cmd("list", "-limit", "2")
	if code != 0 || strings.Count(stdout, "\n") != 3 || !strings.Contains(stderr, "more entries follow") {
		t.Errorf("list -limit 2: exit %d\n%s%s", code, stdout, stderr)
	}

	code, stdout, _ = cmd("show", positions["m1"])
	for _, want := range []string{"position:      " + positions["m1"], "id:            m1", "topic:         " + topic,
		"group:         billing", "attempts:      1", "reason:        cannot bill order m1:\n               the card was declined again",
		"content type:  application/json", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"herald-dlq-group: billing", "payload (7 bytes, text):\n{\"n\":1}\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("show %s: exit %d, no %q in\n%s", positions["m1"], code, want, stdout)
		}
	}
	if code, stdout, _ = cmd("show", "m3"); code != 0 || !strings.Contains(stdout, "payload (3 bytes, base64):\n/wD+\n") {
		t.Errorf("show m3: exit %d\n%s", code, stdout)
	}
	if code, _, stderr = cmd("show", "nope"); code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("show nope: exit %d, %s", code, stderr)
	}

	code, stdout, _ = cmd("redrive", "-dry-run", "-all")
	if code != 0 || strings.Count(stdout, "would redrive ") != 4 || !strings.Contains(stdout, "would redrive 3 entries of "+dlqTopic) {
		t.Errorf("redrive -dry-run: exit %d\n%s", code, stdout)
	}
	if _, stdout, _ = cmd("list", "-json"); strings.Count(stdout, "\n") != 3 {
		t.Errorf("the dry run changed the topic:\n%s", stdout)
	}

	code, stdout, stderr = cmd("redrive", positions["m2"])
	if code != 0 || stdout != "redriven 1 entry of "+dlqTopic+"\n" || stderr != "redriven 1/1\n" {
		t.Errorf("redrive %s: exit %d\n%s%s", positions["m2"], code, stdout, stderr)
	}
	code, stdout, stderr = cmd("redrive", "-all", "-batch-size", "1")
	if code != 0 || stdout != "redriven 2 entries of "+dlqTopic+"\n" || stderr != "redriven 1\nredriven 2\n" {
		t.Errorf("redrive -all: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, stderr = cmd("list"); code != 0 || stdout != "" || stderr != "no entries in "+dlqTopic+"\n" {
		t.Errorf("list after the redrive: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, _ = cmd("redrive", "-all"); code != 0 || stdout != "redriven 0 entries of "+dlqTopic+"\n" {
		t.Errorf("second redrive: exit %d\n%s", code, stdout)
	}
	if code, _, stderr = cmd("redrive", "m1"); code != 1 || !strings.Contains(stderr, "not found: m1") {
		t.Errorf("redrive of a redriven entry: exit %d\n%s", code, stderr)
	}

	// The original topic holds each message twice: as published, and as
	// redriven, the same but addressed to the group that gave up.
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	back, _, err := store.List(ctx, topic, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	count := make(map[string]int)
	addressed := 0
	for _, e := range back {
		m, s := e.Message, sent[e.Message.ID]
		count[m.ID]++
		headers := len(m.Headers)
		if m.Headers.Get(herald.HeaderRedriveGroup) == "billing" && m.Headers.Get(herald.HeaderRedriveCount) == "1" {
			addressed++
			headers -= 2
		}
		if s == nil || m.Key != s.Key || !bytes.Equal(m.Data, s.Data) || headers != 1 || m.Headers.Get("traceparent") != s.Headers.Get("traceparent") {
			t.Errorf("on %s: %+v", topic, m)
		}
	}
	if len(back) != 6 || addressed != 3 || count["m1"] != 2 || count["m2"] != 2 || count["m3"] != 2 {
		t.Errorf("on %s: %v, %d addressed to billing", topic, count, addressed)
	}
}

func TestDLQCommandsRedis(t *testing.T) {
	addr := testenv.RedisAddr(t)
	client := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	prefix := redistest.Prefix(t, client, "herald:test:cmd:")
	d, err := redisdriver.New(client, redisdriver.WithKeyPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	testDLQCommands(t, []string{"-redis-addr", addr, "-redis-key-prefix", prefix}, d, d.DeadLetters(), "orders")
}

func TestDLQCommandsKafka(t *testing.T) {
	brokers := testenv.KafkaBrokers()
	if brokers == nil {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		brokers = c.ListenAddrs()
	}
	d, err := kafkadriver.New(brokers, kafkadriver.WithAutoCreateTopics(), kafkadriver.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	flags := []string{"-driver", "kafka", "-kafka-brokers", strings.Join(brokers, ",")}
	topic := "orders." + strings.ToLower(rand8())
	testDLQCommands(t, flags, d, d.DeadLetters(), topic)

	// A name herald allows and Kafka does not is refused by the store.
	code, _, stderr := dlqRun(nil, append([]string{"list", "-topic", "orders:dlq"}, flags...)...)
	if code != 2 || !strings.Contains(stderr, `invalid topic "orders:dlq"`) {
		t.Errorf("Kafka-invalid topic: exit %d, %s", code, stderr)
	}
}

func rand8() string { return newTableName()[3:11] }

// parseDLQFlags parses the flags of subcommand sub as runDLQ does.
func parseDLQFlags(sub string, args []string, getenv func(string) string) (dlqConfig, error) {
	var c dlqConfig
	f := newDLQFlags(sub, &c)
	err := f.parse(args, getenv)
	c.Args = f.Args()
	c.resolve()
	return c, err
}

func TestParseDLQFlags(t *testing.T) {
	vars := env(map[string]string{"HERALD_KAFKA_BROKERS": "env:9092", "HERALD_DLQ_TOPIC": "orders.dlq", "HERALD_REDIS_ADDR": "r:6379"})
	c, err := parseDLQFlags("redrive", []string{"-kafka-brokers", "flag:9092", "-dry-run", "1:7", "m2"}, vars)
	if err != nil {
		t.Fatal(err)
	}
	if c.Driver != "kafka" || c.Kafka.Brokers != "flag:9092" || c.Topic != "orders.dlq" || !c.DryRun ||
		c.BatchSize != dlq.DefaultBatchSize || !slices.Equal(c.Args, []string{"1:7", "m2"}) || c.Kafka.ClientID != "herald-dlq" {
		t.Errorf("config %+v", c)
	}
	if err := c.validate("redrive"); err != nil {
		t.Error(err)
	}
	c, err = parseDLQFlags("list", nil, env(map[string]string{"HERALD_REDIS_ADDR": "r:6379"}))
	if err != nil || c.Driver != "redis" || c.Limit != 50 || c.Redis.KeyPrefix != redisdriver.DefaultKeyPrefix {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	if _, err := parseDLQFlags("redrive", []string{"-dry-run", "1:7", "-all"}, vars); err == nil || !strings.Contains(err.Error(), "after the arguments") {
		t.Errorf("a flag after the arguments: %v", err)
	}
}

// TestDLQUsageSQL checks the flags of -driver sql: each bad value is one
// line on standard error and exit status 2, also when only the driver
// can tell (a table name too long for its companion tables, a partition
// count out of range).
func TestDLQUsageSQL(t *testing.T) {
	sqlite := []string{"-sql-dsn", "file:" + filepath.Join(t.TempDir(), "log.db")} // never opened: the checks come first
	for _, c := range []struct {
		args []string
		vars map[string]string
		want string
	}{
		{[]string{"list", "-driver", "sql", "-topic", "orders.dlq"}, nil, "-sql-dsn is required"},
		{append([]string{"list", "-topic", "orders.dlq", "-sql-dialect", "oracle"}, sqlite...), nil, `-sql-dialect: herald/sql: unknown dialect: "oracle"`},
		{append([]string{"list", "-topic", "orders.dlq"}, sqlite...), map[string]string{"HERALD_SQL_DIALECT": "sybase"}, `unknown dialect: "sybase"`},
		{[]string{"list", "-topic", "orders.dlq"}, map[string]string{"HERALD_SQL_DSN": "host=db user=app"}, "cannot infer the dialect from -sql-dsn: set -sql-dialect"},
		{append([]string{"list", "-topic", "orders.dlq", "-sql-table", "Bad-Name"}, sqlite...), nil, `-sql-table: herald: invalid table "Bad-Name"`},
		{append([]string{"list", "-topic", "orders.dlq"}, sqlite...), map[string]string{"HERALD_SQL_TABLE": strings.Repeat("t", 33)}, "at most 32 bytes"},
		{append([]string{"show", "-topic", "orders.dlq!"}, append(sqlite, "1:1")...), nil, `-topic: herald: invalid topic "orders.dlq!"`},
		{append([]string{"redrive", "-topic", "orders.dlq", "-all", "-sql-partitions", "0"}, sqlite...), nil, "partitions 0: want 1 to 4096"},
		{append([]string{"list", "-topic", "orders.dlq", "-sql-partitions", "4"}, sqlite...), nil, "flag provided but not defined: -sql-partitions"},
		{[]string{"list", "-driver", "pigeon", "-topic", "orders.dlq"}, nil, `-driver "pigeon": want kafka, redis, nats, rabbitmq or sql`},
		{[]string{"list", "-topic", "orders.dlq"}, nil, "-driver is required (kafka, redis, nats, rabbitmq or sql), or set -kafka-brokers, -redis-addr, -nats-url or -amqp-url, -sql-dsn"},
		{[]string{"list", "-driver", "memory", "-topic", "orders.dlq"}, nil, "use kafka, redis, nats, rabbitmq or sql"},
		{[]string{"list", "-driver", "nats", "-topic", "orders.dlq"}, nil, "-driver nats needs -nats-url"},
		{[]string{"list", "-driver", "rabbitmq", "-topic", "orders.dlq"}, nil, "-driver rabbitmq needs -amqp-url"},
		{[]string{"list", "-amqp-url", "amqp://guest:guest@127.0.0.1:5672/", "-amqp-name-prefix", "bad prefix", "-topic", "orders.dlq"}, nil, "WithNamePrefix bad prefix"},
		{[]string{"list", "-nats-url", "http://h:4222", "-topic", "orders.dlq"}, nil, `-nats-url "http://h:4222": scheme "http": want nats, tls, ws, wss`},
		{[]string{"list", "-nats-url", "nats://a:4222,b", "-topic", "orders.dlq"}, nil, `-nats-url "nats://a:4222,b": want host:port`},
		{[]string{"list", "-nats-url", "nats://a:4222", "-nats-creds", "/nonexistent.creds", "-topic", "orders.dlq"}, nil, "-nats-creds: stat /nonexistent.creds"},
		{[]string{"list", "-nats-url", "nats://127.0.0.1:1", "-nats-stream-prefix", "", "-topic", "orders.dlq"}, nil, `stream prefix "": want letters`},
	} {
		code, stdout, stderr := dlqRun(c.vars, c.args...)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if code != 2 || stdout != "" || len(lines) != 2 || !strings.HasPrefix(lines[0], "herald dlq ") ||
			!strings.Contains(lines[0], c.want) || !strings.HasPrefix(lines[1], "Run 'herald dlq ") {
			t.Errorf("%q %v: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and one line with %q", c.args, c.vars, code, stdout, stderr, c.want)
		}
	}
}

func TestParseDLQFlagsSQL(t *testing.T) {
	vars := env(map[string]string{"HERALD_SQL_DSN": "postgres://u@h/db", "HERALD_SQL_TABLE": "env_log", "HERALD_SQL_PARTITIONS": "4",
		"HERALD_DLQ_TOPIC": "orders.dlq"})
	c, err := parseDLQFlags("redrive", []string{"-sql-table", "orders_log", "-all"}, vars)
	if err != nil {
		t.Fatal(err)
	}
	if c.Driver != targetSQL || c.SQL.DSN != "postgres://u@h/db" || c.SQL.Dialect != "postgres" || c.SQL.Table != "orders_log" ||
		c.Partitions == nil || *c.Partitions != 4 || c.Topic != "orders.dlq" || !c.All {
		t.Errorf("config %+v", c)
	}
	if err := c.validate("redrive"); err != nil {
		t.Error(err)
	}
	c, err = parseDLQFlags("list", []string{"-driver", "sql", "-sql-dsn", "root@tcp(db:3306)/app"}, env(nil))
	if err != nil || c.SQL.Dialect != "mysql" || c.SQL.Table != sqldriver.DefaultTable || c.Partitions != nil {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	if c, _ := parseDLQFlags("redrive", []string{"-sql-dsn", "file:app.db"}, env(nil)); c.Partitions == nil || *c.Partitions != sqldriver.DefaultPartitions {
		t.Errorf("redrive: partitions %v, want the driver's default %d", c.Partitions, sqldriver.DefaultPartitions)
	}
}

// sqlLog is a migrated log of the SQL driver of the test's own in dialect
// d: its DSN and table, and a driver on it. The tables are dropped when t
// ends.
func sqlLog(t *testing.T, d sqldriver.Dialect, opts ...sqldriver.Option) (dsn, table string, drv *sqldriver.Driver) {
	t.Helper()
	driver, quote := "pgx", `"`
	switch d {
	case sqldriver.Postgres:
		dsn = testenv.PostgresDSN(t)
	case sqldriver.MySQL:
		driver, quote, dsn = "mysql", "`", testenv.MySQLDSN(t)
	default:
		driver, dsn = "sqlite", "file:"+filepath.Join(t.TempDir(), "app.db")+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_txlock=immediate"
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	table = newTableName()
	drv, err = sqldriver.New(db, d, append(opts, sqldriver.WithTable(table))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = drv.Close()
		for _, suffix := range []string{"", "_offsets", "_members", "_meta", sqldriver.RedrivenSuffix} {
			if _, err := db.Exec("DROP TABLE IF EXISTS " + quote + table + suffix + quote); err != nil {
				t.Errorf("drop %s%s: %v", table, suffix, err)
			}
		}
		_ = db.Close()
	})
	if err := drv.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return dsn, table, drv
}

// TestDLQCommandsSQL runs list, show and redrive in this process on a log
// of the SQL driver in each dialect; the SQLite log has 4 partitions,
// which redrive is told through $HERALD_SQL_PARTITIONS.
func TestDLQCommandsSQL(t *testing.T) {
	for _, d := range []sqldriver.Dialect{sqldriver.Postgres, sqldriver.MySQL, sqldriver.SQLite} {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			var opts []sqldriver.Option
			vars := map[string]string{}
			if d == sqldriver.SQLite {
				opts = append(opts, sqldriver.WithPartitions(4))
				vars["HERALD_SQL_PARTITIONS"] = "4"
			}
			dsn, table, drv := sqlLog(t, d, opts...)
			flags := []string{"-driver", "sql", "-sql-dsn", dsn, "-sql-table", table}
			run := func(args ...string) (int, string, string) { return dlqRun(vars, args...) }
			testDLQCommandsWith(t, run, flags, drv, drv.DeadLetters(), "orders")
			if d != sqldriver.SQLite {
				return
			}
			// A partition count that is not the log's writes nothing, and
			// says which flag to set.
			rec := herald.DeadLetterRecord{Reason: "boom", Topic: "payments", Group: "billing", Time: time.Now()}
			err := drv.Write(context.Background(), []*herald.Message{rec.Message(&herald.Message{ID: "p1", Topic: "payments"}, "payments.dlq")})
			if err != nil {
				t.Fatal(err)
			}
			code, _, stderr := dlqRun(nil, append([]string{"redrive", "-topic", "payments.dlq", "-all"}, flags...)...)
			if code != 2 || !strings.Contains(stderr, "partition count differs") || !strings.Contains(stderr, "set -sql-partitions") {
				t.Errorf("redrive with the default partition count: exit %d\n%s", code, stderr)
			}
			if entries, _, err := drv.DeadLetters().List(context.Background(), "payments.dlq", "", 10); err != nil || len(entries) != 1 {
				t.Errorf("after the refused redrive: %d entries, %v", len(entries), err)
			}
		})
	}
}

// TestProcessDLQSQL runs list, show and redrive as processes of the built
// command on a SQLite and a PostgreSQL log of the SQL driver; on SQLite
// -driver is inferred from -sql-dsn.
func TestProcessDLQSQL(t *testing.T) {
	for _, d := range []sqldriver.Dialect{sqldriver.SQLite, sqldriver.Postgres} {
		t.Run(d.String(), func(t *testing.T) {
			t.Parallel()
			dsn, table, drv := sqlLog(t, d)
			flags := []string{"-sql-dsn", dsn, "-sql-table", table}
			if d != sqldriver.SQLite {
				flags = append(flags, "-driver", "sql", "-sql-dialect", "postgres")
			}
			process := func(args ...string) (int, string, string) { return heraldCmd(t, append([]string{"dlq"}, args...)...) }
			testDLQCommandsWith(t, process, flags, drv, drv.DeadLetters(), "orders")
		})
	}
}
