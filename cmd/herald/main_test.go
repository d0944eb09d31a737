package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/cmd/herald/internal/shutdown"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	"github.com/heraldbus/herald/memory/memtest"
	"github.com/heraldbus/herald/nats/natsdriver"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
	"github.com/heraldbus/herald/sql/outbox"
)

func TestMain(m *testing.M) {
	shutdown.Reset()
	code := m.Run()
	if builtDir != "" {
		_ = os.RemoveAll(builtDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const liveness = 60 * time.Second

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// parseRelayFlags parses and resolves the relay's flags as runRelay does.
func parseRelayFlags(args []string, getenv func(string) string) (relayConfig, error) {
	var c relayConfig
	err := newRelayFlags(&c).parse(args, getenv)
	c.resolve()
	return c, err
}

func TestParseRelayFlags(t *testing.T) {
	cfg, err := parseRelayFlags([]string{"-dsn", "postgres://u@h/db", "-batch-size", "50", "-listen=false", "-target", "memory"},
		env(map[string]string{
			"HERALD_OUTBOX_TABLE":              "orders_outbox",
			"HERALD_RELAY_BATCH_SIZE":          "999", // the flag wins
			"HERALD_RELAY_MAX_ATTEMPTS":        "3",
			"HERALD_RELAY_RETENTION":           "1h",
			"HERALD_KAFKA_BROKERS":             "k1:9092,k2:9092",
			"HERALD_RELAY_LOCK_RETRY_INTERVAL": "250ms",
		}))
	if err != nil {
		t.Fatal(err)
	}
	want := relayConfig{
		DB: dbFlags{DSN: "postgres://u@h/db", Dialect: "postgres", Table: "orders_outbox"}, Target: "memory",
		brokerFlags: brokerFlags{
			Kafka: kafkaFlags{Brokers: "k1:9092,k2:9092", ClientID: "herald-relay"}, Redis: redisFlags{KeyPrefix: "herald:stream:"},
			NATS: natsFlags{StreamPrefix: natsdriver.DefaultStreamPrefix, SubjectPrefix: natsdriver.DefaultSubjectPrefix, clientName: "herald-relay"},
			AMQP: amqpFlags{NamePrefix: amqpdriver.DefaultNamePrefix, clientName: "herald-relay"},
		},
		BatchSize: 50, Lanes: 1, MaxAttempts: 3, MinPoll: outbox.DefaultMinPollInterval, MaxPoll: outbox.DefaultMaxPollInterval,
		LockRetry: 250 * time.Millisecond, WriteTimeout: outbox.DefaultWriteTimeout, Retention: time.Hour, Listen: false,
		StatsInterval: 30 * time.Second, StartupTimeout: 10 * time.Second, ShutdownTimeout: 10 * time.Second, LogLevel: "info",
	}
	if cfg != want {
		t.Errorf("config\n got %+v\nwant %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestParseRelayFlagsTargetDefaults(t *testing.T) {
	for _, c := range []struct {
		vars map[string]string
		want string
	}{
		{map[string]string{"HERALD_KAFKA_BROKERS": "k:9092"}, targetKafka},
		{map[string]string{"HERALD_REDIS_ADDR": "r:6379"}, targetRedis},
		{map[string]string{"HERALD_KAFKA_BROKERS": "k:9092", "HERALD_RELAY_TARGET": "redis", "HERALD_REDIS_ADDR": "r:6379"}, targetRedis},
	} {
		cfg, err := parseRelayFlags([]string{"-dsn", "file:x.db"}, env(c.vars))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Target != c.want {
			t.Errorf("%v: target %q, want %q", c.vars, cfg.Target, c.want)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%v: %v", c.vars, err)
		}
	}
}

func TestInferDialect(t *testing.T) {
	for dsn, want := range map[string]string{
		"postgres://u@h:5432/db":                "postgres",
		"postgresql://h/db":                     "postgres",
		"root@tcp(127.0.0.1:3306)/test":         "mysql",
		"u:p@unix(/run/mysqld.sock)/db":         "mysql",
		"file:/var/lib/app.db?_pragma=x":        "sqlite",
		"/var/lib/app.sqlite":                   "sqlite",
		"host=localhost user=postgres dbname=x": "",
	} {
		if got := inferDialect(dsn); got != want {
			t.Errorf("inferDialect(%q) = %q, want %q", dsn, got, want)
		}
	}
}

// TestValidateReportsEverything checks that one run names every problem.
func TestValidateReportsEverything(t *testing.T) {
	cfg, err := parseRelayFlags([]string{"-table", "Bad-Name", "-batch-size", "0", "-target", "carrier-pigeon", "-log-level", "loud"},
		env(map[string]string{"HERALD_RELAY_SHUTDOWN_TIMEOUT": "0s"}))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	if err == nil {
		t.Fatal("Validate accepted a bad configuration")
	}
	for _, want := range []string{"-dsn is required", "invalid table", "carrier-pigeon", "batch size", "-shutdown-timeout", "-log-level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing from: %v", want, err)
		}
	}
}

// TestRelayTargetFlag checks how -target is inferred and what a missing
// or unknown one says.
func TestRelayTargetFlag(t *testing.T) {
	for _, c := range []struct {
		args       []string
		wantTarget string
		wantErr    string // "" for none
	}{
		{[]string{"-kafka-brokers", "127.0.0.1:9092"}, targetKafka, ""},
		{[]string{"-redis-addr", "127.0.0.1:6379"}, targetRedis, ""},
		{[]string{"-target", "memory"}, targetMemory, ""},
		{[]string{"-nats-url", "nats://127.0.0.1:4222"}, targetNATS, ""},
		{[]string{"-amqp-url", "amqp://guest:guest@127.0.0.1:5672/"}, targetRabbitMQ, ""},
		{nil, "", "-target is required (kafka, redis, nats, rabbitmq or memory)"},
		{[]string{"-target", "redis"}, targetRedis, "-target redis needs -redis-addr"},
		{[]string{"-target", "kafka"}, targetKafka, "-target kafka needs -kafka-brokers"},
		{[]string{"-target", "nats"}, targetNATS, "-target nats needs -nats-url"},
		{[]string{"-target", "rabbitmq"}, targetRabbitMQ, "-target rabbitmq needs -amqp-url"},
		{[]string{"-target", "pigeon"}, "pigeon", `-target "pigeon": want kafka, redis, nats, rabbitmq or memory`},
		{[]string{"-amqp-url", "amqp://guest:secret@h:notaport/"}, targetRabbitMQ, `-amqp-url "amqp://guest:xxxxx@h:notaport/": parse "the URL": invalid port`},
		{[]string{"-nats-url", "nats://u:secret@h:4222,http://v:secret@h"}, targetNATS, `-nats-url "nats://u:xxxxx@h:4222,http://v:xxxxx@h": scheme "http"`},
		{[]string{"-amqp-url", "amqp://h/", "-amqp-tls"}, targetRabbitMQ, "-amqp-tls-* need an amqps:// -amqp-url"},
		{[]string{"-nats-url", "nats://h:4222", "-nats-tls-cert", "c.pem"}, targetNATS, "-nats-tls-cert and -nats-tls-key go together"},
	} {
		cfg, err := parseRelayFlags(append([]string{"-dsn", "file:x.db"}, c.args...), env(nil))
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if cfg.Target != c.wantTarget {
			t.Errorf("%v: target %q, want %q", c.args, cfg.Target, c.wantTarget)
		}
		err = cfg.Validate()
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%v: Validate = %v, want nil", c.args, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%v: Validate = %v, want it to say %q", c.args, err, c.wantErr)
		}
	}
}

func TestBadFlagsAndEnvironment(t *testing.T) {
	var out bytes.Buffer
	ctx := context.Background()
	if code := run(ctx, []string{"relay", "-batch-size", "many"}, env(nil), &out, &out); code != 2 {
		t.Errorf("bad flag: exit %d, want 2", code)
	}
	out.Reset()
	if code := run(ctx, []string{"relay", "-dsn", "file:x.db", "-target", "memory"},
		env(map[string]string{"HERALD_RELAY_LANES": "two", "HERALD_RELAY_RETENTION": "forever"}), &out, &out); code != 2 {
		t.Errorf("bad environment: exit %d, want 2", code)
	}
	for _, want := range []string{"HERALD_RELAY_LANES", "HERALD_RELAY_RETENTION"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("%s not reported in %q", want, out.String())
		}
	}
	out.Reset()
	if code := run(ctx, []string{"relay", "-h"}, env(nil), &out, &out); code != 0 || !strings.Contains(out.String(), "HERALD_OUTBOX_DSN") {
		t.Errorf("-h: exit %d, output %q", code, out.String())
	}
	if code := run(ctx, []string{"frobnicate"}, env(nil), &out, &out); code != 2 {
		t.Errorf("unknown command: exit %d", code)
	}
	if code := run(ctx, nil, env(nil), &out, &out); code != 2 {
		t.Errorf("no command: exit %d", code)
	}
}

func hasLog(lines []map[string]any, msg string) bool {
	for _, l := range lines {
		if l["msg"] == msg {
			return true
		}
	}
	return false
}

func newTableName() string { return "hc_" + strings.ToLower(rand.Text()[:12]) }

// postgresTable opens the test PostgreSQL at dsn and names an outbox
// table of the test's own; the table and its side tables are dropped and
// the pool closed when t ends.
func postgresTable(t *testing.T, dsn string) (*sql.DB, string) {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	table := newTableName()
	t.Cleanup(func() {
		for _, suffix := range []string{"", "_quarantine", "_sent"} {
			if _, err := db.Exec(`DROP TABLE IF EXISTS "` + table + suffix + `"`); err != nil {
				t.Errorf("drop %s%s: %v", table, suffix, err)
			}
		}
		_ = db.Close()
	})
	return db, table
}

func countRows(t *testing.T, db *sql.DB, quoted string) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM " + quoted).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// eventually is the toolkit's, bounded by liveness.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	drivertest.Eventually(t, liveness, what, cond)
}

func writeRows(t *testing.T, db *sql.DB, d outbox.Dialect, table string, n int) {
	t.Helper()
	w, err := outbox.NewWriter(d, table)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]*herald.Message, n)
	for i := range msgs {
		msgs[i] = &herald.Message{ID: fmt.Sprintf("m%d", i), Topic: "cmd.test", Key: fmt.Sprintf("k%d", i%3), Data: []byte(fmt.Sprint(i))}
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTx(context.Background(), tx, msgs); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// runCommand runs "herald relay args..." until stop is called, and returns
// its exit status through the channel.
func runCommand(args []string, vars map[string]string, stderr io.Writer) (stop func(), status <-chan int) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan int, 1)
	go func() { ch <- run(ctx, append([]string{"relay"}, args...), env(vars), io.Discard, stderr) }()
	return cancel, ch
}

// TestRelayCommandSQLite runs the command on an SQLite file with -migrate
// and the memory target, through environment variables, and stops it as a
// signal would.
func TestRelayCommandSQLite(t *testing.T) {
	dsn := "file:" + filepath.Join(t.TempDir(), "app.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"
	table := newTableName()
	var logs drivertest.LogBuffer
	stop, status := runCommand(nil, map[string]string{
		"HERALD_OUTBOX_DSN": dsn, "HERALD_OUTBOX_TABLE": table, "HERALD_OUTBOX_MIGRATE": "true",
		"HERALD_RELAY_TARGET": "memory", "HERALD_RELAY_STATS_INTERVAL": "20ms",
	}, &logs)
	defer stop()

	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	eventually(t, "the migration", func() bool { return hasLog(logs.Records(t), "herald relay: tables ready") })
	writeRows(t, db, outbox.SQLite, table, 25)
	eventually(t, "the outbox to drain", func() bool { return countRows(t, db, `"`+table+`"`) == 0 })
	eventually(t, "a stats line", func() bool { return hasLog(logs.Records(t), "herald relay: stats") })
	stop()
	select {
	case code := <-status:
		if code != 0 {
			t.Errorf("exit %d; logs:\n%s", code, logs.String())
		}
	case <-time.After(liveness):
		t.Fatal("the command did not stop")
	}
	lines := logs.Records(t)
	for _, msg := range []string{"herald relay: starting", "outbox relay: active", "herald relay: stopped"} {
		if !hasLog(lines, msg) {
			t.Errorf("no %q in the logs:\n%s", msg, logs.String())
		}
	}
}

// TestRelayCommandPostgres runs the relay of the command (relayMain) on
// PostgreSQL into a memory broker the test reads, and checks what arrives.
func TestRelayCommandPostgres(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	db, table := postgresTable(t, dsn)
	cfg, err := parseRelayFlags([]string{"-dsn", dsn, "-table", table, "-migrate", "-target", "memory", "-stats-interval", "0"}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	broker := memtest.Broker(t)
	defer broker.Close()
	ctx := context.Background()
	sub, err := broker.Subscribe(ctx, "cmd.test", "g")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)

	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relayMain(rctx, cfg, db, broker, slog.New(slog.NewJSONHandler(io.Discard, nil))) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	eventually(t, "the migration", func() bool {
		var exists bool
		return db.QueryRow("SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists) == nil && exists
	})
	writeRows(t, db, outbox.Postgres, table, 30)
	fctx, cancel := context.WithTimeout(ctx, liveness)
	defer cancel()
	got := map[string]string{}
	buf := make([]herald.Delivery, 64)
	for len(got) < 30 {
		n, err := sub.Fetch(fctx, buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range buf[:n] {
			got[d.Message.ID] = string(d.Message.Data)
		}
	}
	for i := range 30 {
		if got[fmt.Sprintf("m%d", i)] != fmt.Sprint(i) {
			t.Errorf("message m%d: %q", i, got[fmt.Sprintf("m%d", i)])
		}
	}
}

// TestRelayCommandRedis runs the command against the test Redis and checks
// the streams it filled.
func TestRelayCommandRedis(t *testing.T) {
	addr := testenv.RedisAddr(t)
	dsn, db, table := sqliteOutbox(t, 12)

	client := goredis.NewClient(&goredis.Options{Addr: addr})
	defer client.Close()
	prefix := "herald:test:cmd:" + rand.Text() + ":"
	stream := prefix + "cmd.test"
	t.Cleanup(func() { client.Del(context.Background(), stream) })

	var logs drivertest.LogBuffer
	stop, status := runCommand([]string{"-dsn", dsn, "-table", table, "-redis-addr", addr, "-redis-key-prefix", prefix}, nil, &logs)
	defer stop()
	eventually(t, "the stream to fill", func() bool {
		n, err := client.XLen(context.Background(), stream).Result()
		return err == nil && n == 12
	})
	eventually(t, "the outbox to drain", func() bool { return countRows(t, db, `"`+table+`"`) == 0 })
	stop()
	if code := <-status; code != 0 {
		t.Errorf("exit %d; logs:\n%s", code, logs.String())
	}
	entries, err := client.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if entries[0].Values["id"] != "m0" || entries[0].Values["key"] != "k0" || entries[0].Values["data"] != "0" {
		t.Errorf("first entry %v", entries[0].Values)
	}
}

// TestRelayCommandKafka runs the command against an in-process Kafka
// (kfake; HERALD_KAFKA_BROKERS for a real cluster) and reads the messages
// back with the Kafka driver.
func TestRelayCommandKafka(t *testing.T) {
	brokers := testenv.KafkaBrokers()
	if brokers == nil {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
			kfake.GroupMinSessionTimeout(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		brokers = c.ListenAddrs()
	}
	relayAndDrain(t, 9, "-kafka-brokers", strings.Join(brokers, ","), "-kafka-auto-create-topics", "-log-level", "debug")

	d, err := kafkadriver.New(brokers, kafkadriver.WithStartPosition(herald.StartEarliest), kafkadriver.WithHeartbeatInterval(100*time.Millisecond),
		kafkadriver.WithSessionTimeout(time.Second), kafkadriver.WithRevokeTimeout(500*time.Millisecond), kafkadriver.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	sub, err := d.Subscribe(ctx, "cmd.test", "check")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	readBack(t, sub, 9)
}

// TestRelayFailsFast: a relay that cannot work exits at once with the
// reason: 2 for a flag no relay could use, 1 for a database, table or
// target that does not answer or does not exist. Nothing is retried in
// the logs forever.
func TestRelayFailsFast(t *testing.T) {
	redisAddr := testenv.RedisAddr(t)
	dir := t.TempDir()
	migrated := "file:" + filepath.Join(dir, "migrated.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"
	db, err := sql.Open("sqlite", migrated)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := outbox.Migrate(context.Background(), db, outbox.SQLite, outbox.DefaultTable); err != nil {
		t.Fatal(err)
	}
	empty := "file:" + filepath.Join(dir, "empty.db")
	for _, c := range []struct {
		name string
		args []string
		code int
		says string
	}{
		{"negative redis db", []string{"-dsn", migrated, "-redis-addr", redisAddr, "-redis-db", "-1"}, 2, "-redis-db -1"},
		{"redis address without port", []string{"-dsn", migrated, "-redis-addr", "localhost"}, 2, "-redis-addr"},
		{"kafka broker without port", []string{"-dsn", migrated, "-kafka-brokers", "k1:9092,k2"}, 2, "-kafka-brokers"},
		{"zero startup timeout", []string{"-dsn", migrated, "-target", "memory", "-startup-timeout", "0s"}, 2, "-startup-timeout"},
		{"missing table", []string{"-dsn", empty, "-target", "memory"}, 1, "herald_outbox"},
		{"unreachable database", []string{"-dsn", "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=2", "-target", "memory"}, 1, "database"},
		{"redis db out of range", []string{"-dsn", migrated, "-redis-addr", redisAddr, "-redis-db", "99999"}, 1, "DB index is out of range"},
		{"unreachable redis", []string{"-dsn", migrated, "-redis-addr", "127.0.0.1:1"}, 1, "target"},
		{"unreachable kafka", []string{"-dsn", migrated, "-kafka-brokers", "127.0.0.1:1", "-startup-timeout", "3s"}, 1, "target"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs drivertest.LogBuffer
			stop, status := runCommand(c.args, nil, &logs)
			defer stop()
			select {
			case code := <-status:
				if code != c.code || !strings.Contains(logs.String(), c.says) {
					t.Errorf("exit %d, want %d with %q in the output:\n%s", code, c.code, c.says, logs.String())
				}
			case <-time.After(liveness):
				t.Fatalf("still running after %v; output:\n%s", liveness, logs.String())
			}
		})
	}
}

// builtDir holds the command buildCommand built; TestMain removes it.
var builtDir string

// buildCommand builds the herald command into a temporary directory once
// per test binary.
var buildCommand = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "herald-cmd-test")
	if err != nil {
		return "", err
	}
	builtDir = dir
	bin := filepath.Join(dir, "herald")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// TestRelayProcessStopsOnSIGTERM runs "herald relay" as a process and stops
// it with SIGTERM during its start-up and while it runs: each time it ends
// by itself with exit 0 and says so, never killed by the signal.
func TestRelayProcessStopsOnSIGTERM(t *testing.T) {
	bin, err := buildCommand()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		after string // the log line to send the signal after
		says  string
	}{
		{"during start-up", "", "stopped"},
		{"while running", "outbox relay: active", "herald relay: stopped"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dsn := "file:" + filepath.Join(t.TempDir(), "app.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"
			cmd := exec.Command(bin, "relay", "-dsn", dsn, "-migrate", "-target", "memory", "-stats-interval", "0")
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var logs strings.Builder
			sc := bufio.NewScanner(stderr)
			signalled := false
			for sc.Scan() {
				logs.WriteString(sc.Text() + "\n")
				if !signalled && (c.after == "" || strings.Contains(sc.Text(), c.after)) {
					if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
						t.Fatal(err)
					}
					signalled = true
				}
			}
			err = cmd.Wait()
			if st := cmd.ProcessState; err != nil || !st.Exited() || st.ExitCode() != 0 || !strings.Contains(logs.String(), c.says) {
				t.Errorf("after SIGTERM: %v (exited by itself: %v, code %d), want exit 0 saying %q; logs:\n%s",
					err, st.Exited(), st.ExitCode(), c.says, logs.String())
			}
		})
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key as
// PEM files in dir (ca.pem, key.pem) and returns the server's TLS configuration and the
// certificate's path (the CA a client trusts).
func selfSigned(t *testing.T, dir string) (*tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kfake"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, caFile
}

// TestRelayCommandKafkaTLSAndSASL relays to a kfake cluster that takes
// only TLS connections with SASL SCRAM-SHA-256: the flags reach the
// driver, and a wrong password stops the start with exit 1.
func TestRelayCommandKafkaTLSAndSASL(t *testing.T) {
	dir := t.TempDir()
	serverTLS, caFile := selfSigned(t, dir)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2),
		kfake.TLS(serverTLS), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "relay", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	dsn, db, table := sqliteOutbox(t, 4)
	args := []string{"-dsn", dsn, "-table", table, "-kafka-brokers", strings.Join(c.ListenAddrs(), ","), "-kafka-auto-create-topics",
		"-kafka-tls-ca", caFile, "-kafka-sasl", "scram-sha-256", "-kafka-sasl-user", "relay", "-startup-timeout", "5s"}
	wrongThenRight(t, args, map[string]string{"HERALD_KAFKA_SASL_PASSWORD": "wrong"}, map[string]string{"HERALD_KAFKA_SASL_PASSWORD": "s3cret"}, db, table)
}

// TestRelayCommandRedisTLSAndACL relays to a private redis-server that
// takes only TLS connections and an ACL user: the flags reach the client.
func TestRelayCommandRedisTLSAndACL(t *testing.T) {
	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		testenv.Unavailable(t, "redis-server is not installed")
	}
	dir := t.TempDir()
	_, caFile := selfSigned(t, dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	srv := exec.Command(redisServer, "--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--tls-cert-file", caFile, "--tls-key-file", filepath.Join(dir, "key.pem"), "--tls-ca-cert-file", caFile,
		"--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", dir,
		"--user", "default", "off", "--user", "relay", "on", ">s3cret", "~*", "&*", "+@all")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	eventually(t, "the TLS redis-server", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	dsn, db, table := sqliteOutbox(t, 3)
	args := []string{"-dsn", dsn, "-table", table, "-redis-addr", addr, "-redis-tls-ca", caFile, "-redis-username", "relay"}
	wrongThenRight(t, args, map[string]string{"HERALD_REDIS_PASSWORD": "wrong"}, map[string]string{"HERALD_REDIS_PASSWORD": "s3cret"}, db, table)
}

// sqliteOutbox makes an SQLite file with a migrated outbox table of its own
// holding rows messages (writeRows) and returns its DSN, the database
// (closed when t ends) and the table.
func sqliteOutbox(t *testing.T, rows int) (dsn string, db *sql.DB, table string) {
	t.Helper()
	dsn = "file:" + filepath.Join(t.TempDir(), "app.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	table = newTableName()
	if err := outbox.Migrate(context.Background(), db, outbox.SQLite, table); err != nil {
		t.Fatal(err)
	}
	if rows > 0 {
		writeRows(t, db, outbox.SQLite, table, rows)
	}
	return dsn, db, table
}

// wrongThenRight runs the relay with args twice: with the environment bad
// it must fail to start (exit 1), with good it must drain table and stop
// cleanly.
func wrongThenRight(t *testing.T, args []string, bad, good map[string]string, db *sql.DB, table string) {
	t.Helper()
	var badLogs drivertest.LogBuffer
	_, status := runCommand(args, bad, &badLogs)
	select {
	case code := <-status:
		if code != 1 || !strings.Contains(badLogs.String(), "cannot start") {
			t.Errorf("bad credentials: exit %d, want 1:\n%s", code, badLogs.String())
		}
	case <-time.After(liveness):
		t.Fatal("a relay with bad credentials kept running")
	}
	var logs drivertest.LogBuffer
	stop, status := runCommand(args, good, &logs)
	defer stop()
	eventually(t, "the outbox to drain", func() bool { return countRows(t, db, `"`+table+`"`) == 0 })
	stop()
	if code := <-status; code != 0 {
		t.Errorf("exit %d:\n%s", code, logs.String())
	}
}
