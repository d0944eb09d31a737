package redisdriver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/parallel"
)

// Driver is a herald.Driver on Redis Streams. It is safe for concurrent
// use. It does not own the client: the caller closes it, after Close.
type Driver struct {
	client goredis.UniversalClient
	cfg    config

	closed atomic.Bool
	mu     sync.Mutex // subs; Subscribe checks closed under it
	subs   map[*subscription]struct{}

	movers movers // of the delayed sets of topics with open subscriptions
}

var _ herald.Driver = (*Driver)(nil)

// New returns a Driver that talks to Redis through client: a *Client, a
// *ClusterClient, a failover (Sentinel) client, or whatever
// NewUniversalClient returns. It returns an error that lists every invalid
// option, and never contacts Redis itself.
func New(client goredis.UniversalClient, opts ...Option) (*Driver, error) {
	cfg := newConfig(opts)
	err := errors.Join(cfg.validate(), cfg.validateWait(client))
	if client == nil {
		err = errors.Join(errors.New("redisdriver: nil client"), err)
	}
	if err != nil {
		return nil, err
	}
	return &Driver{client: client, cfg: cfg, subs: make(map[*subscription]struct{})}, nil
}

// Close closes the subscriptions still open (each flushing its
// acknowledgments and handing its entries back, bounded by 10 s), and
// makes later Write, Subscribe and Ping calls fail with herald.ErrClosed.
// It does not close the client, which stays the caller's. Close is
// idempotent.
func (d *Driver) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	// A Subscribe that added its subscription before is in subs; one
	// after finds closed set.
	d.mu.Lock()
	subs := slices.Collect(maps.Keys(d.subs))
	d.mu.Unlock()
	return parallel.Each(subs, func(s *subscription) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return s.Close(ctx)
	})
}

// fail builds the driver's errors: op on topic and group ("" when none),
// detail saying more, err the cause.
func fail(op, topic, group, detail string, err error) error {
	return &herald.DriverError{Driver: "redisdriver", Op: op, Topic: topic, Group: group, Detail: detail, Err: err}
}

// isClosed reports whether Close was called.
func (d *Driver) isClosed() bool { return d.closed.Load() }

func (d *Driver) forget(s *subscription) {
	d.mu.Lock()
	_, ok := d.subs[s]
	delete(d.subs, s)
	d.mu.Unlock()
	if ok {
		d.stopMover(s.topic)
	}
}

// StreamKey returns the Redis key of topic's stream.
func (d *Driver) StreamKey(topic string) string { return d.cfg.prefix + topic }

// Write appends msgs to their topics' streams with one pipelined XADD per
// message, in one round trip, in slice order (so messages of one key keep
// their order). A nil message, an invalid topic or an entry above the size
// limit fails the whole call before anything is sent. A cancelled ctx
// fails it before anything is sent too; once sent, the round trip runs to
// the end.
//
// Partial writes: the XADDs of a batch are not a transaction. When some of
// them fail, Write returns a *herald.WriteError listing each failed
// message (index, ID, topic, partition -1, the command's error); every
// message it does not list was stored. A listed message may have been
// stored too when the connection dropped after Redis received it. Retry
// the failed messages, or the whole batch; consumers deduplicate by
// Message.ID (herald.WithDedup). Write's other errors, a single message's
// failure included, are *herald.DriverError.
//
// With WithWait, the XADDs bound for one master are followed by a WAIT on
// the same connection, and a message fails with ErrNotReplicated when
// fewer replicas than asked acknowledged it in time.
func (d *Driver) Write(ctx context.Context, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.isClosed() {
		return fail("write", "", "", "", herald.ErrClosed)
	}
	args, delayed, err := d.entries(msgs)
	if err != nil {
		return err
	}
	if delayed != nil {
		return d.writeMixed(ctx, msgs, args, delayed)
	}
	if d.cfg.waitReplicas > 0 {
		return d.writeReplicated(ctx, msgs, args)
	}
	if len(msgs) == 1 {
		if err := d.client.XAdd(ctx, &args[0]).Err(); err != nil {
			return fail("write", msgs[0].Topic, "", "message "+msgs[0].ID, err)
		}
		return nil
	}
	cmds := make([]*goredis.StringCmd, len(msgs))
	pipe := d.client.Pipeline()
	for i := range args {
		cmds[i] = pipe.XAdd(ctx, &args[i])
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return batchError(msgs, cmds, err)
	}
	return nil
}

// entries checks msgs and makes the XADD of each, or its delayed-set
// entry when it is delayed (delayed is nil when none is); a bad message
// fails the batch.
func (d *Driver) entries(msgs []*herald.Message) ([]goredis.XAddArgs, []delayedEntry, error) {
	args := make([]goredis.XAddArgs, len(msgs))
	minID := ""
	if d.cfg.trimMaxAge > 0 {
		minID = strconv.FormatInt(time.Now().Add(-d.cfg.trimMaxAge).UnixMilli(), 10)
	}
	var topic, key string
	var entries entryBuilder
	var delayed []delayedEntry // per message; nil while none is delayed
	now := time.Now()
	for i, m := range msgs {
		if m == nil {
			return nil, nil, fail("write", "", "", fmt.Sprintf("message %d of %d", i+1, len(msgs)), herald.ErrNilEvent)
		}
		if m.Topic != topic || key == "" {
			if err := herald.ValidateName("topic", m.Topic); err != nil {
				return nil, nil, fail("write", m.Topic, "", "message "+m.ID, err)
			}
			topic, key = m.Topic, d.StreamKey(m.Topic)
		}
		vals, size := entries.values(m)
		if d.cfg.maxMessageBytes > 0 && size > d.cfg.maxMessageBytes {
			return nil, nil, fail("write", m.Topic, "", fmt.Sprintf("message %s: entry of %d bytes, limit %d",
				m.ID, size, d.cfg.maxMessageBytes), herald.ErrMessageTooLarge)
		}
		if _, ok := m.Headers[herald.HeaderDeliverAt]; ok {
			e, err := d.delayed(m, vals, now)
			if err != nil {
				return nil, nil, err
			}
			if e.key != "" {
				if delayed == nil {
					delayed = make([]delayedEntry, len(msgs))
				}
				delayed[i] = e
				continue
			}
		}
		args[i] = goredis.XAddArgs{Stream: key, Values: vals, MaxLen: d.cfg.trimMaxLen, MinID: minID, Approx: minID != "" || d.cfg.trimMaxLen > 0}
	}
	return args, delayed, nil
}

// batchError is what a pipelined Write whose Exec returned err did not
// store: a *herald.WriteError listing every message whose XADD failed.
func batchError(msgs []*herald.Message, cmds []*goredis.StringCmd, err error) error {
	var failed []*herald.MessageError
	for i, c := range cmds {
		if cerr := c.Err(); cerr != nil {
			failed = append(failed, &herald.MessageError{Index: i, ID: msgs[i].ID, Topic: msgs[i].Topic, Partition: -1, Err: cerr})
		}
	}
	if len(failed) == 0 {
		// Not one command failed, yet the pipeline did: nothing says what
		// was stored.
		return fail("write", "", "", fmt.Sprintf("%d messages", len(msgs)), err)
	}
	return &herald.WriteError{Driver: "redisdriver", Messages: len(msgs), Failed: failed}
}

// Ping sends PING on the client, which on a new connection first runs
// its AUTH and SELECT, so a wrong password or database number shows here
// (herald.Pinger).
func (d *Driver) Ping(ctx context.Context) error {
	if d.isClosed() {
		return fail("ping", "", "", "", herald.ErrClosed)
	}
	if err := d.client.Ping(ctx).Err(); err != nil {
		return fail("ping", "", "", "", err)
	}
	return nil
}

// Subscribe joins group on topic as a new consumer, creating the stream and
// the group when they do not exist (XGROUP CREATE ... MKSTREAM at the
// configured start position). The Subscription runs one background
// goroutine until Close.
func (d *Driver) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	if err := errors.Join(herald.ValidateName("topic", topic), herald.ValidateName("group", group)); err != nil {
		return nil, fail("subscribe", topic, group, "", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.isClosed() {
		return nil, fail("subscribe", topic, group, "", herald.ErrClosed)
	}
	s := newSubscription(d, topic, group, consumerName())
	if err := s.createGroup(ctx, startID(s.cfg.start)); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.closed.Load() {
		d.mu.Unlock()
		return nil, fail("subscribe", topic, group, "", herald.ErrClosed)
	}
	d.subs[s] = struct{}{}
	d.startMover(topic)
	d.mu.Unlock()
	go s.background()
	return s, nil
}

// GroupStats is a consumer group's state on one topic, from XINFO GROUPS.
type GroupStats struct {
	// Consumers is how many consumers the group has, departed ones that
	// still hold pending entries included.
	Consumers int64
	// Pending is how many entries were delivered and not acknowledged.
	Pending int64
	// Lag is how many entries of the stream the group has not read yet, or
	// -1 when Redis cannot tell (after trimming or deletions; see the
	// package documentation, "Trimming"). Watch it against the trim limit.
	Lag int64
	// LastDeliveredID is the ID of the last entry the group read.
	LastDeliveredID string
}

// ErrNoGroup is returned by GroupStats for a topic or group that does not
// exist.
var ErrNoGroup = errors.New("redisdriver: no such stream or consumer group")

// GroupStats returns the state of group on topic, for monitoring: a Lag
// that nears the trim limit means the group is about to lose entries.
func (d *Driver) GroupStats(ctx context.Context, topic, group string) (GroupStats, error) {
	if err := errors.Join(herald.ValidateName("topic", topic), herald.ValidateName("group", group)); err != nil {
		return GroupStats{}, fail("group stats", topic, group, "", err)
	}
	groups, err := d.client.XInfoGroups(ctx, d.StreamKey(topic)).Result()
	if err != nil {
		if isNoGroup(err) || strings.Contains(err.Error(), "no such key") {
			return GroupStats{}, fail("group stats", topic, group, "", ErrNoGroup)
		}
		return GroupStats{}, fail("group stats", topic, group, "", err)
	}
	for _, g := range groups {
		if g.Name == group {
			return GroupStats{Consumers: g.Consumers, Pending: g.Pending, Lag: g.Lag, LastDeliveredID: g.LastDeliveredID}, nil
		}
	}
	return GroupStats{}, fail("group stats", topic, group, "", ErrNoGroup)
}

// ErrTrimmed marks pending entries that were deleted from the stream
// (trimmed, or removed with XDEL) before they were acknowledged: they are
// lost to the group. See EntriesError.
var ErrTrimmed = errors.New("redisdriver: pending entries deleted from the stream before they were acknowledged")

// ErrClaimLost marks in-flight entries that another member of the group
// took over, because this subscription could not keep them claimed (Redis
// was unreachable for longer than the claim min idle time). They will be
// handled again by that member. See EntriesError.
var ErrClaimLost = errors.New("redisdriver: in-flight entries were taken over by another consumer")

// EntriesError names the stream entries an ErrTrimmed or ErrClaimLost
// concerns; the driver reports it to the error handler (WithErrorHandler).
type EntriesError struct {
	Topic string
	Group string
	IDs   []string // stream entry IDs
	Err   error    // ErrTrimmed or ErrClaimLost
}

func (e *EntriesError) Error() string {
	ids := e.IDs
	more := ""
	if len(ids) > 5 {
		ids, more = ids[:5], fmt.Sprintf(" and %d more", len(e.IDs)-5)
	}
	return fmt.Sprintf("%v: topic %q group %q entries %s%s", e.Err, e.Topic, e.Group, strings.Join(ids, ", "), more)
}

// Unwrap returns ErrTrimmed or ErrClaimLost.
func (e *EntriesError) Unwrap() error { return e.Err }

// consumerName is unique per Subscription and says where it runs:
// host-pid-random.
func consumerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

func isNoGroup(err error) bool { return goredis.HasErrorPrefix(err, "NOGROUP") }

// isGroupGone reports an error that means the stream or the group vanished
// under a running consumer: recreate the group and go on.
func isGroupGone(err error) bool {
	return isNoGroup(err) || goredis.HasErrorPrefix(err, "UNBLOCKED")
}
