package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/redis/redistest"
	"github.com/heraldbus/herald/sql/outbox"
)

// herald runs the built command with args and returns its exit status
// and output streams.
func heraldCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	bin, err := buildCommand()
	if err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errs
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, out.String(), errs.String()
}

// TestProcessStreamsAndExitCodes: help goes to stdout with exit 0; a bad
// flag, value or argument is a short error on stderr with exit 2 and no
// usage dump; a flag after the arguments says so.
func TestProcessStreamsAndExitCodes(t *testing.T) {
	for _, args := range [][]string{
		{"-h"}, {"relay", "-h"}, {"migrate", "-h"}, {"quarantine", "-h"}, {"quarantine", "list", "-h"},
		{"quarantine", "replay", "-h"}, {"dlq", "-h"}, {"dlq", "show", "-h"}, {"dlq", "redrive", "-h"}, {"version", "-h"},
	} {
		code, stdout, stderr := heraldCmd(t, args...)
		if code != 0 || !strings.Contains(stdout, "Usage") || stderr != "" {
			t.Errorf("%q: exit %d, stdout %d bytes, stderr %q; want 0, the usage on stdout only", args, code, len(stdout), stderr)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"relay", "-batch-size", "many"}, "herald relay: invalid value"},
		{[]string{"relay", "-dsn", "file:x.db", "-target", "memory", "-startup-timeout", "-1s"}, "-startup-timeout -1s"},
		{[]string{"relay", "-dsn", "file:x.db", "-target", "memory", "-http", "nowhere"}, "-http"},
		{[]string{"relay", "-dsn", "file:x.db", "-kafka-brokers", "k:9092", "-kafka-sasl", "plain"}, "needs -kafka-sasl-user"},
		{[]string{"relay", "-dsn", "file:x.db", "-redis-addr", "r:6379", "-redis-tls-cert", "c.pem"}, "-redis-tls-key go together"},
		{[]string{"migrate", "-table", "Bad-Name", "-dialect", "postgres", "-print"}, "invalid table"},
		{[]string{"quarantine", "replay", "-dsn", "file:x.db", "one"}, `ID "one"`},
		{[]string{"quarantine", "discard", "-dsn", "file:x.db", "3", "-limit", "1"}, "flag -limit after the arguments"},
		{[]string{"dlq", "redrive", "-topic", "t.dlq", "-redis-addr", "r:6379", "m1", "-dry-run"}, "flag -dry-run after the arguments"},
		{[]string{"dlq"}, "missing command"},
		{[]string{"dlq", "list", "-driver", "sql", "-topic", "t.dlq"}, "-sql-dsn is required"},
		{[]string{"dlq", "list", "-sql-dsn", "file:x.db", "-sql-table", strings.Repeat("t", 33), "-topic", "t.dlq"}, "at most 32 bytes"},
		{[]string{"version", "extra"}, "unexpected arguments"},
	} {
		code, stdout, stderr := heraldCmd(t, c.args...)
		first, _, _ := strings.Cut(stderr, "\n")
		if code != 2 || stdout != "" || !strings.Contains(stderr, c.want) || strings.Contains(stderr, "Flags:") ||
			!strings.HasPrefix(first, "herald") || strings.Count(stderr, "\n") > 4 {
			t.Errorf("%q: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and a short error with %q", c.args, code, stdout, stderr, c.want)
		}
	}
}

func TestProcessVersion(t *testing.T) {
	code, stdout, stderr := heraldCmd(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "herald ") || !strings.Contains(stdout, "go1.") ||
		!strings.Contains(stdout, "github.com/heraldbus/herald ") || stderr != "" {
		t.Errorf("version: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestProcessMigrate prints the DDL without a database and applies it to
// an SQLite file.
func TestProcessMigrate(t *testing.T) {
	code, stdout, _ := heraldCmd(t, "migrate", "-print", "-dialect", "postgres", "-table", "orders_outbox")
	if code != 0 || strings.Count(stdout, "CREATE TABLE IF NOT EXISTS") != 3 || !strings.Contains(stdout, `"orders_outbox_quarantine"`) {
		t.Errorf("migrate -print: exit %d\n%s", code, stdout)
	}
	dsn := "file:" + filepath.Join(t.TempDir(), "app.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"
	code, stdout, stderr := heraldCmd(t, "migrate", "-dsn", dsn)
	if code != 0 || !strings.Contains(stdout, "ready") {
		t.Errorf("migrate: exit %d\n%s%s", code, stdout, stderr)
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	writeRows(t, db, outbox.SQLite, outbox.DefaultTable, 1)
}

// TestProcessQuarantine lists, replays and discards the rows a relay
// quarantined.
func TestProcessQuarantine(t *testing.T) {
	dsn := "file:" + filepath.Join(t.TempDir(), "app.db") + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := outbox.Migrate(ctx, db, outbox.SQLite, outbox.DefaultTable); err != nil {
		t.Fatal(err)
	}
	writeRows(t, db, outbox.SQLite, outbox.DefaultTable, 3)
	refuse := writerFunc(func(context.Context, []*herald.Message) error {
		return fmt.Errorf("broker: %w", herald.ErrMessageTooLarge)
	})
	r, err := outbox.NewRelay(db, outbox.SQLite, outbox.DefaultTable, refuse, outbox.WithMaxAttempts(1),
		outbox.WithLogger(newLogger(io.Discard, 0)))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	q, _ := outbox.NewQuarantine(db, outbox.SQLite, outbox.DefaultTable)
	eventually(t, "three quarantined rows", func() bool { n, _ := q.Count(ctx); return n == 3 })
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := heraldCmd(t, "quarantine", "list", "-dsn", dsn, "-json")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var first struct {
		ID        int64  `json:"id"`
		MessageID string `json:"message_id"`
		LastError string `json:"last_error"`
	}
	if code != 0 || len(lines) != 3 || json.Unmarshal([]byte(lines[0]), &first) != nil || !strings.Contains(first.LastError, "too large") {
		t.Fatalf("list: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, stderr := heraldCmd(t, "quarantine", "replay", "-dsn", dsn, fmt.Sprint(first.ID)); code != 0 || !strings.Contains(stdout, "replayed 1") {
		t.Errorf("replay: exit %d\n%s%s", code, stdout, stderr)
	}
	if n := countRows(t, db, `"`+outbox.DefaultTable+`"`); n != 1 {
		t.Errorf("%d rows back in the outbox, want 1", n)
	}
	if code, stdout, stderr := heraldCmd(t, "quarantine", "discard", "-dsn", dsn, fmt.Sprint(first.ID+1), "999999"); code != 1 ||
		!strings.Contains(stdout, "discarded 1") || !strings.Contains(stderr, "1 of the 2 IDs were not in the quarantine") {
		t.Errorf("discard with an unknown ID: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, stdout, _ := heraldCmd(t, "quarantine", "list", "-dsn", dsn); code != 0 || strings.Count(stdout, "\n") != 2 {
		t.Errorf("list after replay and discard: exit %d\n%s", code, stdout)
	}
}

type writerFunc func(context.Context, []*herald.Message) error

func (f writerFunc) Write(ctx context.Context, msgs []*herald.Message) error { return f(ctx, msgs) }

// TestProcessRelayPostgresToRedis runs "herald relay" as a process from a
// real PostgreSQL outbox to a real Redis, with its HTTP listener, and
// stops it with SIGTERM.
func TestProcessRelayPostgresToRedis(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	addr := testenv.RedisAddr(t)
	client := redistest.Client(t, addr)
	prefix := redistest.Prefix(t, client, "herald:test:proc:")
	db, table := postgresTable(t, dsn)
	if code, stdout, stderr := heraldCmd(t, "migrate", "-dsn", dsn, "-table", table); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, stdout, stderr)
	}
	writeRows(t, db, outbox.Postgres, table, 20)

	bin, err := buildCommand()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "relay", "-dsn", dsn, "-table", table, "-redis-addr", addr, "-redis-key-prefix", prefix,
		"-http", "127.0.0.1:0", "-stats-interval", "100ms")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan map[string]any, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var l map[string]any
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				l = map[string]any{"msg": "not JSON: " + sc.Text()}
			}
			lines <- l
		}
	}()
	var logs []map[string]any
	waitLog := func(msg string) map[string]any {
		t.Helper()
		for _, l := range logs {
			if l["msg"] == msg {
				return l
			}
		}
		timeout := time.After(liveness)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the relay ended before logging %q: %v", msg, logs)
				}
				logs = append(logs, l)
				if l["msg"] == msg {
					return l
				}
			case <-timeout:
				t.Fatalf("no %q in %v", msg, logs)
			}
		}
	}
	listen := waitLog("herald relay: serving /healthz, /readyz and /metrics")["address"].(string)
	if e := waitLog("herald relay: event"); e["event"] != "active" || e["table"] != table {
		t.Errorf("first event %v, want active", e)
	}
	eventually(t, "the stream to fill", func() bool {
		n, err := client.XLen(context.Background(), prefix+"cmd.test").Result()
		return err == nil && n == 20
	})
	if s := waitLog("herald relay: stats"); s["oldest_age"] == nil || strings.Trim(fmt.Sprint(s["oldest_age"]), "0123456789.") == "" {
		t.Errorf("stats line %v: oldest_age should be a duration with its unit", s)
	}
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": `"ready":true`, "/metrics": "herald_relay_events_total"} {
		resp, err := http.Get("http://" + listen + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, want 200 with %q:\n%.600s", path, resp.StatusCode, want, body)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLog("herald relay: stopped")
	for range lines {
	}
	if err := cmd.Wait(); err != nil || cmd.ProcessState.ExitCode() != 0 {
		t.Errorf("after SIGTERM: %v, exit %d", err, cmd.ProcessState.ExitCode())
	}
}
