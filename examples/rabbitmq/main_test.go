package main

import (
	"net"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/heraldbus/herald/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// brokerURL returns HERALD_AMQP_URL (default the local guest account)
// after checking that something listens there.
func brokerURL(t *testing.T) string {
	t.Helper()
	raw := testenv.Getenv("HERALD_AMQP_URL", defaultURL)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("HERALD_AMQP_URL: %v", err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "5672")
	}
	conn, err := net.Dial("tcp", host)
	if err != nil {
		testenv.Unavailable(t, "rabbitmq not reachable at "+host+": "+err.Error())
		return ""
	}
	_ = conn.Close()
	return raw
}

func TestRabbitMQExample(t *testing.T) {
	addr := brokerURL(t)
	var out strings.Builder
	if err := run(&out, addr); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"shop: published 12 orders",
		"order 3: payment provider timed out, retrying",
		"charged order  3 of customer-0: 40",
		"operations: dead letter from orders (group billing): ",
		"order 7: negative amount -5",
		"billing: 11 orders charged, 1 dead-lettered",
		"ledger: entries 1-10 of 2 accounts booked by instance",
		"took over",
		"ledger: entries 11-20 of 2 accounts booked by instance",
		"ledger: every account's 20 entries booked once each, in order",
		"dead letters: orders.dlq at offset 0 of stream hx.",
		"1 attempt, herald: not retried: permanent: order 7: negative amount -5",
		"cleanup: deleted 3 queues, 2 streams and 3 exchanges",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if n := strings.Count(out.String(), "0 messages ready, 0 consumers"); n != 3 {
		t.Errorf("want 3 empty queues without consumers after shutdown, got %d:\n%s", n, out.String())
	}
}

func TestRedact(t *testing.T) {
	if got := redact("amqp://guest:secret@host:5672/"); got != "amqp://guest:***@host:5672/" {
		t.Errorf("redact = %q", got)
	}
}
