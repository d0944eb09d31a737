package main

import (
	"bytes"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald/internal/testenv"
)

// amqpTestURL returns HERALD_AMQP_URL (default defaultAMQPURL), as the
// driver's tests do, after checking that something listens there: a
// one-line skip on a developer machine without a broker, a failure under
// CI.
func amqpTestURL(t *testing.T) string {
	t.Helper()
	raw := testenv.Getenv("HERALD_AMQP_URL", defaultAMQPURL)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("HERALD_AMQP_URL %q: %v", raw, err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5672")
	}
	conn, err := net.DialTimeout("tcp", host, 2*time.Second)
	if err != nil {
		testenv.Unavailable(t, "rabbitmq not reachable at "+host+": "+err.Error())
		return ""
	}
	_ = conn.Close()
	return raw
}

// rabbitmqRun runs the rabbitmq scenario with small counts against the
// test broker and checks that no exchange or queue any run may have
// declared is left: herald's (prefix "herald."), the bare client's and
// Watermill's (named after the topic).
func rabbitmqRun(t *testing.T, extra ...string) (table, progress string) {
	t.Helper()
	raw := amqpTestURL(t)
	t.Setenv("HERALD_AMQP_URL", raw)
	token := testToken()

	var out, prog bytes.Buffer
	args := slices.Concat([]string{"-scenario", "rabbitmq", "-run-token", token}, small, extra)
	if err := run(args, &out, &prog); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, prog.String())
	}

	admin, err := newAMQPAdmin(config{amqpURL: raw})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.conn.Close()
	exists := func(declare func(ch *amqp.Channel) error) bool {
		err := admin.do(declare)
		var amqpErr *amqp.Error
		if err != nil && !(errors.As(err, &amqpErr) && amqpErr.Code == amqp.NotFound) {
			t.Fatalf("passive declare: %v", err)
		}
		return err == nil
	}
	for _, topic := range runTopics(rabbitmqCases(config{batch: 10, keys: 50, publishers: 4}), token, 1) {
		for _, name := range []string{topic, "herald." + topic} {
			if exists(func(ch *amqp.Channel) error {
				return ch.ExchangeDeclarePassive(name, "", true, false, false, false, nil)
			}) {
				t.Errorf("exchange %s is left", name)
			}
		}
		for _, name := range []string{topic + "@" + benchGroup, "herald." + topic + "@" + benchGroup, topic + "_" + benchGroup} {
			if exists(func(ch *amqp.Channel) error {
				_, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
				return err
			}) {
				t.Errorf("queue %s is left", name)
			}
		}
	}
	return out.String(), prog.String()
}

func TestRabbitMQScenarioInProcess(t *testing.T) {
	out, progress := rabbitmqRun(t, "-isolate=false")
	cases := rabbitmqCases(config{messages: 3000, batch: 10, keys: 50, publishers: 4})
	rows := checkRows(t, out, cases)
	checkSlowRows(t, rows, cases, "rabbitmq", 1)
	for _, want := range []string{
		"#### " + brokerTablePublish, "#### " + brokerTablePublishBatch, "#### " + brokerTableConsume, "#### " + brokerTableSlow,
		publishOnly.timed(), consumeOnly.timed(), "Servers: RabbitMQ ", "at amqp://guest:xxx@",
		"github.com/ThreeDotsLabs/watermill-amqp/v3 v", "github.com/rabbitmq/amqp091-go v",
		"| vs reference |", "| handler time (mean) | of nominal ceiling | of bare-sleeper ceiling |",
		"| bare goroutines | 64 goroutines each sleeping 1 ms in a loop, no broker",
		"(1,500 messages)", // the consume rows run half of -n
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(progress, "msgs/s"); got != len(cases) {
		t.Errorf("progress shows %d runs, want %d:\n%s", got, len(cases), progress)
	}
	if got := strings.Count(progress, "ms handler"); got != 4 {
		t.Errorf("progress shows the handler time of %d runs, want 4 (the 1 ms handler rows and the ceiling):\n%s", got, progress)
	}
}

// TestRabbitMQScenarioIsolated runs a case of each mode, a reference and
// the ceiling in child processes.
func TestRabbitMQScenarioIsolated(t *testing.T) {
	out, _ := rabbitmqRun(t, "-case", "amqp-publish-batch,herald-consume,watermill-consume,amqp-slow-c64,ceiling-c64")
	rows := tableRows(out)
	if len(rows) != 5 {
		t.Fatalf("rows = %q, want 5", rows)
	}
	for _, r := range rows {
		checkCPU(t, r)
	}
	if cs := cells(rows[3]); len(cs) < 10 || !strings.HasSuffix(cs[9], "%") || cs[9] == "-" {
		t.Errorf("row %q lacks its share of the bare-sleeper ceiling", rows[3])
	}
}

func TestRabbitMQUnreachable(t *testing.T) {
	// Nothing listens on port 1: the scenario fails before any run, and says
	// where it looked, without the password.
	t.Setenv("HERALD_AMQP_URL", "amqp://guest:secret@127.0.0.1:1/")
	var out, progress bytes.Buffer
	err := run(slices.Concat([]string{"-scenario", "rabbitmq"}, small), &out, &progress)
	if err == nil || !strings.Contains(err.Error(), "rabbitmq at amqp://guest:xxx@127.0.0.1:1/ (HERALD_AMQP_URL)") {
		t.Fatalf("run = %v, want an error naming the address", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("the error shows the password: %v", err)
	}
	if progress.Len() > 0 {
		t.Errorf("runs happened:\n%s", progress.String())
	}
}
