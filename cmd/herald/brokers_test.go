package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/nats/natsdriver"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// readBack reads n messages of topic as group from sub, acknowledging
// each, and checks that message m<i> carries the payload i (as the
// outbox fixtures write them).
func readBack(t *testing.T, sub herald.Subscription, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	got := map[string]string{}
	buf := make([]herald.Delivery, 16)
	for len(got) < n {
		k, err := sub.Fetch(ctx, buf)
		if err != nil {
			t.Fatalf("fetch: %v (have %d)", err, len(got))
		}
		for _, dl := range buf[:k] {
			got[dl.Message.ID] = string(dl.Message.Data)
			if err := sub.Ack(ctx, dl); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range n {
		if id := fmt.Sprintf("m%d", i); got[id] != fmt.Sprint(i) {
			t.Errorf("message %s: %q", id, got[id])
		}
	}
	if len(got) != n {
		t.Errorf("%d messages, want %d", len(got), n)
	}
}

// natsTest connects to the test server and returns a driver whose
// streams have a prefix of their own, the flags that reach them, and a
// cleanup that deletes them.
func natsTest(t *testing.T) (*natsdriver.Driver, []string) {
	t.Helper()
	url := testenv.NATSURL(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.ToUpper(rand8())
	streams, subjects := "HERALDCMD_"+token+"_", "heraldcmd"+strings.ToLower(token)
	d, err := natsdriver.New(js, natsdriver.WithStreamPrefix(streams), natsdriver.WithSubjectPrefix(subjects))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = d.Close()
		ctx := context.Background()
		for name := range js.StreamNames(ctx).Name() {
			if strings.HasPrefix(name, streams) {
				_ = js.DeleteStream(ctx, name)
			}
		}
		nc.Close()
	})
	return d, []string{"-nats-url", url, "-nats-stream-prefix", streams, "-nats-subject-prefix", subjects}
}

func TestDLQCommandsNATS(t *testing.T) {
	d, flags := natsTest(t)
	testDLQCommands(t, flags, d, d.DeadLetters(), "orders")
}

// TestRelayCommandNATS relays an outbox to NATS JetStream and reads the
// messages back with the NATS driver.
func TestRelayCommandNATS(t *testing.T) {
	d, flags := natsTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	sub, err := d.Subscribe(ctx, "cmd.test", "check")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	relayAndDrain(t, 9, flags...)
	readBack(t, sub, 9)
}

// amqpTest returns a RabbitMQ driver with opts whose exchanges, queues
// and streams have a prefix of their own, the flags that reach them, and
// a cleanup that deletes those of topics.
func amqpTest(t *testing.T, topics []string, opts ...amqpdriver.Option) (*amqpdriver.Driver, []string) {
	t.Helper()
	url := testenv.AMQPURL(t)
	prefix := "heraldcmd." + rand8() + "."
	d, err := amqpdriver.New(url, append(opts, amqpdriver.WithNamePrefix(prefix))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = d.Close()
		conn, err := amqp.Dial(url)
		if err != nil {
			t.Log(err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Log(err)
			return
		}
		for _, topic := range topics {
			for _, q := range []string{d.QueueName(topic, "check"), d.StreamName(topic), d.StreamName(topic) + amqpdriver.RedrivenSuffix} {
				_, _ = ch.QueueDelete(q, false, false, false)
			}
			_ = ch.ExchangeDelete(d.ExchangeName(topic), false, false)
		}
	})
	return d, []string{"-amqp-url", url, "-amqp-name-prefix", prefix}
}

// TestRelayCommandRabbitMQ relays an outbox to RabbitMQ into a group's
// queue declared beforehand (a queue holds what is published after it
// exists) and reads the messages back with the RabbitMQ driver.
func TestRelayCommandRabbitMQ(t *testing.T) {
	d, flags := amqpTest(t, []string{"cmd.test"})
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	defer cancel()
	sub, err := d.Subscribe(ctx, "cmd.test", "check")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	relayAndDrain(t, 9, flags...)
	readBack(t, sub, 9)
}

// TestDLQCommandsRabbitMQ runs the dead-letter commands on RabbitMQ. The
// services' driver keeps every topic in a stream, so that the test can
// read the original topic back with the store; the command keeps the
// dead-letter topics only, as by default.
func TestDLQCommandsRabbitMQ(t *testing.T) {
	d, flags := amqpTest(t, []string{"orders", "orders.dlq"}, amqpdriver.WithRetainedTopics(func(string) bool { return true }))
	testDLQCommands(t, flags, d, d.DeadLetters(), "orders")
}

// relayAndDrain runs "herald relay" with the broker flags on an SQLite
// outbox of n rows until the outbox is empty, and checks a clean stop.
func relayAndDrain(t *testing.T, n int, flags ...string) {
	t.Helper()
	dsn, db, table := sqliteOutbox(t, n)
	var logs drivertest.LogBuffer
	stop, status := runCommand(append([]string{"-dsn", dsn, "-table", table}, flags...), nil, &logs)
	defer stop()
	eventually(t, "the outbox to drain", func() bool { return countRows(t, db, `"`+table+`"`) == 0 })
	stop()
	if code := <-status; code != 0 {
		t.Errorf("exit %d; logs:\n%s", code, logs.String())
	}
}
