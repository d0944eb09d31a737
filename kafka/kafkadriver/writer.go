package kafkadriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/heraldbus/herald"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"
)

// recordOverhead approximates the per-record framing Kafka adds (lengths,
// deltas, attributes) when a batch is sized against WithBatchBytes.
const recordOverhead = 24

// Write sends msgs and returns when the broker has acknowledged all of them
// (as WithRequiredAcks says), or with an error.
//
// Placement: a message with a Key goes to Partition(Key, n), the partition
// the Java client would pick; messages without a key are spread over the
// partitions in runs of up to the batch size. Messages of one partition
// are sent in slice order, and a partition has one batch in flight at a
// time, so the order of a key holds across retries. Write is safe for
// concurrent use; messages written concurrently share requests.
//
// Before anything is sent, every message is checked: a nil message, an
// invalid topic name (herald.ErrInvalidName; Kafka allows letters, digits
// and ". _ -"), or a message larger than WithMaxMessageBytes
// (herald.ErrMessageTooLarge) fails the whole Write and nothing is sent.
//
// Partial failure: when the broker rejects a batch after retries, Write
// returns a *herald.WriteError that lists each message not written, with
// its topic, partition, ID and cause; the others were written. A message
// the broker refused for its size wraps herald.ErrMessageTooLarge besides
// the broker's error. After the first
// failure the rest of the call's messages are not sent (their cause is
// ErrNotSent), so what a Write wrote to each partition is a prefix of its
// messages there. Retrying the whole slice is safe when consumers
// deduplicate by Message.ID; a retried request can also write a message
// twice (kafka-go has no idempotent producer). The first copy of every
// message is in write order, but a request that timed out and is applied
// after its retry leaves its copies behind later messages of their
// partition: a consumer that does not deduplicate can see a key go back.
//
// Delayed messages (herald.HeaderDeliverAt in the future) go to a delay
// tier topic instead, in the same request as the rest of the Write; the
// mover brings them to their topic when they are due (see DelayTopic and
// the package documentation). Undelayed messages of the Write go to their
// topic at once, so for one key an undelayed message overtakes a delayed
// one written before it. With WithoutDelays a delayed message fails the
// Write (herald.ErrDelayNotSupported) and nothing is sent.
//
// When ctx ends first, Write returns a *herald.DriverError wrapping
// ctx.Err(): messages not yet sent are withdrawn, those already in a
// request may be written. Its other errors are *herald.DriverError too.
func (d *Driver) Write(ctx context.Context, msgs []*herald.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.checkMessages(msgs); err != nil {
		return err
	}
	orig := msgs
	msgs, delayed, err := d.routeDelayed(msgs, time.Now())
	if err != nil {
		return err
	}
	if delayed {
		// the tier headers count toward the size too
		if err := d.checkMessages(msgs); err != nil {
			return err
		}
		if err := d.ensureDelayTopics(ctx); err != nil {
			return err
		}
	}
	recs, err := d.records(ctx, msgs)
	if err != nil {
		return err
	}
	call := &writeCall{errs: make([]error, len(msgs)), done: make(chan struct{})}
	call.pending.Store(int64(len(recs)))
	for i := range recs {
		recs[i].call = call
	}
	if err := d.enqueue(recs); err != nil {
		return err
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		call.stopped.Store(true)
		return fail("write", msgs[0].Topic, "",
			fmt.Sprintf("interrupted (%d messages; those already sent may be written)", len(msgs)), ctx.Err())
	}
	return restoreTopics(call.result(recs), orig)
}

func (d *Driver) checkMessages(msgs []*herald.Message) error {
	for i, m := range msgs {
		if m == nil {
			return fail("write", "", "", fmt.Sprintf("message %d is nil", i), herald.ErrNilEvent)
		}
		if err := validateTopic(m.Topic); err != nil {
			return fail("write", m.Topic, "", "message "+m.ID, err)
		}
		if n := messageSize(m); n > d.cfg.maxMessageBytes {
			return fail("write", m.Topic, "", fmt.Sprintf("message %s: %d bytes with key and headers, limit %d",
				m.ID, n, d.cfg.maxMessageBytes), herald.ErrMessageTooLarge)
		}
	}
	return nil
}

// messageSize is what a message weighs in a batch: herald.Message.Size
// plus the names of the ID and content type headers it travels with.
func messageSize(m *herald.Message) int {
	n := m.Size()
	if m.ID != "" {
		n += len(herald.HeaderID)
	}
	if m.ContentType != "" {
		n += len(herald.HeaderContentType)
	}
	return n
}

type topicPartition struct {
	topic     string
	partition int
}

// record is one message on its way to a partition.
type record struct {
	msg       *herald.Message
	key       []byte // nil for a message without a key
	headers   []kafkago.Header
	size      int
	partition int
	leader    int32 // the partition's leader when the Write placed it
	index     int   // in the Write's slice
	call      *writeCall
}

// writeCall tracks the messages of one Write.
type writeCall struct {
	errs    []error // by index; written before pending is decremented
	pending atomic.Int64
	done    chan struct{} // closed when every message is settled
	stopped atomic.Bool   // the caller left, or a message failed: send no more
}

func (c *writeCall) settle(index int, err error) {
	if err != nil {
		c.errs[index] = err
		c.stopped.Store(true)
	}
	if c.pending.Add(-1) == 0 {
		close(c.done)
	}
}

func (c *writeCall) result(recs []record) error {
	var failed []*herald.MessageError
	for i, err := range c.errs {
		if err == nil {
			continue
		}
		if errors.Is(err, kafkago.MessageSizeTooLarge) || errors.Is(err, kafkago.RecordListTooLarge) {
			err = fmt.Errorf("%w: %w", herald.ErrMessageTooLarge, err)
		}
		r := &recs[i]
		failed = append(failed, &herald.MessageError{Index: i, ID: r.msg.ID, Topic: r.msg.Topic, Partition: r.partition, Err: err})
	}
	if len(failed) == 0 {
		return nil
	}
	return &herald.WriteError{Driver: "kafkadriver", Messages: len(recs), Failed: failed}
}

// records converts msgs, placing each on a partition. Keys and header
// values share one allocation per call.
func (d *Driver) records(ctx context.Context, msgs []*herald.Message) ([]record, error) {
	nHeaders, nBytes := 0, 0
	for _, m := range msgs {
		nHeaders += len(m.Headers) + 2
		nBytes += len(m.Key) + len(m.ID) + len(m.ContentType)
		for _, v := range m.Headers {
			nBytes += len(v)
		}
	}
	hs := make([]kafkago.Header, 0, nHeaders)
	buf := make([]byte, 0, nBytes) // never grows: sub-slices stay valid
	bytesOf := func(s string) []byte {
		start := len(buf)
		buf = append(buf, s...)
		return buf[start:len(buf):len(buf)]
	}

	recs := make([]record, len(msgs))
	var tm *topicMeta
	var first, unkeyed int
	for i, m := range msgs {
		if i == 0 || m.Topic != msgs[i-1].Topic {
			var err error
			if tm, err = d.topicInfo(ctx, m.Topic); err != nil {
				return nil, err
			}
			first, unkeyed = int(d.rr.Add(1)), 0
		}
		partitions := len(tm.leaders)
		r := &recs[i]
		r.msg, r.index, r.size = m, i, messageSize(m)+recordOverhead
		if m.Key != "" {
			r.key = bytesOf(m.Key)
			r.partition = Partition(m.Key, partitions)
		} else {
			r.partition = (first + unkeyed/d.cfg.batchSize) % partitions
			unkeyed++
		}
		r.leader = tm.leaders[r.partition]
		start := len(hs)
		if m.ID != "" {
			hs = append(hs, kafkago.Header{Key: herald.HeaderID, Value: bytesOf(m.ID)})
		}
		if m.ContentType != "" {
			hs = append(hs, kafkago.Header{Key: herald.HeaderContentType, Value: bytesOf(m.ContentType)})
		}
		for k, v := range m.Headers {
			if k != herald.HeaderID && k != herald.HeaderContentType {
				hs = append(hs, kafkago.Header{Key: k, Value: bytesOf(v)})
			}
		}
		r.headers = hs[start:len(hs):len(hs)]
	}
	return recs, nil
}

// enqueue hands the records to their partitions' queues, in slice order.
func (d *Driver) enqueue(recs []record) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return fail("write", recs[0].msg.Topic, "", "", ErrClosed)
	}
	for i := 0; i < len(recs); {
		tp := topicPartition{recs[i].msg.Topic, recs[i].partition}
		j := i + 1
		for j < len(recs) && recs[j].partition == tp.partition && recs[j].msg.Topic == tp.topic {
			j++
		}
		d.queue(tp, recs[i].leader).push(recs[i:j])
		i = j
	}
	return nil
}

func (d *Driver) queue(tp topicPartition, leader int32) *partitionQueue {
	d.queuesMu.Lock()
	defer d.queuesMu.Unlock()
	q := d.queues[tp]
	if q == nil {
		q = &partitionQueue{d: d, tp: tp, leader: leader, maxBatch: d.cfg.batchSize}
		d.queues[tp] = q
	}
	return q
}

func (d *Driver) sender(broker int32) *brokerSender {
	d.queuesMu.Lock()
	defer d.queuesMu.Unlock()
	s := d.senders[broker]
	if s == nil {
		s = &brokerSender{d: d, id: broker, wake: make(chan struct{}, 1)}
		d.senders[broker] = s
	}
	return s
}

// partitionQueue holds the records waiting for one partition, in order.
// The sender of the partition's leader takes one batch from it per
// request, and puts a batch that failed retriably back at its front, so a
// partition never has two batches in flight and its order survives
// retries.
type partitionQueue struct {
	d  *Driver
	tp topicPartition

	mu        sync.Mutex
	items     []*record
	leader    int32 // the broker whose sender serves the queue
	scheduled bool  // on a sender's ready list, or in its current request
	takenBy   *brokerSender
	round     uint64    // takenBy's round that took the last batch
	attempts  int       // failed attempts of the batch at the front
	retryAt   time.Time // no batch before then
	maxBatch  int       // messages per batch; halved when the broker finds one too large

	// answered is when the last produce request with a batch of the queue
	// was answered or failed, on the Driver's clock (0: never): Lag trusts
	// a high watermark of the partition only from a request sent after it.
	answered atomic.Int64
}

// push appends recs; d.mu is read-held, so Close waits for the sender.
func (q *partitionQueue) push(recs []record) {
	q.mu.Lock()
	for i := range recs {
		q.items = append(q.items, &recs[i])
	}
	schedule := !q.scheduled
	q.scheduled = true
	leader := q.leader
	q.mu.Unlock()
	if schedule {
		q.d.sender(leader).add(q)
	}
}

// take removes the next batch; records of stopped calls are taken out too
// and appended to stopped, for settling. q.mu held.
func (q *partitionQueue) take(stopped []*record) (batch, _ []*record) {
	cfg := &q.d.cfg
	size, i := 0, 0
	for ; i < len(q.items); i++ {
		r := q.items[i]
		if r.call.stopped.Load() {
			stopped = append(stopped, r)
			continue
		}
		if len(batch) > 0 && (len(batch) >= q.maxBatch || size+r.size > cfg.batchBytes) {
			break
		}
		batch = append(batch, r)
		size += r.size
	}
	n := copy(q.items, q.items[i:])
	clear(q.items[n:])
	q.items = q.items[:n]
	return batch, stopped
}

// brokerSender sends the queued records of the partitions one broker
// leads, one produce request at a time. Each request carries the next
// batch of every such partition, so the broker sees few large requests,
// and what is written while one is in flight makes up the next. Its
// goroutine runs while there is something to send.
type brokerSender struct {
	d    *Driver
	id   int32
	wake chan struct{} // capacity 1: new work while the goroutine waits

	mu      sync.Mutex
	ready   []*partitionQueue
	running bool

	round uint64 // owned by the goroutine
}

func (s *brokerSender) add(q *partitionQueue) {
	s.mu.Lock()
	s.ready = append(s.ready, q)
	start := !s.running
	s.running = true
	s.mu.Unlock()
	if start {
		s.d.sending.Add(1)
		go s.run()
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

type partitionBatch struct {
	q    *partitionQueue
	recs []*record
}

func (s *brokerSender) run() {
	defer s.d.sending.Done()
	for {
		if linger := s.d.cfg.batchTimeout; linger > 0 {
			s.sleep(linger)
		}
		batches, wait, more := s.collect()
		switch {
		case !more:
			return
		case len(batches) == 0:
			s.sleep(wait)
		default:
			s.produce(batches)
		}
	}
}

func (s *brokerSender) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.wake:
	case <-s.d.closing:
	}
}

// collect takes the next batch of every ready partition. When all of
// them are backing off it returns how long to wait; when none is left it
// stops the goroutine (more is false).
func (s *brokerSender) collect() (batches []partitionBatch, wait time.Duration, more bool) {
	s.round++
	s.mu.Lock()
	ready := s.ready
	s.ready = nil
	s.mu.Unlock()
	closing := closed(s.d.closing)
	now := time.Now()
	var keep []*partitionQueue
	var skipped []*record
	for _, q := range ready {
		q.mu.Lock()
		switch {
		case q.leader != s.id || (q.takenBy == s && q.round == s.round):
			// Moved to another broker's sender, or listed twice.
		case !closing && now.Before(q.retryAt):
			keep = append(keep, q)
			if w := q.retryAt.Sub(now); wait == 0 || w < wait {
				wait = w
			}
		default:
			var batch []*record
			batch, skipped = q.take(skipped)
			if len(batch) == 0 {
				q.scheduled = false
				break
			}
			q.takenBy, q.round = s, s.round
			batches = append(batches, partitionBatch{q, batch})
			keep = append(keep, q) // the next round sends the rest, or unschedules it
		}
		q.mu.Unlock()
	}
	for _, r := range skipped {
		r.call.settle(r.index, ErrNotSent)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready = append(keep, s.ready...)
	if len(s.ready) == 0 && len(batches) == 0 {
		s.running = false
		return nil, 0, false
	}
	return batches, wait, true
}

// produce sends one request with the batches and settles each batch by
// its partition's result.
func (s *brokerSender) produce(batches []partitionBatch) {
	d := s.d
	acks := int16(-1)
	switch d.cfg.acks {
	case AcksLeader:
		acks = 1
	case AcksNone:
		acks = 0
	}
	codec := [...]kafkago.Compression{0, kafkago.Gzip, kafkago.Snappy, kafkago.Lz4, kafkago.Zstd}[d.cfg.compression]
	req := &produceAPI.Request{Acks: acks, Timeout: int32(d.cfg.requestTimeout / time.Millisecond)}
	for _, b := range batches {
		part := produceAPI.RequestPartition{
			Partition: int32(b.q.tp.partition),
			RecordSet: protocol.RecordSet{Attributes: protocol.Attributes(codec) & 7, Records: &recordReader{batch: b.recs}},
		}
		i := 0
		for i < len(req.Topics) && req.Topics[i].Topic != b.q.tp.topic {
			i++
		}
		if i == len(req.Topics) {
			req.Topics = append(req.Topics, produceAPI.RequestTopic{Topic: b.q.tp.topic})
		}
		req.Topics[i].Partitions = append(req.Topics[i].Partitions, part)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.requestTimeout)
	res, err := d.transport.RoundTrip(ctx, d.addr, req)
	cancel()
	answered := d.clock()
	for _, b := range batches {
		b.q.answered.Store(answered) // before settle lets the Write return
		perr := err
		if perr == nil {
			perr = partitionResult(res, b.q.tp)
		}
		s.settle(b, perr)
	}
}

// partitionResult is tp's outcome in a produce response (nil: written).
func partitionResult(res protocol.Message, tp topicPartition) error {
	r, _ := res.(*produceAPI.Response)
	if r == nil {
		return nil // acks=none: no response
	}
	for _, t := range r.Topics {
		if t.Topic != tp.topic {
			continue
		}
		for _, p := range t.Partitions {
			if p.Partition != int32(tp.partition) {
				continue
			}
			if p.ErrorCode == 0 {
				return nil
			}
			if p.ErrorMessage != "" {
				return fmt.Errorf("%w: %s", kafkago.Error(p.ErrorCode), p.ErrorMessage)
			}
			return kafkago.Error(p.ErrorCode)
		}
	}
	return fmt.Errorf("partition missing from the produce response: %w", protocol.ErrNoPartition)
}

// settle completes a batch, or puts it back for another attempt: after a
// retriable error (with backoff, and a metadata refresh in case the leader
// moved), or halved when the broker found it too large.
func (s *brokerSender) settle(b partitionBatch, err error) {
	q, d := b.q, s.d
	if err == nil {
		q.mu.Lock()
		q.attempts, q.maxBatch = 0, d.cfg.batchSize
		q.mu.Unlock()
		for _, r := range b.recs {
			r.call.settle(r.index, nil)
		}
		return
	}
	tooLarge := errors.Is(err, kafkago.MessageSizeTooLarge) || errors.Is(err, kafkago.RecordListTooLarge)
	q.mu.Lock()
	switch {
	case tooLarge && len(b.recs) > 1:
		q.maxBatch = max(len(b.recs)/2, 1)
		q.items = append(b.recs, q.items...)
		q.mu.Unlock()
		return
	case !tooLarge && retriable(err) && q.attempts+1 < d.cfg.maxAttempts && !closed(d.closing):
		q.attempts++
		q.retryAt = time.Now().Add(min(100*time.Millisecond<<(q.attempts-1), time.Second))
		q.items = append(b.recs, q.items...)
		attempts := q.attempts
		q.mu.Unlock()
		d.cfg.logger.Warn("kafkadriver: produce failed; retrying", "topic", q.tp.topic, "partition", q.tp.partition,
			"messages", len(b.recs), "attempt", attempts, "error", err)
		s.relocate(q, err)
		return
	}
	q.attempts, q.maxBatch = 0, d.cfg.batchSize
	q.mu.Unlock()
	for _, r := range b.recs {
		r.call.settle(r.index, err)
	}
}

// relocate moves q to its leader's sender when the metadata says the
// leader has changed. cause is why the batch failed.
func (s *brokerSender) relocate(q *partitionQueue, cause error) {
	d := s.d
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.requestTimeout)
	defer cancel()
	q.mu.Lock()
	current := q.leader
	q.mu.Unlock()
	leader, err := d.leaderOf(ctx, q.tp)
	if err == nil && leader == current && errors.Is(cause, kafkago.NotLeaderForPartition) {
		// The broker says it no longer leads the partition, but the
		// transport, which routes produce requests by its cached metadata
		// and refreshes that on a timer (up to metadataTTL), not on
		// errors, still names it: every attempt until then would go to
		// it again. Dropping the transport's connection pools makes the
		// next request read the cluster's metadata first; requests in
		// flight finish on the connections they have.
		d.transport.CloseIdleConnections()
		leader, err = d.leaderOf(ctx, q.tp)
	}
	if err != nil {
		return // the next attempt tries the same broker again
	}
	q.mu.Lock()
	moved := leader != q.leader
	q.leader = leader
	q.mu.Unlock()
	if moved {
		d.sender(leader).add(q)
	}
}

// leaderOf looks up the leader of tp, past the driver's metadata cache.
func (d *Driver) leaderOf(ctx context.Context, tp topicPartition) (int32, error) {
	d.forgetTopic(tp.topic)
	tm, err := d.topicInfo(ctx, tp.topic)
	if err != nil {
		return 0, err
	}
	if tp.partition >= len(tm.leaders) {
		return 0, fmt.Errorf("partition %d of %d: %w", tp.partition, len(tm.leaders), protocol.ErrNoPartition)
	}
	return tm.leaders[tp.partition], nil
}

// retriable reports whether a produce error may go away by itself: a
// leader moving, a topic being created, a connection dropping.
func retriable(err error) bool {
	var ke kafkago.Error
	if errors.As(err, &ke) {
		return ke.Temporary()
	}
	var routing *produceAPI.Error // the transport's metadata disagrees with the request
	var ne net.Error
	return errors.As(err, &routing) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, protocol.ErrNoTopic) || errors.Is(err, protocol.ErrNoPartition) || errors.Is(err, protocol.ErrNoLeader)
}

// recordReader feeds a batch to kafka-go's encoder. The encoder reads each
// record before asking for the next, so one Record and two readers serve
// the whole batch.
type recordReader struct {
	batch      []*record
	i          int
	rec        kafkago.Record
	key, value bytesReader
}

func (r *recordReader) ReadRecord() (*kafkago.Record, error) {
	if r.i >= len(r.batch) {
		return nil, io.EOF
	}
	m := r.batch[r.i]
	r.i++
	r.rec = kafkago.Record{Time: m.msg.Time, Headers: m.headers}
	if m.key != nil {
		r.key.Reset(m.key)
		r.rec.Key = &r.key
	}
	if m.msg.Data != nil {
		r.value.Reset(m.msg.Data)
		r.rec.Value = &r.value
	}
	return &r.rec, nil
}

type bytesReader struct{ bytes.Reader }

func (*bytesReader) Close() error { return nil }
