package redisdriver_test

import (
	"context"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/dlq/dlqtest"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/redis/redisdedup"
	"github.com/heraldbus/herald/redis/redisdriver"
	"github.com/heraldbus/herald/redis/redistest"
)

// TestCluster runs the conformance and dead-letter suites on a Redis
// Cluster of the test's own, through a ClusterClient: topics land on
// different masters, and every script and command must route by its key.
func TestCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t)
	client := cluster.Client(t, nil)
	clusterEnv := func(t testing.TB) testEnv {
		return testEnv{client: client, prefix: newPrefix(t, client)}
	}
	t.Run("Conformance", func(t *testing.T) {
		t.Parallel()
		drivertest.Run(t, drivertest.Config{
			NewDriver: func(t *testing.T) herald.Driver {
				return clusterEnv(t).driver(t)
			},
			MaxMessageBytes: redisdriver.DefaultMaxMessageBytes,
			DeliveryCounts:  true,
			Lag:             true,
			ErrorReporting:  true,
			TimePrecision:   time.Nanosecond,
			Delay:           true,
		})
	})
	t.Run("ConformanceWithWait", func(t *testing.T) {
		t.Parallel()
		drivertest.Run(t, drivertest.Config{
			NewDriver: func(t *testing.T) herald.Driver {
				return clusterEnv(t).driver(t, redisdriver.WithWait(1, time.Second))
			},
			MaxMessageBytes: redisdriver.DefaultMaxMessageBytes,
			DeliveryCounts:  true,
			Lag:             true,
			ErrorReporting:  true,
			TimePrecision:   time.Nanosecond,
		})
	})
	t.Run("Wait", func(t *testing.T) {
		t.Parallel()
		env := clusterEnv(t)
		topic := drivertest.Name(t, "t")
		// One replica per master: a batch over two topics (two slots, maybe
		// two masters) waits for it; two is more than there are.
		err := env.driver(t, redisdriver.WithWait(1, time.Second)).Write(context.Background(), []*herald.Message{
			message(topic, "a", "k"), message(topic+".other", "b", "k"), message(topic, "c", "k"),
		})
		if err != nil {
			t.Fatalf("Write waiting for 1 replica: %v", err)
		}
		checkNotReplicated(t, env.driver(t, redisdriver.WithWait(2, 50*time.Millisecond)), topic)
	})
	t.Run("DeadLetters", func(t *testing.T) {
		t.Parallel()
		dlqtest.Run(t, dlqtest.Config{
			NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
				d := clusterEnv(t).driver(t)
				return d, d.DeadLetters()
			},
			RejectingWriter: func(t *testing.T) herald.Writer {
				return clusterEnv(t).driver(t, redisdriver.WithMaxMessageBytes(1))
			},
			Dedup: func(t *testing.T) dedup.Storage {
				env := clusterEnv(t)
				return redisdedup.New(env.client, redisdedup.WithKeyPrefix(env.prefix+"dedup:"))
			},
			MissingPosition: "999999-0",
		})
	})
}
