package redisdedup_test

import (
	"testing"

	"github.com/heraldbus/herald/dedup"
	"github.com/heraldbus/herald/dedup/storagetest"
	"github.com/heraldbus/herald/redis/redisdedup"
	"github.com/heraldbus/herald/redis/redistest"
)

// TestCluster runs the storage suite on a Redis Cluster of the test's own,
// through a ClusterClient: the keys of one storage spread over the masters.
func TestCluster(t *testing.T) {
	t.Parallel()
	cluster := redistest.StartCluster(t)
	client := cluster.Client(t, nil)
	storagetest.Run(t, func(t *testing.T) dedup.Storage {
		return redisdedup.New(client, redisdedup.WithKeyPrefix(newPrefix(t, client)))
	})
}
