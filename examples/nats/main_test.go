package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/heraldbus/herald/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// serverURL returns HERALD_NATS_URL (default defaultURL) after checking
// that a server with JetStream answers there.
func serverURL(t *testing.T) string {
	t.Helper()
	url := testenv.Getenv("HERALD_NATS_URL", defaultURL)
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.NoReconnect())
	if err != nil {
		testenv.Unavailable(t, "nats not reachable at "+redact(url)+": "+err.Error())
		return ""
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
	}
	if err != nil {
		testenv.Unavailable(t, "nats at "+redact(url)+" has no JetStream: "+err.Error())
	}
	return url
}

func TestNATSExample(t *testing.T) {
	url := serverURL(t)
	var out strings.Builder
	if err := run(&out, url); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"then 3 of them again with the same message IDs",
		"_orders holds 12 messages (duplicate window 2m0s)",
		"order 3: payment provider timed out, retrying",
		"charged order  3 of customer-0: 40 (attempt 2)",
		"operations: dead letter from orders (group billing): ",
		"order 7: negative amount -5",
		"billing: 11 orders charged, 11 of them exactly once; 1 dead-lettered",
		"packing: shutdown waited for the handler: packed in ",
		"1 run(s), at most 1 at once",
		"packing: consumer packing delivered the parcel 1 time(s), 0 unacknowledged now",
		"warehouse: instance 1: order 5 hangs the handler (delivery 1)",
		"warehouse: instance 2: order 5 hangs the handler (delivery 2)",
		"operations: dead letter from orders (group warehouse): herald: delivered 3 times, more than the limit of 2",
		"deliveries of 12 orders; the 11 packed were each at delivery 1",
		"customer-2: [2 8 11]",
		"cleanup: deleted 4 consumers, 3 streams and the release bucket",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "instance 3: order 5 hangs") {
		t.Errorf("the handler ran for a delivery beyond the limit:\n%s", out.String())
	}
	if n := strings.Count(out.String(), "0 pending, 0 unacknowledged"); n != 4 {
		t.Errorf("want 4 consumers with nothing pending after shutdown, got %d:\n%s", n, out.String())
	}
}

func TestRedact(t *testing.T) {
	if got := redact("nats://user:secret@host:4222"); got != "nats://user:xxxxx@host:4222" {
		t.Errorf("redact = %q", got)
	}
}
