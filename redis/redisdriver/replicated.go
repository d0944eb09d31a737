package redisdriver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
)

// ErrNotReplicated marks a message that Write stored on its master but
// that fewer replicas than WithWait asks acknowledged in time: a failover
// may lose it. It may also be on some replicas; a retry can duplicate it.
var ErrNotReplicated = errors.New("redisdriver: fewer replicas than WithWait asks acknowledged the write")

// validateWait checks WithWait against the client: the pipeline that
// carries the WAIT is read within the client's ReadTimeout, and a Ring
// would send the WAIT to another shard than the XADDs.
func (c config) validateWait(client goredis.UniversalClient) error {
	if c.waitReplicas <= 0 {
		return nil
	}
	var read time.Duration
	switch cl := client.(type) {
	case *goredis.Ring:
		return errors.New("redisdriver: WithWait does not work with a *goredis.Ring, whose pipelines split the writes from their WAIT")
	case *goredis.Client:
		read = cl.Options().ReadTimeout
	case *goredis.ClusterClient:
		read = cl.Options().ReadTimeout
	}
	if read > 0 && c.waitTimeout >= read {
		return fmt.Errorf("redisdriver: wait timeout %v must be below the client's ReadTimeout %v, within which the WAIT's reply is read", c.waitTimeout, read)
	}
	return nil
}

// replicatedWrite is the part of a batch that one connection carries: its
// XADDs in batch order, then one WAIT, which counts the replicas that
// acknowledged the writes of its own connection.
type replicatedWrite struct {
	pipe  goredis.Pipeliner
	index []int // of the batch's messages, in order
	xadds []*goredis.StringCmd
	wait  *goredis.IntCmd
}

// writeReplicated is Write under WithWait: one pipeline of XADDs and WAIT
// per master (a single pipeline unless the client is a cluster's), run
// side by side. A message
// fails when its XADD failed, or when its pipeline's WAIT did or counted
// too few replicas.
func (d *Driver) writeReplicated(ctx context.Context, msgs []*herald.Message, args []goredis.XAddArgs) error {
	writes, err := d.splitByMaster(ctx, args)
	if err != nil {
		return fail("write", msgs[0].Topic, "", fmt.Sprintf("%d messages: finding their masters", len(msgs)), err)
	}
	var wg sync.WaitGroup
	for _, w := range writes {
		wg.Go(func() {
			for _, i := range w.index {
				w.xadds = append(w.xadds, w.pipe.XAdd(ctx, &args[i]))
			}
			// Pipeliner has no Wait: WAIT means something on one connection only.
			w.wait = goredis.NewIntCmd(ctx, "wait", d.cfg.waitReplicas, d.cfg.waitTimeout.Milliseconds())
			_ = w.pipe.Process(ctx, w.wait)
			_, _ = w.pipe.Exec(ctx) // every command carries its own error
		})
	}
	wg.Wait()
	var failed []*herald.MessageError
	for _, w := range writes {
		notReplicated := d.waitError(w.wait)
		for j, i := range w.index {
			err := w.xadds[j].Err()
			if err == nil {
				err = notReplicated
			}
			if err != nil {
				failed = append(failed, &herald.MessageError{Index: i, ID: msgs[i].ID, Topic: msgs[i].Topic, Partition: -1, Err: err})
			}
		}
	}
	if len(failed) == 0 {
		return nil
	}
	if cc, ok := d.client.(*goredis.ClusterClient); ok {
		// The slots may have moved (a failover): the next Write asks again.
		cc.ReloadState(ctx)
	}
	if len(msgs) == 1 {
		return fail("write", msgs[0].Topic, "", "message "+msgs[0].ID, failed[0].Err)
	}
	slices.SortFunc(failed, func(a, b *herald.MessageError) int { return cmp.Compare(a.Index, b.Index) }) // as batchError lists them
	return &herald.WriteError{Driver: "redisdriver", Messages: len(msgs), Failed: failed}
}

// waitError is nil when wait counted enough replicas.
func (d *Driver) waitError(wait *goredis.IntCmd) error {
	n, err := wait.Result()
	if err != nil {
		return fmt.Errorf("%w: WAIT: %w", ErrNotReplicated, err)
	}
	if n < int64(d.cfg.waitReplicas) {
		return fmt.Errorf("%w: %d of %d replicas within %v", ErrNotReplicated, n, d.cfg.waitReplicas, d.cfg.waitTimeout)
	}
	return nil
}

// splitByMaster groups the batch by the connection that must carry it:
// the whole batch on a single node or Sentinel client, one group per
// master of the streams' slots on a cluster (whose own pipelines would
// route a WAIT, which names no key, to any node).
func (d *Driver) splitByMaster(ctx context.Context, args []goredis.XAddArgs) ([]*replicatedWrite, error) {
	cc, ok := d.client.(*goredis.ClusterClient)
	if !ok {
		w := &replicatedWrite{pipe: d.client.Pipeline()}
		for i := range args {
			w.index = append(w.index, i)
		}
		return []*replicatedWrite{w}, nil
	}
	byMaster := make(map[*goredis.Client]*replicatedWrite)
	masterOf := make(map[string]*goredis.Client)
	var writes []*replicatedWrite
	for i, a := range args {
		master, ok := masterOf[a.Stream]
		if !ok {
			var err error
			if master, err = cc.MasterForKey(ctx, a.Stream); err != nil {
				return nil, err
			}
			masterOf[a.Stream] = master
		}
		w, ok := byMaster[master]
		if !ok {
			w = &replicatedWrite{pipe: master.Pipeline()}
			byMaster[master] = w
			writes = append(writes, w)
		}
		w.index = append(w.index, i)
	}
	return writes, nil
}
