package kafkadriver_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/dlq/dlqtest"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	kafkago "github.com/segmentio/kafka-go"
)

func TestDeadLetters(t *testing.T) {
	dlqtest.Run(t, dlqtest.Config{
		NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
			brokers, real := cluster(t)
			d := newDriver(t, brokers, real)
			return d, d.DeadLetters()
		},
		RejectingWriter: func(t *testing.T) herald.Writer {
			brokers, real := cluster(t)
			return newDriver(t, brokers, real, kafkadriver.WithMaxMessageBytes(1))
		},
		// Partition 0, which every topic has on any cluster, at an offset
		// the suite never writes.
		MissingPosition: "0:999999",
		BadPositions:    []string{"0", "0:", ":1", "0:-1", "x:1", "0:1:2"},
	})
}

// TestDeadLetterMarksAreDurable checks that the marks live in the broker,
// not in the Store: a driver that starts afresh does not list what another
// one redrove, and the sidecar topic holds one compacted record per mark.
func TestDeadLetterMarksAreDurable(t *testing.T) {
	brokers, real := cluster(t)
	d := newDriver(t, brokers, real)
	ctx := testContext(t)
	topic := drivertest.Name(t, "t")
	dlqTopic := herald.DeadLetterTopic(topic)
	var msgs []*herald.Message
	for _, id := range []string{"a", "b", "c", "d"} {
		msgs = append(msgs, &herald.Message{ID: id, Topic: dlqTopic, Key: id,
			Headers: herald.Headers{herald.HeaderDeadLetterTopic: topic}, Data: []byte(id)})
	}
	if err := d.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	res, err := dlq.Redrive(ctx, d.DeadLetters(), d, dlqTopic, dlq.RedriveOptions{Select: []string{"b", "d"}})
	if err != nil || res.Redriven != 2 {
		t.Fatalf("redrive: %+v, %v", res, err)
	}

	fresh := newDriver(t, brokers, real)
	entries, next, err := fresh.DeadLetters().List(ctx, dlqTopic, "", 10)
	if err != nil || next != "" {
		t.Fatalf("List: %v, next %q", err, next)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Message.ID)
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"a", "c"}) {
		t.Errorf("a fresh store lists %v, want [a c]", left)
	}

	sidecar := dlqTopic + kafkadriver.RedrivenSuffix
	res2, err := adminClient(t, brokers).DescribeConfigs(ctx, &kafkago.DescribeConfigsRequest{
		Resources: []kafkago.DescribeConfigRequestResource{{ResourceType: kafkago.ResourceTypeTopic, ResourceName: sidecar, ConfigNames: []string{"cleanup.policy"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	policy := ""
	for _, r := range res2.Resources {
		for _, c := range r.ConfigEntries {
			if c.ConfigName == "cleanup.policy" {
				policy = c.ConfigValue
			}
		}
	}
	if policy != "compact" {
		t.Errorf("sidecar cleanup.policy %q, want compact", policy)
	}
	conn, err := kafkago.DialLeader(ctx, "tcp", brokers[0], sidecar, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	first, last, err := conn.ReadOffsets()
	if err != nil || last-first != 2 {
		t.Errorf("sidecar holds offsets %d to %d (%v), want 2 records", first, last, err)
	}
}

// TestDeadLettersAfterClose checks that a closed driver's store refuses
// work.
func TestDeadLettersAfterClose(t *testing.T) {
	brokers, _ := cluster(t)
	d, err := kafkadriver.New(brokers, kafkadriver.WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	s := d.DeadLetters()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.List(context.Background(), "orders.dlq", "", 10); !errors.Is(err, kafkadriver.ErrClosed) {
		t.Errorf("List on a closed driver: %v", err)
	}
}
