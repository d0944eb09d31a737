package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/heraldbus/herald/internal/testenv"
)

// kafkaRun runs the kafka scenario with small counts against a cluster of
// the test's own (HERALD_KAFKA_BROKERS, or a kfake cluster the test starts)
// and checks that every run deleted its topic.
func kafkaRun(t *testing.T, extra ...string) (table, progress string) {
	t.Helper()
	brokers := testenv.KafkaBrokers()
	if brokers == nil {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(kafkaPartitions))
		if err != nil {
			t.Fatalf("start kfake: %v", err)
		}
		t.Cleanup(c.Close)
		brokers = c.ListenAddrs()
	}
	before := kafkaBenchTopics(t, brokers)

	var out, prog bytes.Buffer
	args := slices.Concat([]string{"-scenario", "kafka", "-kafka-brokers", strings.Join(brokers, ",")}, small, extra)
	if err := run(args, &out, &prog); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, prog.String())
	}
	if left := kafkaBenchTopics(t, brokers); len(left) > len(before) {
		t.Errorf("the runs left topics behind: %q (before: %q)", left, before)
	}
	return out.String(), prog.String()
}

// kafkaBenchTopics lists the topics of the cluster a run may have created.
func kafkaBenchTopics(t *testing.T, brokers []string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr := &kafkago.Transport{}
	defer tr.CloseIdleConnections()
	client := &kafkago.Client{Addr: kafkago.TCP(brokers...), Transport: tr}
	md, err := client.Metadata(ctx, &kafkago.MetadataRequest{})
	if err != nil {
		t.Fatalf("list topics: %v", err)
	}
	var topics []string
	for _, tp := range md.Topics {
		if strings.HasPrefix(tp.Name, "bench.") {
			topics = append(topics, tp.Name)
		}
	}
	return topics
}

func TestKafkaScenarioInProcess(t *testing.T) {
	out, progress := kafkaRun(t, "-isolate=false")
	cases := kafkaCases(config{messages: 3000, batch: 10, keys: 50})
	rows := checkRows(t, out, cases)
	checkSlowRows(t, rows, cases, "kafka", 4)
	for _, want := range []string{
		"#### " + kafkaTablePublish, "#### " + kafkaTableConsume, "#### " + kafkaTableSlow,
		publishOnly.timed(), consumeOnly.timed(), "Servers: Kafka, 1 broker(s) at ",
		"github.com/ThreeDotsLabs/watermill-kafka/v3 v", "github.com/IBM/sarama v", "github.com/segmentio/kafka-go v",
		"(750 messages)", // herald's single-message publish runs a quarter of -n
		"| handler time (mean) | of nominal ceiling | of bare-sleeper ceiling |",
		"| bare goroutines | 256 goroutines each sleeping 1 ms in a loop, no broker",
		"| bare goroutines | 4 goroutines each sleeping 1 ms in a loop, no broker",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Count(progress, "msgs/s"); got != len(cases) {
		t.Errorf("progress shows %d runs, want %d:\n%s", got, len(cases), progress)
	}
	if got := strings.Count(progress, "ms handler"); got != 8 {
		t.Errorf("progress shows the handler time of %d runs, want 8 (the 1 ms handler rows and their ceilings):\n%s", got, progress)
	}
}

// TestKafkaScenarioIsolated runs one case of each mode, both references
// and a ceiling in child processes on the test's cluster.
func TestKafkaScenarioIsolated(t *testing.T) {
	out, _ := kafkaRun(t, "-case", "kafka-go-writer,watermill-consume,kafka-go-reader,herald-slow-c16,ceiling-c16")
	rows := tableRows(out)
	if len(rows) != 5 {
		t.Fatalf("rows = %q, want 5", rows)
	}
	for _, r := range rows {
		checkCPU(t, r)
	}
	if cs := cells(rows[3]); len(cs) < 9 || !strings.HasSuffix(cs[8], "%") {
		t.Errorf("row %q lacks its share of the bare-sleeper ceiling", rows[3])
	}
}

// TestKafkaLocalCluster runs a case without a configured cluster when the
// environment names none: the parent starts kfake and its child uses it.
func TestKafkaLocalCluster(t *testing.T) {
	if testenv.KafkaBrokers() != nil {
		t.Skip("HERALD_KAFKA_BROKERS is set: the in-process cluster is not used")
	}
	var out, progress bytes.Buffer
	err := run(slices.Concat([]string{"-scenario", "kafka", "-case", "herald-publish-batch"}, small), &out, &progress)
	if err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	if !strings.Contains(out.String(), "in-process kfake") {
		t.Errorf("header does not name the in-process cluster:\n%s", out.String())
	}
}

func TestKafkaUnreachable(t *testing.T) {
	// Nothing listens on port 1: the scenario fails before any run, and says
	// where it looked.
	var out, progress bytes.Buffer
	err := run(slices.Concat([]string{"-scenario", "kafka", "-kafka-brokers", "127.0.0.1:1"}, small), &out, &progress)
	if err == nil || !strings.Contains(err.Error(), "kafka at 127.0.0.1:1 (HERALD_KAFKA_BROKERS)") {
		t.Fatalf("run = %v, want an error naming the address", err)
	}
	if progress.Len() > 0 {
		t.Errorf("runs happened:\n%s", progress.String())
	}
}
