package kafkadriver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// ErrRebalancing is returned by a Subscription's Lag while the member is
// joining its group or the group rebalances: until the group settles, the
// member owns no partitions to count. Ask again later.
var ErrRebalancing = errors.New("kafkadriver: the member is joining its group and owns no partitions yet")

// MessagingSystem names the broker for telemetry (herald.MessagingSystem).
func (d *Driver) MessagingSystem() string { return "kafka" }

// lagState is what the fetcher of a partition knows of the partition's
// end, for Lag to read without a request. Every fetch response carries the
// high watermark; seek reads it too. Times are on the Driver's clock.
type lagState struct {
	hwm    atomic.Int64 // high watermark last seen; -1 until seen
	seenAt atomic.Int64 // when
	// asOf is when the request that reported hwm was sent: the broker
	// had then applied every write this Driver had been answered for.
	asOf atomic.Int64
	sent atomic.Int64 // when the fetch in flight was sent
	// waiting is set while a fetch from the high watermark is in flight:
	// the broker holds it until the partition grows, then answers at once,
	// so the high watermark it started from is still the partition's end.
	waiting atomic.Bool
	// origin is the group's start position (WithStartPosition) as resolved
	// for a partition without a committed offset; -1 until resolved.
	origin atomic.Int64
}

func (l *lagState) init() {
	l.hwm.Store(-1)
	l.origin.Store(-1)
}

// observe records the high watermark hwm seen at now, from a request sent
// at asOf. hwm is stored before asOf and seenAt, and end loads them the
// other way round, so a high watermark is never older than the times end
// judges it by.
func (l *lagState) observe(asOf, now, hwm int64) {
	if hwm < 0 {
		return
	}
	l.hwm.Store(hwm)
	l.asOf.Store(asOf)
	l.seenAt.Store(now)
}

// fetching is called at now, before a fetch from offset is sent.
func (l *lagState) fetching(now, offset int64) {
	hwm := l.hwm.Load()
	l.sent.Store(now)
	l.waiting.Store(hwm >= 0 && offset >= hwm)
}

// fetched is called when a fetch's response arrived (b's messages not read
// yet): kafka-go has parsed its high watermark by then.
func (l *lagState) fetched(now int64, b *kafkago.Batch) {
	if b.Err() == nil {
		l.observe(l.sent.Load(), now, b.HighWaterMark())
	}
	l.waiting.Store(false)
}

// end returns the partition's high watermark when it is fresh: seen within
// window (the fetch max wait), or within two while a fetch from it is held
// by the broker (which answers that fetch after one window at the latest),
// and reported by a request sent after the Driver's last produce request
// to the partition was answered (written; 0: none). A fetcher held back
// (the scheduler is behind, or WithMaxUncommitted holds the partition)
// sends no fetches, so its high watermark goes stale and Lag asks the
// broker. So does a fetch held at the end of the partition when this
// Driver writes to it: the broker answers that fetch once the write is
// applied, but the response may not have arrived when Write returns, and
// a Lag called after Write must count what it wrote.
func (l *lagState) end(now, window, written int64) (int64, bool) {
	age := now - l.seenAt.Load()
	asOf := l.asOf.Load()
	waiting := l.waiting.Load()
	hwm := l.hwm.Load()
	if hwm < 0 || age > 2*window || age > window && !waiting || written > 0 && asOf <= written {
		return 0, false
	}
	return hwm, true
}

// clock is the Driver's monotonic clock, in nanoseconds.
func (d *Driver) clock() int64 { return int64(time.Since(d.epoch)) }

// answered returns when the last produce request of this Driver with
// messages for partition of topic was answered, on its clock (0: none).
func (d *Driver) answered(topic string, partition int) int64 {
	d.queuesMu.Lock()
	q := d.queues[topicPartition{topic, partition}]
	d.queuesMu.Unlock()
	if q == nil {
		return 0
	}
	return q.answered.Load()
}

// lagFrom returns where the group stands in p: the committed offset, else
// the resolved start position, else kafka-go's FirstOffset or LastOffset.
func (p *partition) lagFrom() int64 {
	p.mu.Lock()
	from := p.committed
	p.mu.Unlock()
	if from < 0 {
		if origin := p.lag.origin.Load(); origin >= 0 {
			return origin
		}
	}
	return from
}

// Lag returns how many messages of the partitions this member owns the
// group has not committed (herald.LagReporter): per partition, the high
// watermark minus the committed offset, or minus the group's start
// position (WithStartPosition) where nothing is committed yet.
//
// Acknowledgments are committed every WithCommitInterval, so an Ack shows
// in Lag after the next commit: Lag counts what a new owner of the
// partition would receive. The high watermark comes from the fetch
// responses, at no cost, while they are fresh (no older than
// WithFetchMaxWait, or a fetch is waiting at the end of the partition)
// and were requested after this Driver's last write to the partition was
// acknowledged, so a Lag called after a Write counts what it wrote; for
// the other partitions Lag sends one ListOffsets round trip (kafka-go
// sends one request per partition, in parallel). Writes of other
// processes show when a fetch reports them. While the member joins or the group rebalances it returns an
// error wrapping ErrRebalancing. It is safe for concurrent use.
func (s *subscription) Lag(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if closed(s.closing) {
		return 0, fail("lag", s.topic, s.group, "", ErrClosed)
	}
	g := s.current.Load()
	if g == nil {
		return 0, fail("lag", s.topic, s.group, "", ErrRebalancing)
	}
	now, window := s.d.clock(), int64(s.d.cfg.fetchMaxWait)
	var total int64
	var ask []partitionFrom
	for _, p := range g.parts {
		from := p.lagFrom()
		if from == kafkago.LastOffset {
			continue // nothing committed and the group starts at the end
		}
		if end, fresh := p.lag.end(now, window, s.d.answered(s.topic, p.id)); fresh && from >= 0 {
			total += max(end-from, 0)
			continue
		}
		ask = append(ask, partitionFrom{p.id, from})
	}
	if len(ask) > 0 {
		n, err := s.listLag(ctx, ask)
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

type partitionFrom struct {
	partition int
	from      int64 // an offset, or kafka-go's FirstOffset
}

// listLag asks the partitions' leaders for their high watermarks (and
// first offsets, where the group starts there) and returns the partitions'
// lag.
func (s *subscription) listLag(ctx context.Context, parts []partitionFrom) (int64, error) {
	reqs := make([]kafkago.OffsetRequest, 0, len(parts))
	for _, pf := range parts {
		reqs = append(reqs, kafkago.LastOffsetOf(pf.partition))
		if pf.from == kafkago.FirstOffset {
			reqs = append(reqs, kafkago.FirstOffsetOf(pf.partition))
		}
	}
	// Driver.Close closes the transport once no request holds the lock.
	s.d.mu.RLock()
	defer s.d.mu.RUnlock()
	if s.d.closed {
		return 0, fail("lag", s.topic, s.group, "", ErrClosed)
	}
	res, err := s.d.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{
		Topics: map[string][]kafkago.OffsetRequest{s.topic: reqs},
	})
	if err != nil {
		return 0, fail("lag", s.topic, s.group, "", err)
	}
	offsets := make(map[int]kafkago.PartitionOffsets, len(parts))
	for _, po := range res.Topics[s.topic] {
		offsets[po.Partition] = po
	}
	var total int64
	for _, pf := range parts {
		po, ok := offsets[pf.partition]
		switch {
		case !ok:
			err = errors.New("no offsets in the response")
		case po.Error != nil:
			err = po.Error
		case po.LastOffset < 0 || pf.from == kafkago.FirstOffset && po.FirstOffset < 0:
			err = fmt.Errorf("offsets %d to %d in the response", po.FirstOffset, po.LastOffset)
		}
		if err != nil {
			return 0, fail("lag", s.topic, s.group, fmt.Sprintf("partition %d", pf.partition), err)
		}
		from := pf.from
		if from == kafkago.FirstOffset {
			from = po.FirstOffset
		}
		total += max(po.LastOffset-from, 0)
	}
	return total, nil
}
