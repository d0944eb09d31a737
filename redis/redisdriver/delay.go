package redisdriver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald"
)

// Delayed delivery; see "Delayed delivery" in the package documentation.

// DefaultDelayPollInterval is how often a mover looks for due entries
// when it knows of none due sooner: the precision of delayed delivery.
const DefaultDelayPollInterval = 100 * time.Millisecond

// moveBatch bounds the entries one run of the move script moves.
const moveBatch = 500

// memberPrefixLen is the length of the ordering prefix of a delayed-set
// member: 16 hex digits of the write's Unix nanoseconds and 8 of a
// process counter, so that equal due times move in write order.
const memberPrefixLen = 24

// moveScript moves the due entries of one topic from its delayed set
// KEYS[1] to its stream KEYS[2], and moves members it cannot read to
// KEYS[3]; all three keys share a hash slot (see DelayKey). ARGV: [1] now
// in Unix ms, [2] the most entries to move, [3] MAXLEN of the XADD ("0":
// none), [4] its MINID ("": none). Each member is an ordering prefix and
// then the entry's fields and values as netstrings ("<len>:<bytes>").
// One atomic step: an entry is either still in the set or in the stream,
// never both and never neither, so movers in several processes neither
// lose nor duplicate one. It returns {moved, unreadable, the score of the
// next entry or ""}.
var moveScript = goredis.NewScript(`
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local bad = 0
for _, m in ipairs(due) do
	local args = {'XADD', KEYS[2]}
	if ARGV[3] ~= '0' then
		args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = ARGV[3]
	elseif ARGV[4] ~= '' then
		args[#args + 1] = 'MINID'; args[#args + 1] = '~'; args[#args + 1] = ARGV[4]
	end
	args[#args + 1] = '*'
	local i, ok, nf = ` + strconv.Itoa(memberPrefixLen+1) + `, true, 0
	while i <= #m do
		local c = string.find(m, ':', i, true)
		local n = c and tonumber(string.sub(m, i, c - 1))
		if not n or c + n > #m then ok = false; break end
		args[#args + 1] = string.sub(m, c + 1, c + n)
		nf = nf + 1
		i = c + n + 1
	end
	if ok and nf > 0 and nf % 2 == 0 then
		redis.call(unpack(args))
	else
		bad = bad + 1
		redis.call('ZADD', KEYS[3], redis.call('ZSCORE', KEYS[1], m), m)
	end
end
if #due > 0 then
	redis.call('ZREM', KEYS[1], unpack(due))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due - bad, bad, nxt[2] or ''}
`)

// ErrNoDelaySlot is returned for a delayed message when the key prefix
// has braces that keep its delayed set out of its stream's hash slot.
var ErrNoDelaySlot = errors.New("redisdriver: the key prefix's braces keep the delayed set out of the stream's hash slot")

// DelayKey returns the key of topic's delayed set: prefix + "delayed:" +
// topic when the prefix has a hash tag of its own, else prefix +
// "delayed:{" + StreamKey(topic) + "}". Either way it starts with the
// prefix and lies in the hash slot of the topic's stream, so the move
// script runs on Redis Cluster. A prefix with braces and no hash tag fails
// with ErrNoDelaySlot.
func (d *Driver) DelayKey(topic string) (string, error) {
	p := d.cfg.prefix
	if hasHashTag(p) {
		return p + "delayed:" + topic, nil
	}
	if strings.ContainsAny(p, "{}") {
		return "", ErrNoDelaySlot
	}
	return p + "delayed:{" + d.StreamKey(topic) + "}", nil
}

// hasHashTag reports whether key has a Redis Cluster hash tag: a "{"
// followed later by a "}" with something between.
func hasHashTag(key string) bool {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return false
	}
	end := strings.IndexByte(key[open+1:], '}')
	return end > 0
}

// DelayPrecision is the mover's poll interval (herald.DelayedWriter), or 0
// under WithWait, which delayed delivery does not support yet.
func (d *Driver) DelayPrecision() time.Duration {
	if d.cfg.waitReplicas > 0 {
		return 0
	}
	return d.cfg.delayPoll
}

var _ herald.DelayedWriter = (*Driver)(nil)

var memberSeq atomic.Uint32

// delayedEntry is one message of a Write bound for its topic's delayed set.
type delayedEntry struct {
	key    string
	score  float64 // due time in Unix ms, rounded up: never moved early
	member string
}

// delayedEntryOf encodes the XADD values of a delayed message as a member
// of its delayed set.
func (d *Driver) delayedEntryOf(m *herald.Message, vals []any, due, now time.Time) (delayedEntry, error) {
	key, err := d.DelayKey(m.Topic)
	if err != nil {
		return delayedEntry{}, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%016x%08x", uint64(now.UnixNano()), memberSeq.Add(1))
	for _, v := range vals {
		var s string
		switch v := v.(type) {
		case string:
			s = v
		case []byte:
			s = string(v)
		}
		b.WriteString(strconv.Itoa(len(s)))
		b.WriteByte(':')
		b.WriteString(s)
	}
	ms := math.Ceil(float64(due.UnixNano()) / 1e6)
	return delayedEntry{key: key, score: ms, member: b.String()}, nil
}

// writeMixed writes a batch with delayed messages: one pipeline, in slice
// order, of a ZADD to its delayed set for each delayed message and an
// XADD for each other one. Its failures are reported as Write's are.
func (d *Driver) writeMixed(ctx context.Context, msgs []*herald.Message, args []goredis.XAddArgs, delayed []delayedEntry) error {
	cmds := make([]goredis.Cmder, len(msgs))
	pipe := d.client.Pipeline()
	for i := range msgs {
		if e := delayed[i]; e.key != "" {
			cmds[i] = pipe.ZAdd(ctx, e.key, goredis.Z{Score: e.score, Member: e.member})
		} else {
			cmds[i] = pipe.XAdd(ctx, &args[i])
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		var failed []*herald.MessageError
		for i, c := range cmds {
			if cerr := c.Err(); cerr != nil {
				failed = append(failed, &herald.MessageError{Index: i, ID: msgs[i].ID, Topic: msgs[i].Topic, Partition: -1, Err: cerr})
			}
		}
		if len(failed) == 0 || len(msgs) == 1 {
			return fail("write", msgs[0].Topic, "", fmt.Sprintf("%d messages", len(msgs)), err)
		}
		return &herald.WriteError{Driver: "redisdriver", Messages: len(msgs), Failed: failed}
	}
	return nil
}

// movers runs one mover per topic with open subscriptions of this Driver.
type movers struct {
	mu     sync.Mutex
	topics map[string]*mover
}

type mover struct {
	refs   int
	cancel context.CancelFunc
	done   chan struct{}
}

// startMover counts a subscription of topic, starting its mover with the
// first.
func (d *Driver) startMover(topic string) {
	d.movers.mu.Lock()
	defer d.movers.mu.Unlock()
	if d.movers.topics == nil {
		d.movers.topics = make(map[string]*mover)
	}
	if mv := d.movers.topics[topic]; mv != nil {
		mv.refs++
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	mv := &mover{refs: 1, cancel: cancel, done: make(chan struct{})}
	d.movers.topics[topic] = mv
	go d.runMover(ctx, topic, mv.done)
}

// stopMover uncounts a subscription of topic, stopping its mover with the
// last and waiting for it.
func (d *Driver) stopMover(topic string) {
	d.movers.mu.Lock()
	mv := d.movers.topics[topic]
	if mv == nil {
		d.movers.mu.Unlock()
		return
	}
	mv.refs--
	if mv.refs > 0 {
		d.movers.mu.Unlock()
		return
	}
	delete(d.movers.topics, topic)
	d.movers.mu.Unlock()
	mv.cancel()
	<-mv.done
}

// runMover moves topic's due entries until ctx ends: at once again when a
// run moved a full batch, at the next entry's due time when that comes
// before the poll interval, else after the poll interval.
func (d *Driver) runMover(ctx context.Context, topic string, done chan<- struct{}) {
	defer close(done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		wait := d.cfg.delayPoll
		moved, next, err := d.MoveDue(ctx, topic, time.Now())
		switch {
		case err != nil && ctx.Err() == nil:
			d.reportFor(topic, err)
		case moved == moveBatch:
			wait = 0
		case !next.IsZero():
			wait = min(wait, max(time.Until(next), 0))
		}
		timer.Reset(wait)
	}
}

// reportFor reports a background error of topic to one of the topic's
// subscriptions (so a Bus's error handler gets it), else to the Driver's
// error handler.
func (d *Driver) reportFor(topic string, err error) {
	d.mu.Lock()
	var sub *subscription
	for s := range d.subs {
		if s.topic == topic {
			sub = s
			break
		}
	}
	d.mu.Unlock()
	if sub != nil {
		sub.onError(err)
		return
	}
	d.cfg.onError(err)
}

// MoveDue moves the entries of topic's delayed set that are due at now
// into its stream, up to one batch (500), in due order, and returns how
// many it moved and when the next one is due (zero when none waits). The
// Driver's movers call it; it is exported for tools and tests. Entries the
// script cannot read (not written by this driver) are moved to the key
// DelayKey(topic)+":unreadable" and reported as an error.
func (d *Driver) MoveDue(ctx context.Context, topic string, now time.Time) (moved int, next time.Time, err error) {
	key, err := d.DelayKey(topic)
	if err != nil {
		return 0, time.Time{}, fail("move delayed", topic, "", "", err)
	}
	minID := ""
	if d.cfg.trimMaxAge > 0 {
		minID = strconv.FormatInt(now.Add(-d.cfg.trimMaxAge).UnixMilli(), 10)
	}
	res, err := moveScript.Run(ctx, d.client, []string{key, d.StreamKey(topic), key + ":unreadable"},
		now.UnixMilli(), moveBatch, d.cfg.trimMaxLen, minID).Slice()
	if err != nil {
		return 0, time.Time{}, fail("move delayed", topic, "", "", err)
	}
	if len(res) != 3 {
		return 0, time.Time{}, fail("move delayed", topic, "", fmt.Sprintf("script returned %v", res), errors.New("unexpected reply"))
	}
	n, _ := res[0].(int64)
	bad, _ := res[1].(int64)
	if s, _ := res[2].(string); s != "" {
		if ms, perr := strconv.ParseFloat(s, 64); perr == nil {
			next = time.UnixMilli(int64(ms))
		}
	}
	if bad > 0 {
		err = fail("move delayed", topic, "", fmt.Sprintf("%d unreadable entries moved to %s:unreadable", bad, key), errors.New("not written by redisdriver"))
	}
	return int(n), next, err
}

// Waiting returns how many delayed messages of topic wait in its delayed
// set (due or not).
func (d *Driver) Waiting(ctx context.Context, topic string) (int64, error) {
	key, err := d.DelayKey(topic)
	if err != nil {
		return 0, fail("waiting", topic, "", "", err)
	}
	n, err := d.client.ZCard(ctx, key).Result()
	if err != nil {
		return 0, fail("waiting", topic, "", "", err)
	}
	return n, nil
}

// delayed is the delayed-set entry of m when it is due after now, or the
// zero entry when it is not delayed; a bad due time fails the Write.
func (d *Driver) delayed(m *herald.Message, vals []any, now time.Time) (delayedEntry, error) {
	due, later, err := herald.DueAt("redisdriver", m, now)
	if err != nil {
		return delayedEntry{}, fail("write", m.Topic, "", "message "+m.ID, err)
	}
	if !later {
		return delayedEntry{}, nil
	}
	if d.cfg.waitReplicas > 0 {
		return delayedEntry{}, fail("write", m.Topic, "", "message "+m.ID, &herald.DelayError{
			Writer: "redisdriver", MessageID: m.ID, Topic: m.Topic, DeliverAt: due,
			Reason: "WithWait does not cover the delayed set and the mover yet", Err: herald.ErrDelayNotSupported})
	}
	e, err := d.delayedEntryOf(m, vals, due, now)
	if err != nil {
		return delayedEntry{}, fail("write", m.Topic, "", "message "+m.ID, err)
	}
	return e, nil
}
