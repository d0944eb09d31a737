// Package memdriver is herald's in-process driver: the embedded default and the
// base of the test harness. It needs no server and keeps nothing on disk.
//
// Model. A topic is a fixed number of partitions (WithPartitions, default 8).
// Each partition is a bounded ring log (WithCapacity messages, default 4096),
// allocated as messages arrive: it starts empty and doubles from 16 slots
// up to the capacity, and a group's bookkeeping grows the same way with
// what it has in flight, so a topic nothing was written to costs about
// 3 KiB with a group (BenchmarkIdleTopics). Once grown a ring keeps its
// size: it holds the newest messages for groups that join later.
// A message with a Key always goes to the partition its key hashes to
// (Kafka's murmur2, as every partitioned herald driver places keys), so
// messages with one key keep publish order; a message without a key goes
// round robin.
//
// Groups. Every group gets every message written after it was created, plus
// what the ring still holds at that moment (WithStartPosition changes that).
// Groups are durable for the life of the Broker: when the last member
// leaves, the group keeps its position and a later member resumes there.
// Members of one group share the partitions like Kafka consumers do: each
// partition belongs to one member at a time, so per-key order holds across
// members too. When a partition moves, the new owner gets it only after the
// old owner has settled or abandoned everything it fetched from it.
//
// Redelivery. A member that leaves (Close) with unacknowledged deliveries
// gives them back: the partition's next owner receives them again, in
// offset order, skipping those that were acknowledged. Delivery.Count tells
// how many times the group received a message, not counting deliveries
// the scheduler released unstarted (herald.Releaser).
//
// Retention and backpressure. Each partition keeps its newest WithCapacity
// messages, acknowledged or not, like a size-bounded Kafka log; a group
// that joins later starts at the oldest one kept. A message is overwritten
// only once every group has acknowledged it: when the oldest message is
// still unacknowledged by some group, Write blocks until that group catches
// up, the context ends or the Broker closes. Memory stays bounded and no
// goroutine is started per message.
//
// Lag. A Subscription is a herald.LagReporter: it counts the messages of
// the partitions it owns that its group has not acknowledged, exactly and
// at once (an Ack shows in the next Lag). Broker.Backlog counts a whole
// group.
//
// Delayed delivery. The Broker is a herald.DelayedWriter: a message whose
// herald.HeaderDeliverAt lies in the future is held in a heap, off the
// partitions, and a timer appends it to its partition when it is due
// (within DelayPrecision; Broker.Waiting counts the held ones). So no
// group sees it before then, and a subscription that closes and comes
// back meanwhile loses nothing. Order: delayed messages join their
// partition in due order (equal due times in write order), so messages
// of one key reach a group in the order they become due, and an
// undelayed message overtakes a delayed one of its key. Held messages
// live in the Broker's memory only and go with it at Close.
//
// Group tables. The Broker is a herald.TableLog (Changelog) and its
// subscriptions are herald.Partitioned, so a subscription may keep a
// herald.Table: changelogs live beside the topics, partitioned as they
// are, keep the latest record of each key, and go with the Broker at
// Close.
//
// Dead letters. Broker.DeadLetters is a dlq.Store over the broker's
// dead-letter topics, so a service's tests can list and redrive them as
// they would on Kafka or Redis.
//
// Errors. What the Broker, its subscriptions and its dead-letter Store
// return is a *herald.DriverError (Driver "memdriver") naming the
// operation, topic and group, and wrapping the cause: herald.ErrClosed,
// herald.ErrNilEvent, herald.ErrMessageTooLarge, herald.ErrInvalidName,
// dlq.ErrNotFound, or the context's error when it ends while Write waits
// for room. A call made with an ended context, and a Fetch whose context
// ends, return the context's error itself.
package memdriver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/keyhash"
)

// Default settings.
const (
	DefaultPartitions      = 8
	DefaultCapacity        = 4096
	DefaultMaxMessageBytes = 1 << 20
)

// fail builds the driver's errors: op on topic and group ("" when none),
// detail saying more, err the cause.
func fail(op, topic, group, detail string, err error) error {
	return &herald.DriverError{Driver: "memdriver", Op: op, Topic: topic, Group: group, Detail: detail, Err: err}
}

// Option configures a Broker.
type Option func(*config)

type config struct {
	partitions      int
	capacity        int
	maxMessageBytes int
	start           herald.StartPosition
}

// WithPartitions sets the number of partitions of each topic (default
// DefaultPartitions; at least 1).
func WithPartitions(n int) Option { return func(c *config) { c.partitions = n } }

// WithCapacity sets how many unacknowledged messages each partition holds
// before Write blocks (default DefaultCapacity; at least 1).
func WithCapacity(n int) Option { return func(c *config) { c.capacity = n } }

// WithMaxMessageBytes sets the largest message Write accepts, by
// herald.Message.Size (payload, key, ID, content type and headers); larger
// messages fail with herald.ErrMessageTooLarge. 0 means no limit; below 0
// is an error. See herald.WithMaxMessageBytes for how layered limits
// combine.
func WithMaxMessageBytes(n int) Option { return func(c *config) { c.maxMessageBytes = n } }

// WithStartPosition sets where a new group starts (default
// herald.StartEarliest: the oldest message the ring holds);
// herald.StartLatest starts it after the messages already there.
func WithStartPosition(p herald.StartPosition) Option { return func(c *config) { c.start = p } }

func (c config) validate() error {
	bad := func(cond bool, option string, value int, reason string) error {
		if !cond {
			return nil
		}
		return &herald.OptionError{Option: "memdriver." + option, Value: value, Reason: reason}
	}
	return errors.Join(
		bad(c.partitions < 1, "WithPartitions", c.partitions, "want at least 1"),
		bad(c.capacity < 1, "WithCapacity", c.capacity, "want at least 1"),
		bad(c.maxMessageBytes < 0, "WithMaxMessageBytes", c.maxMessageBytes, "want 0 (no limit) or more"),
		bad(!c.start.Valid(), "WithStartPosition", int(c.start), "want herald.StartEarliest or herald.StartLatest"))
}

// Broker is an in-process message broker; it implements herald.Driver.
// It is safe for concurrent use.
type Broker struct {
	cfg    config
	mu     sync.Mutex // serialises the creation of topics
	topics sync.Map   // name -> *topic; read without a lock on every Write
	done   chan struct{}
	closed atomic.Bool

	delayed delayed // messages waiting for their HeaderDeliverAt

	changelogs sync.Map // name -> *changelog (group tables)
}

// New returns an empty Broker. Bad options are an error
// (herald.ErrInvalidOption), all reported at once.
func New(opts ...Option) (*Broker, error) {
	cfg := config{partitions: DefaultPartitions, capacity: DefaultCapacity, maxMessageBytes: DefaultMaxMessageBytes}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Broker{cfg: cfg, done: make(chan struct{})}, nil
}

// Close wakes every blocked Write and Fetch, which then return
// herald.ErrClosed, and makes later calls fail the same way. Messages still
// in the broker are dropped with it. Close is idempotent.
func (b *Broker) Close() error {
	if b.closed.CompareAndSwap(false, true) {
		close(b.done)
		b.stopDelayed()
		b.topics.Range(func(_, v any) bool { // wake the members waiting in Fetch
			t := v.(*topic)
			t.mu.Lock()
			for _, g := range t.groups {
				for _, m := range g.members {
					m.poke()
				}
			}
			t.mu.Unlock()
			return true
		})
	}
	return nil
}

// Backlog returns how many messages of topic the group has not
// acknowledged yet (0 for an unknown topic or group).
func (b *Broker) Backlog(topicName, groupName string) int {
	t := b.existing(topicName)
	if t == nil {
		return 0
	}
	t.mu.Lock()
	g := t.groups[groupName]
	t.mu.Unlock()
	if g == nil {
		return 0
	}
	return g.backlog()
}

// backlog counts the messages the group has not acknowledged, over every
// partition.
func (g *group) backlog() int {
	n := 0
	for _, c := range g.cursors {
		c.p.mu.Lock()
		n += c.unacked()
		c.p.mu.Unlock()
	}
	return n
}

// Unsettled returns how many messages some group of some topic has not
// acknowledged yet, over every topic and group: 0 once every
// subscription has handled everything written to its topic (what a test
// waits for). Delayed messages held for later are not counted (Waiting).
func (b *Broker) Unsettled() int {
	n := 0
	b.topics.Range(func(_, v any) bool {
		t := v.(*topic)
		t.mu.Lock()
		groups := make([]*group, 0, len(t.groups))
		for _, g := range t.groups {
			groups = append(groups, g)
		}
		t.mu.Unlock()
		for _, g := range groups {
			n += g.backlog()
		}
		return true
	})
	return n
}

// Ping reports whether the Broker is open (herald.Pinger).
func (b *Broker) Ping(ctx context.Context) error {
	if b.closed.Load() {
		return fail("ping", "", "", "", herald.ErrClosed)
	}
	return ctx.Err()
}

// MessagingSystem names the broker for telemetry (herald.MessagingSystem).
func (b *Broker) MessagingSystem() string { return "herald.memory" }

// topic returns the topic named name, creating it; the name has been
// checked.
func (b *Broker) topic(name string) *topic {
	if t := b.existing(name); t != nil {
		return t
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t := b.existing(name); t != nil {
		return t
	}
	t := &topic{name: name, groups: make(map[string]*group), parts: make([]*partition, b.cfg.partitions)}
	for i := range t.parts {
		t.parts[i] = &partition{index: i, capacity: uint64(b.cfg.capacity)}
	}
	b.topics.Store(name, t)
	return t
}

// existing returns the topic named name, or nil if nothing was written
// to it and no group subscribed to it.
func (b *Broker) existing(name string) *topic {
	if t, ok := b.topics.Load(name); ok {
		return t.(*topic)
	}
	return nil
}

// Write appends msgs to their topics' partitions, in slice order per key.
// It checks the whole batch first (nil messages, topic names, the size
// limit), so a batch with a bad message stores none of it. It blocks while
// a partition is full. If ctx ends or the Broker closes while it waits,
// the messages before the blocked one are already written (a prefix of
// msgs) and the rest are not.
//
// A message whose herald.HeaderDeliverAt lies in the future is held by the
// broker and appended to its partition when it is due (see "Delayed
// delivery" in the package documentation); a malformed one, or one beyond
// herald.MaxDelay, fails the whole batch with herald.ErrInvalidDelay.
func (b *Broker) Write(ctx context.Context, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var first *topic // the first message's topic, if it exists: batches usually share one
	valid := ""      // the last topic checked
	for i, m := range msgs {
		if m == nil {
			return fail("write", "", "", fmt.Sprintf("message %d", i), herald.ErrNilEvent)
		}
		if m.Topic != valid || valid == "" {
			t := b.existing(m.Topic) // an existing topic's name was checked when it was made
			if t == nil {
				if err := herald.ValidateName("topic", m.Topic); err != nil {
					return fail("write", m.Topic, "", "message "+m.ID, err)
				}
			}
			if i == 0 {
				first = t
			}
			valid = m.Topic
		}
		if b.cfg.maxMessageBytes > 0 {
			if n := m.Size(); n > b.cfg.maxMessageBytes {
				return fail("write", m.Topic, "", fmt.Sprintf("message %s: %d bytes with key and headers, limit %d",
					m.ID, n, b.cfg.maxMessageBytes), herald.ErrMessageTooLarge)
			}
		}
	}
	dues, err := dueTimes(msgs, time.Time{}) // the clock is read only for a delayed message
	if err != nil {
		return err
	}
	t := first
	for i, m := range msgs {
		if b.closed.Load() {
			return fail("write", m.Topic, "", "message "+m.ID, herald.ErrClosed)
		}
		if dues != nil && !dues[i].IsZero() {
			b.hold(m, dues[i])
			continue
		}
		if t == nil || t.name != m.Topic {
			t = b.topic(m.Topic)
		}
		if err := t.partitionFor(m.Key).append(ctx, b.done, m); err != nil {
			return fail("write", m.Topic, "", "message "+m.ID, err)
		}
	}
	return nil
}

// Subscribe joins group on topic and returns the new member.
func (b *Broker) Subscribe(ctx context.Context, topicName, groupName string) (herald.Subscription, error) {
	if err := errors.Join(herald.ValidateName("topic", topicName), herald.ValidateName("group", groupName)); err != nil {
		return nil, fail("subscribe", topicName, groupName, "", err)
	}
	if b.closed.Load() {
		return nil, fail("subscribe", topicName, groupName, "", herald.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := b.topic(topicName)
	m := &member{broker: b, wake: make(chan struct{}, 1)}
	t.mu.Lock()
	g := t.groups[groupName]
	if g == nil {
		g = &group{name: groupName, topic: t, cursors: make([]*cursor, len(t.parts))}
		for i, p := range t.parts {
			g.cursors[i] = p.addCursor(b.cfg.start == herald.StartLatest)
		}
		t.groups[groupName] = g
	}
	m.group = g
	g.members = append(g.members, m)
	g.rebalance()
	t.mu.Unlock()
	return m, nil
}

type topic struct {
	name   string
	parts  []*partition
	rr     atomic.Uint32
	mu     sync.Mutex // guards groups and group membership
	groups map[string]*group
}

func (t *topic) partitionFor(key string) *partition {
	if key == "" {
		return t.parts[int(t.rr.Add(1)-1)%len(t.parts)]
	}
	return t.parts[keyhash.Partition(key, len(t.parts))]
}

type partition struct {
	index    int
	capacity uint64 // the most messages it holds (WithCapacity)
	mu       sync.Mutex
	// log is the ring: offset off lives at log[off%len(log)]. It grows
	// as messages arrive, doubling from minSlots up to capacity, so a
	// partition nothing was written to costs no slots.
	log     []*herald.Message
	start   uint64        // oldest offset still held
	end     uint64        // next offset to write
	cursors []*cursor     // one per group
	space   chan struct{} // closed when space frees; nil while no writer waits
	// redriven marks the offsets a dead-letter Store has redriven
	// (DeadLetters); nil until the first mark.
	redriven map[uint64]bool
}

// cursor is one group's position in one partition. Guarded by partition.mu.
type cursor struct {
	p    *partition
	low  uint64 // every offset below low is acknowledged
	next uint64 // next offset to hand out
	// reached is the highest next so far: a new owner rewinds next to
	// low, and what was acknowledged above it stays marked.
	reached uint64
	// acked and counts are the slots of [low, reached): acked[off%len]
	// and the deliveries so far. They grow from minSlots as offsets are
	// handed out, to the most the group had in flight at once (at most
	// the capacity); a group that never fetched has none.
	acked    []bool
	counts   []uint32
	owner    *member // who fetches from this partition; nil if nobody
	pending  *member // next owner, waiting for owner's in-flight to reach 0
	inflight int     // fetched by owner and not yet acknowledged
}

// minSlots is the size a partition's ring and a cursor's slots start at
// when they are first needed.
const minSlots = 16

// unacked counts the messages of the partition the group has not
// acknowledged: those not handed out yet and those in flight. The walk is
// as long as the group's messages in flight in the partition. p.mu held.
func (c *cursor) unacked() int {
	n := int(c.p.end - c.reached)
	for off := c.low; off < c.reached; off++ {
		if !c.acked[off%uint64(len(c.acked))] {
			n++
		}
	}
	return n
}

// cover makes room in the cursor's slots for offset off (at least low,
// below low + the partition's capacity): they grow by doubling, keeping
// what they hold for [low, low+len). p.mu held.
func (c *cursor) cover(off uint64) {
	n := uint64(len(c.acked))
	if off-c.low < n {
		return
	}
	size := max(n, minSlots)
	for off-c.low >= size {
		size *= 2
	}
	size = min(size, c.p.capacity) // off-low is below the capacity (full)
	c.acked = relaid(c.acked, c.low, c.low+n, size)
	c.counts = relaid(c.counts, c.low, c.low+n, size)
}

// relaid returns a ring of size slots holding what ring (offset o at
// o%len(ring)) holds for the offsets [from, to), at the same offsets.
func relaid[T any](ring []T, from, to, size uint64) []T {
	out := make([]T, size)
	for o := from; o < to; o++ {
		out[o%size] = ring[o%uint64(len(ring))]
	}
	return out
}

func (p *partition) addCursor(latest bool) *cursor {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := &cursor{p: p}
	c.low, c.next, c.reached = p.start, p.start, p.start
	if latest {
		c.low, c.next, c.reached = p.end, p.end, p.end
	}
	p.cursors = append(p.cursors, c)
	return c
}

// full reports whether appending would overwrite a message some group has
// not acknowledged; p.mu held.
func (p *partition) full() bool {
	for _, c := range p.cursors {
		if p.end-c.low >= p.capacity {
			return true
		}
	}
	return false
}

// grow doubles the ring, up to the capacity, keeping the messages of
// [start, end) at their offsets; p.mu held.
func (p *partition) grow() {
	size := min(max(2*uint64(len(p.log)), minSlots), p.capacity)
	p.log = relaid(p.log, p.start, p.end, size)
}

func (p *partition) append(ctx context.Context, closed <-chan struct{}, m *herald.Message) error {
	p.mu.Lock()
	for p.full() {
		if p.space == nil {
			p.space = make(chan struct{})
		}
		space := p.space
		p.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		case <-closed:
			return herald.ErrClosed
		}
		p.mu.Lock()
	}
	if p.end-p.start == uint64(len(p.log)) {
		if uint64(len(p.log)) < p.capacity {
			p.grow()
		} else {
			p.start++ // the ring is full of acknowledged messages: drop the oldest
		}
	}
	p.log[p.end%uint64(len(p.log))] = m
	p.end++
	for _, c := range p.cursors {
		if c.owner != nil && c.pending == nil {
			c.owner.signalPartition(p.index)
		}
	}
	p.mu.Unlock()
	return nil
}

// freed wakes writers blocked on a full partition; p.mu held.
func (p *partition) freed() {
	if p.space != nil {
		close(p.space)
		p.space = nil
	}
}

type group struct {
	name    string
	topic   *topic
	cursors []*cursor
	members []*member // guarded by topic.mu
}

// rebalance spreads the partitions over the members, round robin by join
// order. A partition that changes hands while its owner has deliveries in
// flight moves when those are settled. topic.mu held.
func (g *group) rebalance() {
	for i, c := range g.cursors {
		var want *member
		if len(g.members) > 0 {
			want = g.members[i%len(g.members)]
		}
		c.p.mu.Lock()
		switch {
		case c.owner == want:
			c.pending = nil
		case c.owner == nil || c.inflight == 0:
			c.owner, c.pending = want, nil
		default:
			c.pending = want
		}
		if c.owner != nil && c.pending == nil {
			c.owner.signal()
		}
		c.p.mu.Unlock()
	}
}

// member is one Subscription of a group.
type member struct {
	broker *Broker
	group  *group
	// wake (capacity 1) tells a Fetch waiting for news to look again:
	// a partition it owns has news, or the member or the broker closed.
	// One channel keeps a waiting Fetch's select to two cases: thousands
	// of idle members wait at once.
	wake chan struct{}
	// news marks the partitions that may have something for this member
	// (readyBit), so that a Fetch locks only those: over many topics a
	// fetch brings a message or two, from one partition of eight.
	news   atomic.Uint64
	closed atomic.Bool
	// assigned counts the times this member was given partitions
	// (signal), for herald.Partitioned.
	assigned atomic.Uint64
	rr       int // partition to start the next Fetch at; Fetch is single-caller
}

// readyBit is partition i's bit in member.news; the partitions from 63 on
// share the last one.
func readyBit(i int) uint64 { return 1 << min(i, 63) }

// signal wakes the member to look at every partition (it may own new
// ones, or own them again).
func (m *member) signal() {
	m.assigned.Add(1)
	m.news.Store(^uint64(0))
	m.poke()
}

// signalPartition wakes the member to look at partition i, which has a
// new message.
func (m *member) signalPartition(i int) {
	if bit := readyBit(i); m.news.Load()&bit == 0 {
		m.news.Or(bit)
	}
	m.poke()
}

func (m *member) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// FetchesLocally reports that Fetch and Ack work on the process's memory
// (herald.LocalFetcher): a subscription with one worker runs its handler
// on the goroutine that fetches.
func (m *member) FetchesLocally() bool { return true }

// Seq packs the partition index above the offset.
const offsetBits = 48

// Position returns the partition and offset of d (herald.Partitioned).
func (m *member) Position(d herald.Delivery) (partition int, offset uint64) {
	return int(d.Seq >> offsetBits), d.Seq & (1<<offsetBits - 1)
}

// Assignments changes each time the member is given partitions, or
// given them back (herald.Partitioned).
func (m *member) Assignments() uint64 { return m.assigned.Load() }

// Fetch hands out the next messages of the partitions this member owns.
func (m *member) Fetch(ctx context.Context, dst []herald.Delivery) (int, error) {
	if len(dst) == 0 {
		return 0, nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if m.closed.Load() || m.broker.closed.Load() {
			return 0, fail("fetch", m.group.topic.name, m.group.name, "", herald.ErrClosed)
		}
		if n := m.collect(dst); n > 0 {
			return n, nil
		}
		select {
		case <-m.wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// collect fills dst from the partitions with news (member.news), and
// marks again those it left something in or did not reach.
func (m *member) collect(dst []herald.Delivery) int {
	cursors := m.group.cursors
	news := m.news.Swap(0)
	var again uint64
	n := 0
	for i := range cursors {
		idx := (m.rr + i) % len(cursors)
		bit := readyBit(idx)
		if news&bit == 0 {
			continue
		}
		if n == len(dst) {
			again |= bit
			continue
		}
		c := cursors[idx]
		p := c.p
		p.mu.Lock()
		if c.owner == m && c.pending == nil {
			for c.next < p.end && n < len(dst) {
				off := c.next
				c.next++
				c.reached = max(c.reached, c.next)
				c.cover(off)
				slot := off % uint64(len(c.acked))
				if c.acked[slot] {
					continue // acknowledged before a redelivery rewound past it
				}
				c.counts[slot]++
				c.inflight++
				dst[n] = herald.Delivery{
					Message: p.log[off%uint64(len(p.log))],
					Count:   int(c.counts[slot]),
					Ref:     m,
					Seq:     uint64(p.index)<<offsetBits | off,
				}
				n++
			}
			if c.next < p.end {
				again |= bit
			}
		}
		p.mu.Unlock()
	}
	if again != 0 {
		m.news.Or(again)
	}
	m.rr++
	return n
}

// Ack settles d. Acknowledging a delivery of a member that has closed
// returns herald.ErrClosed: its message was handed back to the group.
func (m *member) Ack(ctx context.Context, d herald.Delivery) error {
	if d.Ref != m {
		return fail("ack", m.group.topic.name, m.group.name, fmt.Sprintf("delivery %d", d.Seq), errors.New("belongs to another subscription"))
	}
	if m.closed.Load() {
		return fail("ack", m.group.topic.name, m.group.name, fmt.Sprintf("delivery %d", d.Seq), herald.ErrClosed)
	}
	cursors := m.group.cursors
	idx, off := m.Position(d)
	if idx >= len(cursors) {
		return fail("ack", m.group.topic.name, m.group.name, fmt.Sprintf("delivery %d", d.Seq), errors.New("no such partition"))
	}
	c := cursors[idx]
	p := c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.owner != m || off < c.low || off >= c.next {
		return fail("ack", m.group.topic.name, m.group.name, fmt.Sprintf("delivery %d is no longer owned", d.Seq), herald.ErrClosed)
	}
	slots := uint64(len(c.acked))
	if c.acked[off%slots] {
		return nil
	}
	c.acked[off%slots] = true
	c.inflight--
	if off == c.low {
		for c.low < c.next && c.acked[c.low%slots] {
			c.acked[c.low%slots] = false
			c.counts[c.low%slots] = 0
			c.low++
		}
		p.freed()
	}
	if c.inflight == 0 && c.pending != nil {
		c.owner, c.pending = c.pending, nil
		c.owner.signal()
	}
	return nil
}

// Release takes back the count of deliveries the scheduler fetched and
// never started (herald.Releaser): when Close hands them back, the next
// owner sees the count they had before this member fetched them.
func (m *member) Release(ds []herald.Delivery) {
	cursors := m.group.cursors
	for _, d := range ds {
		idx, off := m.Position(d)
		if d.Ref != m || idx >= len(cursors) {
			continue
		}
		c := cursors[idx]
		c.p.mu.Lock()
		if c.owner == m && off >= c.low && off < c.next {
			if slot := off % uint64(len(c.counts)); !c.acked[slot] && c.counts[slot] > 0 {
				c.counts[slot]--
			}
		}
		c.p.mu.Unlock()
	}
}

// Lag returns how many messages of the partitions this member owns the
// group has not acknowledged: not handed out yet, or in flight
// (herald.LagReporter). A partition on its way to this member from
// another, which still settles what it fetched, counts for the other. The
// members of a group own every partition between them, so their lags add
// up to the group's Backlog. It takes the partitions' locks briefly, and is
// safe for concurrent use.
func (m *member) Lag(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if m.closed.Load() || m.broker.closed.Load() {
		return 0, fail("lag", m.group.topic.name, m.group.name, "", herald.ErrClosed)
	}
	var n int64
	for _, c := range m.group.cursors {
		c.p.mu.Lock()
		if c.owner == m {
			n += int64(c.unacked())
		}
		c.p.mu.Unlock()
	}
	return n, nil
}

// Close leaves the group and gives unacknowledged deliveries back to it.
func (m *member) Close(ctx context.Context) error {
	if !m.closed.CompareAndSwap(false, true) {
		return nil
	}
	m.poke()
	g := m.group
	t := g.topic
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, other := range g.members {
		if other == m {
			g.members = append(g.members[:i], g.members[i+1:]...)
			break
		}
	}
	for _, c := range g.cursors {
		c.p.mu.Lock()
		if c.owner == m {
			// Rewind to the oldest unacknowledged offset; acknowledged
			// ones above it are skipped when fetched again.
			c.next, c.inflight, c.owner = c.low, 0, nil
		}
		if c.pending == m {
			c.pending = nil
		}
		c.p.mu.Unlock()
	}
	g.rebalance()
	return nil
}
