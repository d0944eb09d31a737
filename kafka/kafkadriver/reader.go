package kafkadriver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/errsink"
	kafkago "github.com/segmentio/kafka-go"
)

const (
	// chunkSize bounds the deliveries a fetcher hands over at once.
	chunkSize = 256
	// chunkBuffer is how many chunks wait between the fetchers and Fetch;
	// with the one chunk each fetcher may hold, it bounds the prefetch.
	chunkBuffer = 8
	// reportAfter is how many fetch failures in a row of one partition are
	// borne quietly (a leader moving, a connection dropping) before Fetch
	// returns the error.
	reportAfter = 3
)

// Subscribe joins group (the Kafka consumer group id) on topic and returns
// the member. It returns at once; the group is joined in the background,
// and failures to join are returned by Fetch, which keeps retrying. With
// WithAutoCreateTopics a missing topic is created first; without it, the
// member waits for the topic to appear (WithPartitionWatchInterval). The
// package documentation says how offsets are committed, what a rebalance
// does with deliveries in flight, and what Close guarantees.
//
// Unless WithoutDelays, the first Subscribe also starts this Driver's
// delay mover (StartDelayMover).
func (d *Driver) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	s, err := d.subscribe(ctx, topic, group, d.cfg.maxUncommitted, false)
	if err != nil {
		return nil, err
	}
	d.StartDelayMover()
	return s, nil
}

// subscribe joins group on topic; limit bounds the uncommitted messages
// per partition (WithMaxUncommitted, or the mover's WithDelayBuffer);
// holder marks a delay mover's subscription (subscription.holder).
func (d *Driver) subscribe(ctx context.Context, topic, group string, limit int, holder bool) (*subscription, error) {
	if err := errors.Join(validateTopic(topic), herald.ValidateName("group", group)); err != nil {
		return nil, fail("subscribe", topic, group, "", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.isClosed() {
		return nil, fail("subscribe", topic, group, "", ErrClosed)
	}
	if d.cfg.autoCreate {
		if _, err := d.topicInfo(ctx, topic); err != nil {
			return nil, fail("subscribe", topic, group, "", err)
		}
	}

	cfg := &d.cfg
	logger := cfg.logger.With("topic", topic, "group", group)
	s := &subscription{
		d:       d,
		topic:   topic,
		group:   group,
		log:     logger,
		conns:   newConnTracker(net.Dialer{Timeout: cfg.requestTimeout, KeepAlive: 30 * time.Second}),
		chunks:  make(chan *chunk, chunkBuffer),
		errs:    make(chan error, 1),
		closing: make(chan struct{}),
		runDone: make(chan struct{}),
		limit:   limit,
		holder:  holder,
	}
	s.dialer = &kafkago.Dialer{
		ClientID:      cfg.clientID,
		DialFunc:      s.conns.dial,
		Timeout:       cfg.requestTimeout,
		TLS:           cfg.tls,
		SASLMechanism: cfg.sasl,
	}
	start := kafkago.FirstOffset
	if cfg.start == herald.StartLatest {
		start = kafkago.LastOffset
	}
	var kafkaLog kafkago.Logger
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		kafkaLog = kafkago.LoggerFunc(func(format string, args ...any) {
			logger.Debug("kafka-go: " + fmt.Sprintf(format, args...))
		})
	}
	cg, err := kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                     group,
		Brokers:                cfg.brokers,
		Dialer:                 s.dialer,
		Topics:                 []string{topic},
		HeartbeatInterval:      cfg.heartbeatInterval,
		PartitionWatchInterval: cfg.partitionWatchInterval,
		WatchPartitionChanges:  true,
		SessionTimeout:         cfg.sessionTimeout,
		RebalanceTimeout:       cfg.rebalanceTimeout,
		JoinGroupBackoff:       cfg.joinGroupBackoff,
		StartOffset:            start,
		Logger:                 kafkaLog,
		ErrorLogger:            kafkaLog,
		Timeout:                cfg.requestTimeout,
	})
	if err != nil {
		return nil, fail("subscribe", topic, group, "", err)
	}
	s.cg = cg

	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		_ = cg.Close()
		return nil, fail("subscribe", topic, group, "", ErrClosed)
	}
	d.subs[s] = struct{}{}
	d.mu.Unlock()
	go s.run()
	return s, nil
}

// subscription is one member of a consumer group. Its goroutines: run
// (takes generations from kafka-go), and per generation one fetcher per
// assigned partition plus one manager that commits.
type subscription struct {
	d      *Driver
	topic  string
	group  string
	log    *slog.Logger
	cg     *kafkago.ConsumerGroup
	dialer *kafkago.Dialer
	conns  *connTracker

	chunks  chan *chunk
	errs    chan error // capacity 1: an error for Fetch to return
	pending *chunk     // partly handed out; owned by Fetch

	closing   chan struct{} // closed when Close starts
	abandon   atomic.Bool   // Close's context had ended: no final commit
	runDone   chan struct{}
	workers   sync.WaitGroup // every function given to a generation
	closeOnce sync.Once
	closeErr  error

	mu       sync.Mutex
	flushErr error // the final commit made while closing

	background errsink.Sink // ReportErrorsTo's function; before it, the log

	limit int // uncommitted messages per partition
	// holder marks the delay mover's subscriptions, which hold deliveries
	// until their time: a revocation does not wait for them (what is not
	// acknowledged goes to the next owner, as after a revoke timeout).
	holder   bool
	current  atomic.Pointer[generation] // the generation running; nil while joining
	assigned atomic.Uint64              // generations begun (herald.Partitioned)
}

// generation is one kafka-go generation: the partitions this member owns
// until the next rebalance.
type generation struct {
	s       *subscription
	gen     *kafkago.Generation
	parts   []*partition
	started time.Time

	mu        sync.Mutex  // orders hand-outs before the end of the generation
	ending    atomic.Bool // set under mu; no more hand-outs
	handedOut atomic.Int64
	drained   chan struct{} // capacity 1: handedOut reached 0 while ending
}

func (s *subscription) run() {
	defer close(s.runDone)
	for {
		gen, err := s.cg.Next(context.Background())
		switch {
		case err == nil:
			s.begin(gen)
		case errors.Is(err, kafkago.ErrGroupClosed):
			return
		case errors.Is(err, kafkago.RebalanceInProgress):
			// Another member started a rebalance while this one joined;
			// kafka-go joins again at once.
		default:
			s.log.Warn("kafkadriver: joining the group failed; retrying", "error", err)
			s.report(fail("join group", s.topic, s.group, "", err))
		}
	}
}

// begin starts a fetcher per assigned partition and the manager. kafka-go
// ends the generation when any of them returns, and waits for all of them
// before it joins the next one.
func (s *subscription) begin(gen *kafkago.Generation) {
	s.assigned.Add(1)
	g := &generation{s: s, gen: gen, started: time.Now(), drained: make(chan struct{}, 1)}
	for _, a := range gen.Assignments[s.topic] {
		p := &partition{
			g:         g,
			id:        a.ID,
			start:     a.Offset,
			hist:      s.d.history.get(s.group, s.topic, a.ID),
			next:      -1,
			committed: a.Offset,
			room:      make(chan struct{}, 1),
		}
		p.lag.init()
		g.parts = append(g.parts, p)
	}
	s.current.Store(g)
	s.log.Debug("kafkadriver: generation started", "generation", gen.ID, "partitions", len(g.parts))
	for _, p := range g.parts {
		s.start(gen, func(ctx context.Context) { s.consume(ctx, p) })
	}
	s.start(gen, func(ctx context.Context) { s.manage(ctx, g) })
}

// start runs fn as part of gen. kafka-go runs fn untracked when gen has
// already ended, so the subscription counts them itself for Close.
func (s *subscription) start(gen *kafkago.Generation, fn func(context.Context)) {
	s.workers.Add(1)
	gen.Start(func(ctx context.Context) {
		defer s.workers.Done()
		fn(ctx)
	})
}

func (s *subscription) report(err error) {
	select {
	case s.errs <- err:
	default: // one unreturned error is enough to show the trouble
	}
}

// manage commits on the interval and, when the generation ends, lets
// in-flight deliveries finish (bounded by the revoke timeout) and commits
// for the last time in this generation.
func (s *subscription) manage(ctx context.Context, g *generation) {
	t := time.NewTicker(s.d.cfg.commitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := s.commit(g, false); err != nil {
				s.log.Warn("kafkadriver: commit failed", "error", err)
				s.report(fail("commit", s.topic, s.group, "", err))
			}
		case <-ctx.Done():
			s.endGeneration(g)
			s.pauseIfTopicMissing(g)
			return
		}
	}
}

// pauseIfTopicMissing works around kafka-go ending every generation at
// once while the topic does not exist (its partition watcher gives up when
// its first look finds no topic), which would make the member rejoin in a
// tight loop. A generation without partitions that ended early waits out
// the watch interval, unless the topic exists by now.
func (s *subscription) pauseIfTopicMissing(g *generation) {
	wait := s.d.cfg.partitionWatchInterval - time.Since(g.started)
	if len(g.parts) > 0 || wait <= 0 || closed(s.closing) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.d.cfg.requestTimeout)
	exists := s.d.topicExists(ctx, s.topic)
	cancel()
	if exists {
		return
	}
	s.log.Debug("kafkadriver: the topic does not exist; waiting before joining again", "wait", wait)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.closing:
	}
}

func (s *subscription) endGeneration(g *generation) {
	s.current.CompareAndSwap(g, nil)
	g.mu.Lock()
	g.ending.Store(true)
	g.mu.Unlock()
	if !closed(s.closing) && g.handedOut.Load() > 0 && !s.holder {
		timeout := time.NewTimer(s.d.cfg.revokeTimeout)
	drain:
		for g.handedOut.Load() > 0 {
			select {
			case <-g.drained:
			case <-timeout.C:
				break drain
			case <-s.closing:
				break drain
			}
		}
		timeout.Stop()
	}
	var err error
	if s.abandon.Load() {
		for _, p := range g.parts {
			p.mu.Lock()
			p.revoked = true
			p.mu.Unlock()
		}
	} else {
		err = s.commit(g, true)
	}
	closing := closed(s.closing)
	if n := g.handedOut.Load(); n > 0 && !closing {
		s.log.Warn("kafkadriver: partitions revoked with deliveries in flight; their messages go to the next owner again",
			"generation", g.gen.ID, "deliveries", n)
	}
	switch {
	case closing && err != nil && groupMovedOn(err):
		// The group rebalanced without this member: the partitions' new
		// owners receive what was not committed, as after a revoked Ack.
		s.reportBackground(fail("commit", s.topic, s.group,
			"at close not taken, the group moved on without this member (its new owners receive the uncommitted messages)", err))
	case closing:
		if err != nil {
			err = fail("commit", s.topic, s.group, "at close", err)
		}
		s.mu.Lock()
		s.flushErr = err
		s.mu.Unlock()
	case err != nil:
		s.reportBackground(fail("commit", s.topic, s.group,
			"at the end of a generation (uncommitted messages are delivered again)", err))
	}
	s.log.Debug("kafkadriver: generation ended", "generation", g.gen.ID)
}

// groupMovedOn reports whether a commit failed only because the group has
// a generation this member is not part of: the member was dropped or the
// group rebalanced (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION,
// REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID), or kafka-go closed the
// generation's coordinator connection (it does after any request on it
// fails, a heartbeat timing out on a loaded machine say), which ends the
// generation.
func groupMovedOn(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return true
	}
	for _, code := range []kafkago.Error{kafkago.UnknownMemberId, kafkago.IllegalGeneration, kafkago.RebalanceInProgress, kafkago.FencedInstanceID} {
		if errors.Is(err, code) {
			return true
		}
	}
	return false
}

// ReportErrorsTo sends the errors the subscription meets outside Fetch
// and Ack (a failed commit at the end of a generation, a final commit the
// group no longer takes) to report instead of the driver's log
// (herald.ErrorReporter).
func (s *subscription) ReportErrorsTo(report func(error)) { s.background.Set(report) }

func (s *subscription) reportBackground(err error) {
	s.background.Report(err, func(err error) { s.log.Warn("kafkadriver: background error", "error", err) })
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// commit commits, for each partition of g, the offset of its lowest
// unacknowledged message (or the next offset to fetch when all are
// acknowledged). final marks the partitions revoked, in the same critical
// section, so no later Ack is taken for them. Its error names the offsets;
// the caller makes it a DriverError that says when the commit was made.
func (s *subscription) commit(g *generation, final bool) error {
	var offsets map[int]int64
	for _, p := range g.parts {
		p.mu.Lock()
		off, ok := p.commitOffset()
		if final {
			p.revoked = true
		}
		if ok && off != p.committed {
			if offsets == nil {
				offsets = make(map[int]int64)
			}
			offsets[p.id] = off
		}
		p.mu.Unlock()
	}
	if len(offsets) == 0 {
		return nil
	}
	if err := g.gen.CommitOffsets(map[string]map[int]int64{s.topic: offsets}); err != nil {
		return fmt.Errorf("offsets (partition: offset) %v: %w", offsets, err)
	}
	for _, p := range g.parts {
		if off, ok := offsets[p.id]; ok {
			p.mu.Lock()
			p.committed = off
			p.mu.Unlock()
			p.hist.prune(off)
		}
	}
	return nil
}

// Fetch returns deliveries from the partitions this member owns, blocking
// until there is at least one. Errors of the group or of fetching are
// returned only when no delivery is waiting.
func (s *subscription) Fetch(ctx context.Context, dst []herald.Delivery) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if len(dst) == 0 {
		return 0, nil
	}
	for {
		if closed(s.closing) {
			return 0, fail("fetch", s.topic, s.group, "", ErrClosed)
		}
		if n := s.take(dst); n > 0 {
			return n, nil
		}
		select {
		case c := <-s.chunks:
			s.pending = c
		case err := <-s.errs:
			return 0, err
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.closing:
		}
	}
}

// FetchesLocally reports that Fetch hands out what the partitions'
// readers fetched in the background, and Ack only marks an offset
// (herald.LocalFetcher): a subscription with one worker runs its handler
// on the goroutine that fetches.
func (s *subscription) FetchesLocally() bool { return true }

// take fills dst from the waiting chunks without blocking.
func (s *subscription) take(dst []herald.Delivery) int {
	n := 0
	for n < len(dst) {
		c := s.pending
		if c == nil {
			select {
			case c = <-s.chunks:
			default:
				return n
			}
		}
		n += c.handOut(dst[n:])
		if c.next < len(c.msgs) {
			s.pending = c
		} else {
			s.pending = nil
		}
	}
	return n
}

// Ack marks the delivery's offset done; the next commit of its partition
// moves past it once every lower offset is done too. It returns an error
// wrapping ErrRevoked when the partition has been revoked since.
func (s *subscription) Ack(ctx context.Context, d herald.Delivery) error {
	p, ok := d.Ref.(*partition)
	if !ok || p.g.s != s {
		return fail("ack", s.topic, s.group, "", errors.New("the delivery is not from this subscription"))
	}
	first, revoked := p.ack(d.Seq, s.limit)
	if !first {
		return nil
	}
	g := p.g
	if g.handedOut.Add(-1) == 0 && g.ending.Load() {
		select {
		case g.drained <- struct{}{}:
		default:
		}
	}
	if revoked {
		return fail("ack", s.topic, s.group, fmt.Sprintf("message %s partition %d", d.Message.ID, p.id), ErrRevoked)
	}
	return nil
}

// Position returns d's partition and offset (herald.Partitioned); -1 for
// a delivery of another subscription.
func (s *subscription) Position(d herald.Delivery) (int, uint64) {
	p, ok := d.Ref.(*partition)
	if !ok || p.g.s != s {
		return -1, 0
	}
	off, ok := p.offset(d.Seq)
	if !ok {
		return -1, 0
	}
	return p.id, uint64(off)
}

// Assignments counts the generations this member has begun: each one
// assigns its partitions anew (herald.Partitioned).
func (s *subscription) Assignments() uint64 { return s.assigned.Load() }

// Revoked reports whether d's partition was revoked since d was handed
// out (herald.Revoker): the scheduler then skips d if it has not started,
// and the partition's new owner handles it.
func (s *subscription) Revoked(d herald.Delivery) bool {
	p, ok := d.Ref.(*partition)
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.revoked
}

// Release takes back the delivery counts of deliveries the scheduler
// fetched and never started (herald.Releaser), so that their next
// delivery, here or to another member of this process, counts as the
// same attempt.
func (s *subscription) Release(ds []herald.Delivery) {
	for _, d := range ds {
		p, ok := d.Ref.(*partition)
		if !ok || p.g.s != s {
			continue
		}
		p.mu.Lock()
		off, live := int64(0), d.Seq >= p.head && d.Seq < p.tail
		if live {
			i := d.Seq & uint64(len(p.offs)-1)
			off, live = p.offs[i], !p.acked[i]
		}
		p.mu.Unlock()
		if live {
			p.hist.mu.Lock()
			p.hist.release(off)
			p.hist.mu.Unlock()
		}
	}
}

// Close commits the acknowledged offsets, leaves the group and stops every
// goroutine of the subscription, bounded by ctx. Unacknowledged messages go
// to the partition's next owner. When ctx has already ended, or ends before
// the group is left, Close skips the commit, drops the connections and
// returns an error wrapping ctx.Err(): the group sees a crashed member,
// which it removes after the session timeout.
func (s *subscription) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		if err := ctx.Err(); err != nil {
			s.abandon.Store(true)
			s.conns.closeAll()
			s.closeErr = fail("close", s.topic, s.group, "without committing", err)
		}
		close(s.closing)
		done := make(chan struct{})
		go func() {
			_ = s.cg.Close()
			<-s.runDone
			s.workers.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			s.abandon.Store(true)
			s.conns.closeAll()
			<-done
			if s.closeErr == nil {
				s.closeErr = fail("close", s.topic, s.group, "", ctx.Err())
			}
		}
		s.conns.closeAll()
		s.mu.Lock()
		s.closeErr = errors.Join(s.closeErr, s.flushErr)
		s.mu.Unlock()
		s.d.forget(s)
	})
	return s.closeErr
}
