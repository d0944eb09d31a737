package kafkadriver

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
	kafkago "github.com/segmentio/kafka-go"
)

// Delayed delivery on delay topics.
//
// Off by default (WithDelays). Kafka cannot hold a record back, so a
// delayed message is written to a tier topic instead of its own: one topic per hold of a fixed ladder
// (WithDelayTiers). The Write that places it in a tier stamps when it is
// ready to leave that tier (HeaderDelayReady): its hold after the write,
// or its due time when that comes first (only in the smallest tier, for
// a remaining delay shorter than its hold). A mover consumer group, one
// member per Driver with subscriptions, reads every tier, holds each
// record until it is ready and then writes it again through Write, which
// places it in the next tier for what remains or, once due, in its
// target topic (HeaderDelayTopic). The tier offset is acknowledged, and
// so committed, only after that Write was acknowledged: at-least-once.

const (
	// HeaderDelayTopic is the topic a delayed message is due on, while it
	// waits in a delay tier topic (herald.HeaderDelayTopic). The mover
	// removes it.
	HeaderDelayTopic = herald.HeaderDelayTopic
	// HeaderDelayReady is when a record in a delay tier topic is ready to
	// leave it (Unix nanoseconds, by the writing host's clock). The mover
	// removes it.
	HeaderDelayReady = "herald-delay-ready"
)

// delayRetention is how long a tier topic keeps records beyond its hold:
// a mover stopped for less than that loses nothing.
const delayRetention = 7 * 24 * time.Hour

// DelayPrecision reports how late after its due time a delayed message
// may reach its topic while the mover runs (herald.DelayedWriter): the
// fetch wait, which bounds how long a record written to a tier takes to
// reach the mover. It is 0 without WithDelays.
func (d *Driver) DelayPrecision() time.Duration {
	if !d.cfg.delaysOn {
		return 0
	}
	return d.cfg.fetchMaxWait
}

// DelayTopic is the name of the tier topic of hold, under
// WithDelayTopicPrefix: "<prefix>herald.delay.<hold>" with the hold in
// the largest whole unit (1s, 30s, 2m, 6h, 1500ms).
func (d *Driver) DelayTopic(hold time.Duration) string {
	return d.cfg.delayPrefix + "herald.delay." + holdName(hold)
}

// DelayGroup is the consumer group of the movers of the tier of hold:
// the tier topic's name. One group per tier, so that a mover joining or
// leaving rebalances each tier on its own (in one group shared by every
// tier, each tier's member would wait in the others' rebalances).
func (d *Driver) DelayGroup(hold time.Duration) string { return d.DelayTopic(hold) }

func holdName(h time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if h%u.d == 0 {
			return strconv.FormatInt(int64(h/u.d), 10) + u.name
		}
	}
	return strconv.FormatInt(h.Milliseconds(), 10) + "ms"
}

// tierFor returns the tier hold for a remaining delay: the largest not
// above it, or the smallest.
func (d *Driver) tierFor(remaining time.Duration) time.Duration {
	tiers := d.cfg.delayTiers
	hold := tiers[0]
	for _, h := range tiers[1:] {
		if h > remaining {
			break
		}
		hold = h
	}
	return hold
}

// routeDelayed returns msgs with every delayed message replaced by a copy
// bound for its tier topic; undelayed ones stay as they are (and slice
// positions too, so a WriteError's indexes are the caller's). With
// delays off (without WithDelays) it refuses delayed messages instead. delayed tells
// whether any was routed.
func (d *Driver) routeDelayed(msgs []*herald.Message, now time.Time) (out []*herald.Message, delayed bool, err error) {
	if !d.cfg.delaysOn {
		if err := herald.RefuseDelayed("kafkadriver", msgs, now); err != nil {
			return nil, false, fail("write", "", "", "delays are off (see WithDelays)", err)
		}
		return msgs, false, nil
	}
	dues, bad, err := herald.DueTimes("kafkadriver", msgs, now)
	if err != nil {
		return nil, false, fail("write", msgs[bad].Topic, "", "", err)
	}
	out = msgs
	for i, due := range dues {
		if due.IsZero() {
			continue
		}
		m := msgs[i]
		if err := validateTopic(m.Topic); err != nil {
			return nil, false, fail("write", m.Topic, "", "message "+m.ID, err)
		}
		if !delayed {
			out, delayed = append([]*herald.Message(nil), msgs...), true
		}
		hold := d.tierFor(due.Sub(now))
		ready := now.Add(hold)
		if due.Before(ready) {
			ready = due
		}
		c := *m
		c.Topic = d.DelayTopic(hold)
		c.Headers = maps.Clone(m.Headers)
		c.Headers[HeaderDelayTopic] = m.Topic
		c.Headers[HeaderDelayReady] = strconv.FormatInt(ready.UnixNano(), 10)
		out[i] = &c
	}
	return out, delayed, nil
}

// restoreTopics makes a WriteError name the caller's topics, not the
// tiers the delayed messages went to.
func restoreTopics(err error, msgs []*herald.Message) error {
	var we *herald.WriteError
	if errors.As(err, &we) {
		for _, f := range we.Failed {
			if f.Index >= 0 && f.Index < len(msgs) {
				f.Topic = msgs[f.Index].Topic
			}
		}
	}
	return err
}

// ensureDelayTopics creates the tier topics that do not exist yet, once
// per Driver (again after a failure).
func (d *Driver) ensureDelayTopics(ctx context.Context) error {
	d.delayMu.Lock()
	defer d.delayMu.Unlock()
	if d.delayTopicsMade {
		return nil
	}
	for _, hold := range d.cfg.delayTiers {
		topic := d.DelayTopic(hold)
		retention := strconv.FormatInt((hold + delayRetention).Milliseconds(), 10)
		res, err := d.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{
			Topics: []kafkago.TopicConfig{{
				Topic: topic, NumPartitions: d.cfg.delayPartitions, ReplicationFactor: -1,
				ConfigEntries: []kafkago.ConfigEntry{{ConfigName: "retention.ms", ConfigValue: retention}},
			}},
		})
		if err == nil {
			err = res.Errors[topic]
		}
		if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) && !d.topicExists(ctx, topic) {
			// (a principal without the right to create topics may still
			// use tier topics an operator created)
			return fail("create", topic, "", "delay tier topic", err)
		}
		d.forgetTopic(topic)
	}
	d.delayTopicsMade = true
	return nil
}

// StartDelayMover starts this Driver's member of the mover group, if it
// has not started yet; Subscribe starts it too. A process that only
// publishes delayed messages (a relay) needs no mover as long as some
// process with subscriptions runs one. It does nothing without WithDelays
// or after Close. The mover stops at Close.
func (d *Driver) StartDelayMover() {
	if !d.cfg.delaysOn {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.moverStarted {
		return
	}
	d.moverStarted = true
	ctx, cancel := context.WithCancel(context.Background())
	d.moverStop = cancel
	for _, hold := range d.cfg.delayTiers {
		m := &mover{d: d, hold: hold, topic: d.DelayTopic(hold)}
		d.moving.Add(1)
		go func() {
			defer d.moving.Done()
			m.run(ctx)
		}()
	}
}

// stopMover stops the mover goroutines; Close calls it before it closes
// the subscriptions and waits for them after.
func (d *Driver) stopMover() {
	d.mu.Lock()
	stop := d.moverStop
	d.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// mover moves the records of one tier topic.
type mover struct {
	d     *Driver
	hold  time.Duration
	topic string
	sub   *subscription
	held  heldHeap
	n     uint64 // arrival order, for equal ready times
}

// held is a delivery waiting in the mover for its ready time.
type held struct {
	d     herald.Delivery
	ready time.Time
	n     uint64
}

type heldHeap []held

func (h heldHeap) Len() int { return len(h) }
func (h heldHeap) Less(i, j int) bool {
	if !h[i].ready.Equal(h[j].ready) {
		return h[i].ready.Before(h[j].ready)
	}
	return h[i].n < h[j].n
}
func (h heldHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *heldHeap) Push(x any)   { *h = append(*h, x.(held)) }
func (h *heldHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = held{}
	*h = old[:len(old)-1]
	return x
}

const (
	// moverIdle is the longest a mover's fetch waits with nothing held.
	moverIdle = time.Second
	// moverPurge is how often the mover drops held deliveries of revoked
	// partitions (their new owner holds them now).
	moverPurge = 10 * time.Second
)

func (m *mover) run(ctx context.Context) {
	d := m.d
	log := d.cfg.logger.With("topic", m.topic, "group", d.DelayGroup(m.hold))
	retry := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		err := d.ensureDelayTopics(ctx)
		if err == nil {
			break
		}
		log.Warn("kafkadriver: creating the delay topics failed; retrying", "error", err)
		if !backoff.Sleep(ctx, retry.Next()) {
			return
		}
	}
	sub, err := d.subscribe(ctx, m.topic, d.DelayGroup(m.hold), d.cfg.delayBuffer, true)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, ErrClosed) {
			log.Error("kafkadriver: the delay mover could not join its group", "error", err)
		}
		return
	}
	m.sub = sub
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), d.cfg.requestTimeout)
		defer cancel()
		if err := sub.Close(cctx); err != nil {
			log.Warn("kafkadriver: closing the delay mover", "error", err)
		}
	}()
	m.loop(ctx, log)
}

func (m *mover) loop(ctx context.Context, log *slog.Logger) {
	buf := make([]herald.Delivery, chunkSize)
	purged := time.Now()
	failures := 0
	for {
		wait := moverIdle
		if len(m.held) > 0 {
			wait = max(time.Until(m.held[0].ready), 0)
		}
		var n int
		var err error
		if wait > 0 || len(m.held) == 0 {
			fctx, cancel := context.WithTimeout(ctx, wait)
			n, err = m.sub.Fetch(fctx, buf)
			cancel()
		} else {
			n = m.sub.take(buf) // something is ready: take what is waiting, no more
		}
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !errors.Is(err, context.DeadlineExceeded):
			if errors.Is(err, ErrClosed) {
				return
			}
			failures++
			log.Warn("kafkadriver: the delay mover's fetch failed", "error", err, "failures", failures)
			if !backoff.Sleep(ctx, backoff.Exponential(100*time.Millisecond, 5*time.Second, failures)) {
				return
			}
			continue
		}
		failures = 0
		for _, dl := range buf[:n] {
			m.keep(dl)
		}
		clear(buf[:n])
		if time.Since(purged) > moverPurge {
			m.purge()
			purged = time.Now()
		}
		m.moveReady(ctx, log)
	}
}

// keep queues a delivery until its ready time; a record without a
// readable ready time is ready now.
func (m *mover) keep(dl herald.Delivery) {
	ready := time.Now()
	if v, ok := dl.Message.Headers[HeaderDelayReady]; ok {
		if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
			ready = time.Unix(0, ns)
		}
	}
	m.n++
	heap.Push(&m.held, held{d: dl, ready: ready, n: m.n})
}

// purge drops held deliveries whose partition was revoked.
func (m *mover) purge() {
	keep := m.held[:0]
	for _, h := range m.held {
		if !m.sub.Revoked(h.d) {
			keep = append(keep, h)
		}
	}
	clear(m.held[len(keep):])
	m.held = keep
	heap.Init(&m.held)
}

// moveReady writes every ready record on (in ready order, equal ready
// times in arrival order) with one Write, and acknowledges those written.
// A record that failed goes back, to be tried again shortly.
func (m *mover) moveReady(ctx context.Context, log *slog.Logger) {
	now := time.Now()
	var batch []held
	var msgs []*herald.Message
	for len(m.held) > 0 && !m.held[0].ready.After(now) {
		h := heap.Pop(&m.held).(held)
		if m.sub.Revoked(h.d) {
			continue // the partition's new owner moves it
		}
		msg, err := forwarded(h.d.Message, now)
		if err != nil {
			// Nowhere to deliver it: say so loudly, and move on.
			log.Error("kafkadriver: dropping an undeliverable record of a delay topic", "id", h.d.Message.ID, "error", err)
			m.ack(ctx, h.d, log)
			continue
		}
		batch = append(batch, h)
		msgs = append(msgs, msg)
	}
	if len(msgs) == 0 {
		return
	}
	err := m.d.Write(ctx, msgs)
	failed := herald.NotWritten(err, len(msgs))
	if err != nil && ctx.Err() == nil {
		log.Warn("kafkadriver: moving delayed records failed; retrying the failed ones", "batch", len(msgs), "error", err)
	}
	retryAt := time.Now().Add(100 * time.Millisecond)
	for i, h := range batch {
		if failed[i] {
			h.ready = retryAt
			heap.Push(&m.held, h)
			continue
		}
		m.ack(ctx, h.d, log)
	}
}

func (m *mover) ack(ctx context.Context, dl herald.Delivery, log *slog.Logger) {
	if err := m.sub.Ack(ctx, dl); err != nil && !errors.Is(err, ErrRevoked) {
		log.Warn("kafkadriver: acknowledging a moved record failed", "error", err)
	}
}

// forwarded is what the mover writes for a record of a tier topic: the
// message bound for its target topic, without the tier's headers. Write
// then places it in the next tier, or in the target once it is due.
func forwarded(m *herald.Message, now time.Time) (*herald.Message, error) {
	target, ok := m.Headers[HeaderDelayTopic]
	if !ok {
		return nil, fmt.Errorf("no %s header", HeaderDelayTopic)
	}
	if err := validateTopic(target); err != nil {
		return nil, fmt.Errorf("%s: %w", HeaderDelayTopic, err)
	}
	if _, _, err := herald.DueAt("kafkadriver", m, now); err != nil {
		return nil, err
	}
	c := *m
	c.Topic = target
	c.Headers = maps.Clone(m.Headers)
	delete(c.Headers, HeaderDelayTopic)
	delete(c.Headers, HeaderDelayReady)
	return &c, nil
}

// delayState is the Driver's part of delayed delivery.
type delayState struct {
	delayMu         sync.Mutex // delayTopicsMade
	delayTopicsMade bool

	moverStarted bool // under Driver.mu
	moverStop    context.CancelFunc
	moving       sync.WaitGroup
}
