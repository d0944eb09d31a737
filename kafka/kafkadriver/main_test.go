package kafkadriver_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
	"github.com/heraldbus/herald/kafka/kafkadriver"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(moverChildEnv) != "" {
		os.Exit(runMoverChild())
	}
	goleak.VerifyTestMain(m)
}

// cluster returns the brokers to test against: HERALD_KAFKA_BROKERS when
// set (the cluster must allow topic auto-creation), or an in-process kfake
// broker of this test's own. real tells which.
func cluster(t testing.TB, opts ...kfake.Opt) (brokers []string, real bool) {
	t.Helper()
	if b := testenv.KafkaBrokers(); b != nil {
		return b, true
	}
	base := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(4),
		kfake.GroupMinSessionTimeout(100 * time.Millisecond),
	}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs(), false
}

// testLogger discards the driver's logs unless HERALD_KAFKA_TEST_LOG names
// a level (debug, info, warn), then they go to stderr.
func testLogger() *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(os.Getenv("HERALD_KAFKA_TEST_LOG"))); err != nil || os.Getenv("HERALD_KAFKA_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// groupOptions make rebalances and commits quick: kfake accepts short
// sessions; a real broker's group.min.session.timeout.ms is 6 s by default.
func groupOptions(real bool) []kafkadriver.Option {
	heartbeat, session := 100*time.Millisecond, time.Second
	if real {
		heartbeat, session = 500*time.Millisecond, 6*time.Second
	}
	return []kafkadriver.Option{
		kafkadriver.WithAutoCreateTopics(),
		kafkadriver.WithHeartbeatInterval(heartbeat),
		kafkadriver.WithSessionTimeout(session),
		kafkadriver.WithRebalanceTimeout(3 * session),
		kafkadriver.WithRevokeTimeout(session / 2),
		kafkadriver.WithCommitInterval(100 * time.Millisecond),
		kafkadriver.WithJoinGroupBackoff(100 * time.Millisecond),
		kafkadriver.WithPartitionWatchInterval(500 * time.Millisecond),
		kafkadriver.WithLogger(testLogger()),
	}
}

// newDriver returns a driver on brokers with the quick group settings and
// opts, closed when the test ends.
func newDriver(t testing.TB, brokers []string, real bool, opts ...kafkadriver.Option) *kafkadriver.Driver {
	t.Helper()
	d, err := kafkadriver.New(brokers, append(groupOptions(real), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("driver Close: %v", err)
		}
	})
	return d
}

// adminClient is a kafka-go client for checks the driver does not offer
// (committed offsets, raw reads); its connections close with the test.
func adminClient(t testing.TB, brokers []string) *kafkago.Client {
	tr := &kafkago.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &kafkago.Client{Addr: kafkago.TCP(brokers...), Transport: tr}
}

func testContext(t testing.TB) context.Context { return drivertest.Context(t, 2*time.Minute) }
