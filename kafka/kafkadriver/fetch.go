package kafkadriver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/backoff"
	kafkago "github.com/segmentio/kafka-go"
)

// partition is one assigned partition in one generation: where fetching
// is, and which fetched offsets are acknowledged.
//
// The ring holds, in offset order, every message fetched since the lowest
// unacknowledged one; seq numbers index it. The commit offset is the offset
// at the head of the ring, or next when the ring is empty: offsets between
// fetched messages (compacted away) are never delivered and need no
// acknowledgment.
type partition struct {
	g     *generation
	id    int
	start int64 // the assignment's offset: committed, or kafka-go's First/LastOffset
	hist  *partitionHistory
	room  chan struct{} // capacity 1: the ring shrank

	mu         sync.Mutex
	offs       []int64 // ring; length a power of two
	acked      []bool
	head, tail uint64 // seq numbers of the ring's live entries [head, tail)
	next       int64  // offset after the last fetched message; -1 until known
	committed  int64  // offset last committed (the assignment's at first)
	revoked    bool

	lag lagState // read by Lag without mu
}

// commitOffset returns the offset to commit; p.mu held.
func (p *partition) commitOffset() (int64, bool) {
	if p.head < p.tail {
		return p.offs[p.head&uint64(len(p.offs)-1)], true
	}
	return p.next, p.next >= 0
}

// offset returns the offset of the delivery numbered seq while it is not
// yet acknowledged.
func (p *partition) offset(seq uint64) (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq < p.head || seq >= p.tail {
		return 0, false
	}
	return p.offs[seq&uint64(len(p.offs)-1)], true
}

// push adds fetched offsets to the ring and returns the seq of the first;
// p.mu held.
func (p *partition) push(offs []int64) uint64 {
	live := int(p.tail - p.head)
	if live+len(offs) > len(p.offs) {
		size := max(len(p.offs), 1024)
		for size < live+len(offs) {
			size *= 2
		}
		ro, ra := make([]int64, size), make([]bool, size)
		for seq := p.head; seq < p.tail; seq++ {
			from, to := seq&uint64(len(p.offs)-1), seq&uint64(size-1)
			ro[to], ra[to] = p.offs[from], p.acked[from]
		}
		p.offs, p.acked = ro, ra
	}
	first := p.tail
	mask := uint64(len(p.offs) - 1)
	for _, off := range offs {
		p.offs[p.tail&mask] = off
		p.acked[p.tail&mask] = false
		p.tail++
	}
	return first
}

// ack marks seq acknowledged. first is false for a repeated Ack.
func (p *partition) ack(seq uint64, limit int) (first, revoked bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq < p.head || seq >= p.tail {
		return false, p.revoked
	}
	mask := uint64(len(p.offs) - 1)
	if p.acked[seq&mask] {
		return false, p.revoked
	}
	p.acked[seq&mask] = true
	if seq == p.head {
		for p.head < p.tail && p.acked[p.head&mask] {
			p.acked[p.head&mask] = false
			p.head++
		}
		if p.tail-p.head < uint64(limit) {
			select {
			case p.room <- struct{}{}:
			default:
			}
		}
	}
	return true, p.revoked
}

// waitForRoom blocks while the ring holds limit messages or more: a key
// that keeps failing holds its partition's commit, and past this point its
// partition's fetching too, rather than memory growing without bound.
func (p *partition) waitForRoom(ctx context.Context, limit int) bool {
	for {
		p.mu.Lock()
		n := p.tail - p.head
		p.mu.Unlock()
		if n < uint64(limit) {
			return true
		}
		select {
		case <-p.room:
		case <-ctx.Done():
			return false
		}
	}
}

// consume fetches partition p until the generation ends, reconnecting
// with backoff when the leader moves or a connection fails.
func (s *subscription) consume(ctx context.Context, p *partition) {
	offset := p.start
	failures := 0
	for ctx.Err() == nil {
		if failures > 0 && !backoff.Sleep(ctx, backoff.Exponential(100*time.Millisecond, 5*time.Second, failures)) {
			return
		}
		var progressed bool
		conn, err := s.dialLeader(ctx, p.id)
		if err == nil {
			offset, progressed, err = s.fetchFrom(ctx, conn, p, offset)
		}
		if ctx.Err() != nil {
			return
		}
		if progressed {
			failures = 0
		}
		failures++
		s.log.Warn("kafkadriver: fetching failed; reconnecting", "partition", p.id, "offset", offset, "failures", failures, "error", err)
		var ke kafkago.Error
		if failures >= reportAfter || (errors.As(err, &ke) && !ke.Temporary()) {
			s.report(fail("fetch", s.topic, s.group, fmt.Sprintf("partition %d at offset %d", p.id, offset), err))
		}
	}
}

func (s *subscription) dialLeader(ctx context.Context, partition int) (*kafkago.Conn, error) {
	var err error
	for _, broker := range s.d.cfg.brokers {
		var conn *kafkago.Conn
		if conn, err = s.dialer.DialLeader(ctx, "tcp", broker, s.topic, partition); err == nil {
			return conn, nil
		}
	}
	return nil, err
}

// fetchFrom reads p from conn until an error that needs a new connection,
// or the end of the generation, which closes conn to interrupt a fetch the
// broker is holding. It returns where to continue.
func (s *subscription) fetchFrom(ctx context.Context, conn *kafkago.Conn, p *partition, offset int64) (resume int64, progressed bool, err error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer func() {
		stop()
		_ = conn.Close()
	}()
	if offset, err = s.seek(conn, p, offset); err != nil {
		return offset, false, err
	}
	cfg := &s.d.cfg
	names := make(interner)
	for {
		if !p.waitForRoom(ctx, s.limit) {
			return offset, progressed, ctx.Err()
		}
		_ = conn.SetReadDeadline(time.Now().Add(cfg.fetchMaxWait + cfg.requestTimeout))
		p.lag.fetching(s.d.clock(), offset)
		batch := conn.ReadBatchWith(kafkago.ReadBatchConfig{MinBytes: 1, MaxBytes: cfg.fetchMaxBytes, MaxWait: cfg.fetchMaxWait})
		p.lag.fetched(s.d.clock(), batch)
		chunks := s.decode(batch, p, names)
		fetchErr := batch.Close()
		after, _ := conn.Offset()
		if after != offset {
			progressed = true
			if !s.deliver(ctx, p, chunks, after) {
				return after, progressed, ctx.Err()
			}
		}
		offset = after
		switch {
		case fetchErr == nil, errors.Is(fetchErr, kafkago.RequestTimedOut):
		case errors.Is(fetchErr, kafkago.OffsetOutOfRange):
			if offset, err = s.seek(conn, p, offset); err != nil {
				return offset, progressed, err
			}
		default:
			return offset, progressed, fetchErr
		}
	}
}

// seek resolves offset (kafka-go's FirstOffset or LastOffset for a group
// without a committed offset, or one that is out of range after retention
// or a topic's re-creation) and positions conn there.
func (s *subscription) seek(conn *kafkago.Conn, p *partition, offset int64) (int64, error) {
	_ = conn.SetDeadline(time.Now().Add(s.d.cfg.requestTimeout))
	asked := s.d.clock()
	first, last, err := conn.ReadOffsets()
	_ = conn.SetDeadline(time.Time{})
	if err != nil {
		return offset, err
	}
	reset := first
	if s.d.cfg.start == herald.StartLatest {
		reset = last
	}
	want := offset
	switch {
	case offset == kafkago.FirstOffset:
		want = first
	case offset == kafkago.LastOffset:
		want = last
	case offset < first || offset > last:
		want = reset
		s.log.Warn("kafkadriver: offset out of range; resetting", "partition", p.id, "offset", offset,
			"first", first, "last", last, "reset_to", want)
	}
	p.lag.observe(asked, s.d.clock(), last)
	if offset == kafkago.FirstOffset || offset == kafkago.LastOffset {
		p.lag.origin.Store(want)
	}
	if _, err := conn.Seek(want, kafkago.SeekAbsolute|kafkago.SeekDontCheck); err != nil {
		return offset, err
	}
	p.mu.Lock()
	p.next = want
	p.mu.Unlock()
	return want, nil
}

// decode reads a fetched batch into chunks of messages.
func (s *subscription) decode(batch *kafkago.Batch, p *partition, names interner) []*chunk {
	var chunks []*chunk
	var c *chunk
	for {
		m, err := batch.ReadMessage()
		if err != nil {
			return chunks
		}
		if c == nil || len(c.msgs) == chunkSize {
			c = &chunk{p: p}
			chunks = append(chunks, c)
		}
		c.msgs = append(c.msgs, s.message(&m, names))
		c.offs = append(c.offs, m.Offset)
	}
}

// message maps a Kafka record to a herald Message: key, value, timestamp
// and headers, with the herald-id and herald-content-type headers moved to
// their fields. A header repeated in the record keeps its last value. A
// record without a herald-id header (a foreign producer's) gets
// RecordID's ID, the same on every delivery.
func (s *subscription) message(m *kafkago.Message, names interner) herald.Message {
	hm := herald.Message{Topic: s.topic, Data: m.Value}
	if !m.Time.IsZero() {
		hm.Time = m.Time.UTC()
	}
	if len(m.Key) > 0 {
		hm.Key = owned(m.Key)
	}
	for _, h := range m.Headers {
		switch h.Key {
		case herald.HeaderID:
			hm.ID = owned(h.Value)
		case herald.HeaderContentType:
			hm.ContentType = names.get(h.Value)
		case herald.HeaderEvent:
			hm.Headers = addHeader(hm.Headers, len(m.Headers), h.Key, names.get(h.Value))
		default:
			hm.Headers = addHeader(hm.Headers, len(m.Headers), h.Key, owned(h.Value))
		}
	}
	if hm.ID == "" {
		hm.ID = RecordID(s.topic, m.Partition, m.Offset)
	}
	return hm
}

// RecordID is the message ID of a record that carries no herald-id header
// (a producer other than herald wrote it): "<topic>/<partition>/<offset>",
// which names the record for good ('/' cannot occur in a Kafka topic
// name). Deduplication, dead-lettering and redrive by ID use it like any
// other ID.
func RecordID(topic string, partition int, offset int64) string {
	return topic + "/" + strconv.Itoa(partition) + "/" + strconv.FormatInt(offset, 10)
}

// owned returns b as a string without copying it. It is only for the
// key and header values of a record kafka-go decoded: kafka-go allocates
// each of them for that record alone (its readNewBytes) and hands them
// over in a kafkago.Message that message drops, so nothing writes to
// those bytes afterwards (Data is the value, a slice of its own). It
// saves the copy of the ID and of the key of every record.
func owned(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func addHeader(h herald.Headers, size int, k, v string) herald.Headers {
	if h == nil {
		h = make(herald.Headers, size)
	}
	h[k] = v
	return h
}

// interner shares the strings that repeat on every message of a topic
// (content types, event names) instead of allocating them each time. One
// per fetcher; bounded, since those values are few.
type interner map[string]string

func (in interner) get(b []byte) string {
	if s, ok := in[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(in) < 64 {
		in[s] = s
	}
	return s
}

// deliver registers the fetched offsets and queues the chunks for Fetch.
// It returns false when the generation ended first; what was not queued
// stays unacknowledged, so it is never committed past.
func (s *subscription) deliver(ctx context.Context, p *partition, chunks []*chunk, next int64) bool {
	p.mu.Lock()
	for _, c := range chunks {
		c.seq0 = p.push(c.offs)
	}
	p.next = next
	p.mu.Unlock()
	for _, c := range chunks {
		select {
		case s.chunks <- c:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// chunk is up to chunkSize consecutive messages of one partition.
type chunk struct {
	p    *partition
	msgs []herald.Message
	offs []int64
	seq0 uint64 // seq of msgs[0]
	next int    // first message not handed out yet
}

// handOut moves up to len(dst) deliveries into dst. A chunk of a
// generation that has ended is dropped: its partition may belong to another
// member by now.
func (c *chunk) handOut(dst []herald.Delivery) int {
	g := c.p.g
	g.mu.Lock()
	if g.ending.Load() {
		g.mu.Unlock()
		c.next = len(c.msgs)
		return 0
	}
	k := min(len(dst), len(c.msgs)-c.next)
	g.handedOut.Add(int64(k))
	g.mu.Unlock()
	h := c.p.hist
	h.mu.Lock()
	for i := range k {
		j := c.next + i
		dst[i] = herald.Delivery{Message: &c.msgs[j], Count: h.count(c.offs[j]), Ref: c.p, Seq: c.seq0 + uint64(j)}
	}
	h.mu.Unlock()
	c.next += k
	return k
}
