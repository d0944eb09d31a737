package kafkadriver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	kafkago "github.com/segmentio/kafka-go"
)

// RedrivenSuffix names the topic where a dead-letter topic's redriven
// positions are recorded: "<dead-letter topic>.redriven".
const RedrivenSuffix = ".redriven"

// dlqFetchMaxWait bounds a fetch of the dead-letter reader; it only
// fetches below the high watermark, so the broker answers at once.
const dlqFetchMaxWait = 500 * time.Millisecond

// DeadLetters returns a dlq.Store over the driver's cluster. It is safe
// for concurrent use, and fails with ErrClosed once the driver is closed.
//
// A position is "partition:offset" ("3:1024"). List goes through the
// partitions in order, each from its first offset to its high watermark,
// so the entries of one key come in the order they were dead-lettered;
// its cursor is opaque. Get by message ID reads the whole topic.
//
// Kafka logs are immutable, so MarkRedriven records each position in a
// sidecar topic, "<topic>.redriven" (one record per position, keyed by the
// position; created on first use with one partition and
// cleanup.policy=compact, so the marks outlive the topic's retention). List
// and Get read the sidecar first and skip marked positions; the store
// reads each sidecar once and then only what was added. A topic, or a
// sidecar, created by another client in the last few seconds may read as
// missing until the driver's metadata refreshes (3 s). Deleting and
// re-creating a dead-letter topic calls for deleting its sidecar too, or
// the old marks hide the new entries at the same positions.
func (d *Driver) DeadLetters() dlq.Store {
	cfg := &d.cfg
	return &deadLetters{
		d: d,
		dialer: &kafkago.Dialer{
			ClientID:      cfg.clientID,
			Timeout:       cfg.requestTimeout,
			TLS:           cfg.tls,
			SASLMechanism: cfg.sasl,
		},
		marks: make(map[string]*redriven),
	}
}

type deadLetters struct {
	d      *Driver
	dialer *kafkago.Dialer

	mu    sync.Mutex
	marks map[string]*redriven // by dead-letter topic
}

// redriven is what the store knows of one sidecar topic.
type redriven struct {
	mu      sync.Mutex // held while the sidecar is read or written
	created bool       // the sidecar is known to exist
	next    map[int]int64
	set     map[position]bool
}

type position struct {
	partition int
	offset    int64
}

func (p position) String() string {
	return strconv.Itoa(p.partition) + ":" + strconv.FormatInt(p.offset, 10)
}

// parsePosition reads "partition:offset".
func parsePosition(s string) (position, bool) {
	ps, os, ok := strings.Cut(s, ":")
	if !ok {
		return position{}, false
	}
	p, err1 := strconv.Atoi(ps)
	o, err2 := strconv.ParseInt(os, 10, 64)
	if err1 != nil || err2 != nil || p < 0 || o < 0 {
		return position{}, false
	}
	return position{p, o}, true
}

// List implements dlq.Store.
func (s *deadLetters) List(ctx context.Context, topic, cursor string, limit int) ([]dlq.Entry, string, error) {
	if err := s.check(topic); err != nil {
		return nil, "", fail("list dead letters", topic, "", "", err)
	}
	if limit <= 0 {
		return nil, "", fail("list dead letters", topic, "", fmt.Sprintf("limit %d", limit), fmt.Errorf("want at least 1: %w", herald.ErrInvalidOption))
	}
	start := position{}
	if cursor != "" {
		var ok bool
		if start, ok = parsePosition(cursor); !ok {
			return nil, "", fail("list dead letters", topic, "", fmt.Sprintf("cursor %q (want partition:offset)", cursor), dlq.ErrBadPosition)
		}
	}
	marks, err := s.redriven(ctx, topic)
	if err != nil {
		return nil, "", fail("list dead letters", topic, "", "", err)
	}
	partitions, err := s.partitions(ctx, topic)
	if err != nil {
		return nil, "", fail("list dead letters", topic, "", "", err)
	}
	dec := &subscription{topic: topic}
	names := make(interner)
	var entries []dlq.Entry
	next := ""
	for p := start.partition; p < partitions && next == ""; p++ {
		from := int64(0)
		if p == start.partition {
			from = start.offset
		}
		err := s.read(ctx, topic, p, from, func(m *kafkago.Message) bool {
			pos := position{p, m.Offset}
			if marks.has(pos) {
				return true
			}
			if len(entries) == limit {
				next = pos.String()
				return false
			}
			hm := dec.message(m, names)
			entries = append(entries, dlq.NewEntry(pos.String(), &hm))
			return true
		})
		if err != nil {
			return nil, "", fail("list dead letters", topic, "", fmt.Sprintf("partition %d", p), err)
		}
	}
	return entries, next, nil
}

// Get implements dlq.Store.
func (s *deadLetters) Get(ctx context.Context, topic, positionOrID string) (dlq.Entry, error) {
	if err := s.check(topic); err != nil {
		return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, err)
	}
	marks, err := s.redriven(ctx, topic)
	if err != nil {
		return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, err)
	}
	partitions, err := s.partitions(ctx, topic)
	if err != nil {
		return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, err)
	}
	dec := &subscription{topic: topic}
	names := make(interner)
	var found *dlq.Entry
	take := func(pos position, m *kafkago.Message) {
		hm := dec.message(m, names)
		e := dlq.NewEntry(pos.String(), &hm)
		found = &e
	}
	if pos, ok := parsePosition(positionOrID); ok && pos.partition < partitions && !marks.has(pos) {
		err := s.read(ctx, topic, pos.partition, pos.offset, func(m *kafkago.Message) bool {
			if m.Offset == pos.offset {
				take(pos, m)
			}
			return false
		})
		if err != nil {
			return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, err)
		}
		if found != nil {
			return *found, nil
		}
	}
	for p := 0; p < partitions && found == nil; p++ {
		err := s.read(ctx, topic, p, 0, func(m *kafkago.Message) bool {
			pos := position{p, m.Offset}
			if !hasID(m, positionOrID) || marks.has(pos) {
				return true
			}
			take(pos, m)
			return false
		})
		if err != nil {
			return dlq.Entry{}, fail("get dead letter", topic, "", fmt.Sprintf("entry %s partition %d", positionOrID, p), err)
		}
	}
	if found == nil {
		return dlq.Entry{}, fail("get dead letter", topic, "", "entry "+positionOrID, dlq.ErrNotFound)
	}
	return *found, nil
}

// hasID reports whether m carries the message ID id, as its last herald-id
// header (the one the reader keeps).
func hasID(m *kafkago.Message, id string) bool {
	got := ""
	for _, h := range m.Headers {
		if h.Key == herald.HeaderID {
			got = string(h.Value)
		}
	}
	return got == id
}

// MarkRedriven implements dlq.Store: it writes one record per position to
// the sidecar topic, creating the topic first if it does not exist.
func (s *deadLetters) MarkRedriven(ctx context.Context, topic string, entries []dlq.Entry) error {
	if err := s.check(topic); err != nil {
		return fail("mark dead letters redriven", topic, "", "", err)
	}
	if len(entries) == 0 {
		return nil
	}
	sidecar := topic + RedrivenSuffix
	now := time.Now().UTC()
	positions := make([]position, len(entries))
	msgs := make([]*herald.Message, len(entries))
	for i, e := range entries {
		pos, ok := parsePosition(e.Position)
		if !ok {
			return fail("mark dead letters redriven", topic, "", fmt.Sprintf("position %q (want partition:offset)", e.Position), dlq.ErrBadPosition)
		}
		positions[i] = pos
		// The ID is there for whoever reads the sidecar; the key is
		// what counts, and what compaction keeps one record of.
		msgs[i] = &herald.Message{Topic: sidecar, Key: pos.String(), ID: messageID(e), Time: now}
	}
	r := s.state(topic)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.created {
		if err := s.createSidecar(ctx, sidecar); err != nil {
			return fail("mark dead letters redriven", topic, "", "", err)
		}
		r.created = true
	}
	if err := s.d.Write(ctx, msgs); err != nil {
		return fail("mark dead letters redriven", topic, "", fmt.Sprintf("%d entries", len(msgs)), err)
	}
	for _, pos := range positions {
		r.set[pos] = true
	}
	return nil
}

func messageID(e dlq.Entry) string {
	if e.Message == nil {
		return ""
	}
	return e.Message.ID
}

// check validates topic and its sidecar's name and refuses a closed
// driver.
func (s *deadLetters) check(topic string) error {
	if err := validateTopic(topic); err != nil {
		return err
	}
	if err := validateTopic(topic + RedrivenSuffix); err != nil {
		return fmt.Errorf("no room for its %s sidecar: %w", RedrivenSuffix, err)
	}
	if s.d.isClosed() {
		return ErrClosed
	}
	return nil
}

func (s *deadLetters) createSidecar(ctx context.Context, sidecar string) error {
	res, err := s.d.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{
		Topics: []kafkago.TopicConfig{{
			Topic:             sidecar,
			NumPartitions:     1,
			ReplicationFactor: -1,
			ConfigEntries:     []kafkago.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}},
		}},
	})
	if err == nil {
		err = res.Errors[sidecar]
	}
	if err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
		return fmt.Errorf("create topic %q: %w", sidecar, err)
	}
	s.d.forgetTopic(sidecar)
	return nil
}

// partitions returns how many partitions topic has: 0 for a topic that
// does not exist (nothing was dead-lettered there yet).
func (s *deadLetters) partitions(ctx context.Context, topic string) (int, error) {
	tm, err := s.d.lookupTopic(ctx, topic, false)
	if errors.Is(err, kafkago.UnknownTopicOrPartition) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("metadata of topic %q: %w", topic, err)
	}
	return len(tm.leaders), nil
}

func (s *deadLetters) state(topic string) *redriven {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.marks[topic]
	if r == nil {
		r = &redriven{next: make(map[int]int64), set: make(map[position]bool)}
		s.marks[topic] = r
	}
	return r
}

// redriven returns topic's marks, after reading what was added to the
// sidecar since the last call.
func (s *deadLetters) redriven(ctx context.Context, topic string) (*redriven, error) {
	r := s.state(topic)
	sidecar := topic + RedrivenSuffix
	r.mu.Lock()
	defer r.mu.Unlock()
	partitions, err := s.partitions(ctx, sidecar)
	if err != nil {
		return nil, err
	}
	if partitions > 0 {
		r.created = true
	}
	for p := range partitions {
		next := r.next[p]
		err := s.read(ctx, sidecar, p, next, func(m *kafkago.Message) bool {
			if pos, ok := parsePosition(string(m.Key)); ok {
				r.set[pos] = true
			}
			next = m.Offset + 1
			return true
		})
		r.next[p] = next
		if err != nil {
			return nil, fmt.Errorf("read topic %q partition %d: %w", sidecar, p, err)
		}
	}
	return r, nil
}

func (r *redriven) has(pos position) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.set[pos]
}

// read calls fn with the messages of topic's partition from offset from
// (or the first offset the partition still holds, if that is later) up to
// its high watermark at the time of the call, in offset order, until fn
// returns false.
func (s *deadLetters) read(ctx context.Context, topic string, partition int, from int64, fn func(*kafkago.Message) bool) error {
	conn, err := s.dialLeader(ctx, topic, partition)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer func() {
		stop()
		_ = conn.Close()
	}()
	timeout := s.d.cfg.requestTimeout
	_ = conn.SetDeadline(time.Now().Add(timeout))
	first, last, err := conn.ReadOffsets()
	if err != nil {
		return ctxErr(ctx, err)
	}
	offset := max(from, first)
	if offset >= last {
		return nil
	}
	if _, err := conn.Seek(offset, kafkago.SeekAbsolute|kafkago.SeekDontCheck); err != nil {
		return ctxErr(ctx, err)
	}
	for offset < last {
		_ = conn.SetDeadline(time.Now().Add(dlqFetchMaxWait + timeout))
		batch := conn.ReadBatchWith(kafkago.ReadBatchConfig{MinBytes: 1, MaxBytes: s.d.cfg.fetchMaxBytes, MaxWait: dlqFetchMaxWait})
		for {
			m, err := batch.ReadMessage()
			if err != nil || m.Offset >= last {
				break
			}
			if !fn(&m) {
				_ = batch.Close()
				return nil
			}
		}
		if err := batch.Close(); err != nil && !errors.Is(err, kafkago.RequestTimedOut) {
			return ctxErr(ctx, err)
		}
		after, _ := conn.Offset()
		if after <= offset {
			// Nothing readable is left below the watermark (the rest is
			// compacted away or transaction markers).
			return nil
		}
		offset = after
	}
	return nil
}

func (s *deadLetters) dialLeader(ctx context.Context, topic string, partition int) (*kafkago.Conn, error) {
	var err error
	for _, broker := range s.d.cfg.brokers {
		var conn *kafkago.Conn
		if conn, err = s.dialer.DialLeader(ctx, "tcp", broker, topic, partition); err == nil {
			return conn, nil
		}
	}
	return nil, ctxErr(ctx, err)
}

// ctxErr prefers ctx's error to the one a connection closed by ctx gave.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
