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
// high watermark; seek reads it too.
type lagState struct {
	hwm    atomic.Int64 // high watermark last seen; -1 until seen
	seenAt atomic.Int64 // when, on the subscription's clock
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

// observe records the high watermark hwm seen at now. hwm is stored before
// seenAt, and end loads them the other way round, so a high watermark is
// never older than the time end judges it by.
func (l *lagState) observe(now, hwm int64) {
	if hwm < 0 {
		return
	}
	l.hwm.Store(hwm)
	l.seenAt.Store(now)
}

// fetching is called before a fetch from offset is sent.
func (l *lagState) fetching(offset int64) {
	hwm := l.hwm.Load()
	l.waiting.Store(hwm >= 0 && offset >= hwm)
}

// fetched is called when a fetch's response arrived (b's messages not read
// yet): kafka-go has parsed its high watermark by then.
func (l *lagState) fetched(now int64, b *kafkago.Batch) {
	if b.Err() == nil {
		l.observe(now, b.HighWaterMark())
	}
	l.waiting.Store(false)
}

// end returns the partition's high watermark when it is fresh: seen within
// window (the fetch max wait), or within two while a fetch from it is held
// by the broker (which answers that fetch after one window at the latest).
// A fetcher held back (the scheduler is behind, or WithMaxUncommitted
// holds the partition) sends no fetches, so its high watermark goes stale
// and Lag asks the broker.
func (l *lagState) end(now, window int64) (int64, bool) {
	age := now - l.seenAt.Load()
	waiting := l.waiting.Load()
	hwm := l.hwm.Load()
	if hwm < 0 || age > 2*window || age > window && !waiting {
		return 0, false
	}
	return hwm, true
}

// clock is the subscription's monotonic clock, in nanoseconds.
func (s *subscription) clock() int64 { return int64(time.Since(s.epoch)) }

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
// WithFetchMaxWait, or a fetch is waiting at the end of the partition);
// for the partitions whose fetcher has not fetched lately, Lag sends one
// ListOffsets round trip (kafka-go sends one request per partition, in
// parallel). While the member joins or the group rebalances it returns an
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
	now, window := s.clock(), int64(s.d.cfg.fetchMaxWait)
	var total int64
	var ask []partitionFrom
	for _, p := range g.parts {
		from := p.lagFrom()
		if from == kafkago.LastOffset {
			continue // nothing committed and the group starts at the end
		}
		if end, fresh := p.lag.end(now, window); fresh && from >= 0 {
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
