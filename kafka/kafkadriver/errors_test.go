package kafkadriver_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// A message the broker refuses for its size is listed in a
// *herald.WriteError by index, and its error is both herald's and
// kafka-go's; the message before it was written.
func TestBrokerRefusalIsAWriteError(t *testing.T) {
	_, brokers := fakeCluster(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "4000"}))
	d := newDriver(t, brokers, false)
	ctx := testContext(t)
	topic := drivertest.Name(t, "t")
	msgs := []*herald.Message{
		{ID: "small", Topic: topic, Key: "k", Data: []byte("x")},
		{ID: "large", Topic: topic, Key: "k", Data: bytes.Repeat([]byte{'x'}, 5000)},
	}
	err := d.Write(ctx, msgs)
	var we *herald.WriteError
	if !errors.As(err, &we) {
		t.Fatalf("Write = %v, want a *herald.WriteError", err)
	}
	if we.Driver != "kafkadriver" || we.Messages != 2 || len(we.Failed) != 1 {
		t.Fatalf("WriteError{Driver: %q, Messages: %d, Failed: %d}, want kafkadriver, 2, 1: %v", we.Driver, we.Messages, len(we.Failed), err)
	}
	f := we.Failed[0]
	if f.Index != 1 || f.ID != "large" || f.Topic != topic || f.Partition != kafkadriver.Partition("k", partitions) {
		t.Errorf("failure %+v, want index 1, ID large, topic %s, partition %d", f, topic, kafkadriver.Partition("k", partitions))
	}
	if !we.Written(0) || we.Written(1) {
		t.Errorf("Written(0) = %v, Written(1) = %v; want true, false", we.Written(0), we.Written(1))
	}
	if !errors.Is(err, herald.ErrMessageTooLarge) || !errors.Is(err, kafkago.MessageSizeTooLarge) {
		t.Errorf("Write = %v, want it to wrap herald.ErrMessageTooLarge and kafka-go's MessageSizeTooLarge", err)
	}
}

// Calls on a closed driver or subscription fail with a *herald.DriverError
// that names the operation, topic and group, and wraps ErrClosed.
func TestClosedDriverErrorsAreDriverErrors(t *testing.T) {
	brokers, real := cluster(t)
	d, err := kafkadriver.New(brokers, groupOptions(real)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, lagErr := sub.(herald.LagReporter).Lag(ctx)
	_, fetchErr := sub.Fetch(ctx, make([]herald.Delivery, 1))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	_, subscribeErr := d.Subscribe(ctx, topic, group)
	cases := []struct {
		name         string
		err          error
		op           string
		topic, group string
	}{
		{"Write", d.Write(ctx, []*herald.Message{{ID: "m", Topic: topic}}), "write", topic, ""},
		{"Subscribe", subscribeErr, "subscribe", topic, group},
		{"Fetch", fetchErr, "fetch", topic, group},
		{"Lag", lagErr, "lag", topic, group},
		{"Ping", d.Ping(ctx), "ping", "", ""},
	}
	for _, c := range cases {
		if drivertest.CheckDriverError(t, c.err, "kafkadriver", c.op, c.topic, c.group) == nil {
			continue
		}
		if !errors.Is(c.err, kafkadriver.ErrClosed) || !errors.Is(c.err, herald.ErrClosed) {
			t.Errorf("%s = %v, want it to wrap ErrClosed", c.name, c.err)
		}
	}
}

// CreateTopic of a topic that exists names the topic and wraps
// ErrTopicExists.
func TestCreateExistingTopicIsADriverError(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	ctx := testContext(t)
	topic := drivertest.Name(t, "t")
	if err := d.CreateTopic(ctx, topic, 1, 1); err != nil {
		t.Fatal(err)
	}
	err := d.CreateTopic(ctx, topic, 1, 1)
	var de *herald.DriverError
	if !errors.As(err, &de) || de.Driver != "kafkadriver" || de.Op != "create" || de.Topic != topic {
		t.Fatalf("second CreateTopic = %#v, want a kafkadriver create DriverError naming %s", err, topic)
	}
	if !errors.Is(err, kafkadriver.ErrTopicExists) {
		t.Errorf("second CreateTopic = %v, want it to wrap ErrTopicExists", err)
	}
}
