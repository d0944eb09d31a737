package sqldriver

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/internal/errsink"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// subscription is one member of a group on one topic. It owns some of
// the topic's partitions through leases in the offsets table (see
// members.go), reads the rows past each owned partition's position, and
// commits the position as deliveries are acknowledged.
type subscription struct {
	d            *Driver
	topic, group string
	member       string
	parts        int
	pump         *pump
	sink         errsink.Sink
	wakeC        chan struct{}

	mu       sync.Mutex
	owned    map[int]*partState
	buf      []herald.Delivery // read, not handed out yet
	readHead int64             // the pump's head when the last read caught up
	dirty    bool              // read even if the head did not move

	beats  int // heartbeats so far (the keep goroutine's)
	closed atomic.Bool
	cancel context.CancelFunc
	done   chan struct{}
}

var (
	_ herald.Subscription  = (*subscription)(nil)
	_ herald.Revoker       = (*subscription)(nil)
	_ herald.LagReporter   = (*subscription)(nil)
	_ herald.ErrorReporter = (*subscription)(nil)
)

// partState is this member's hold on one partition, from a claim until
// it is released or lost. A delivery's Ref points at it, so a delivery of
// an earlier hold is recognised as revoked after the partition comes back.
type partState struct {
	part      int
	committed int64       // the position last written to the offsets table
	acked     int64       // every fetched row at or below it is acknowledged
	next      int64       // the newest position read
	fifo      []entry     // read and not yet acknowledged in order, oldest first
	running   int         // deliveries started (Revoked said no) and not acknowledged
	revoked   atomic.Bool // no new deliveries start (handed over, lost or closed)
	lost      bool        // another member may own it: acknowledgments no longer count
}

type entry struct {
	pos   int64
	acked bool
}

// Subscribe joins group on topic. The first Subscribe of a group creates
// its positions (at the start WithStartPosition names); the member claims
// its share of the partitions before Subscribe returns.
func (d *Driver) Subscribe(ctx context.Context, topic, group string) (herald.Subscription, error) {
	if err := herald.ValidateName("topic", topic); err != nil {
		return nil, fail("subscribe", topic, group, "", err)
	}
	if err := herald.ValidateName("group", group); err != nil {
		return nil, fail("subscribe", topic, group, "", err)
	}
	if d.closed.Load() {
		return nil, fail("subscribe", topic, group, "", herald.ErrClosed)
	}
	parts, err := d.partitions(ctx)
	if err != nil {
		return nil, fail("subscribe", topic, group, "", err)
	}
	if err := d.createGroup(ctx, topic, group, parts); err != nil {
		return nil, fail("subscribe", topic, group, "create the group's positions", err)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	s := &subscription{
		d: d, topic: topic, group: group, member: hex.EncodeToString(id[:]), parts: parts,
		wakeC: make(chan struct{}, 1), owned: make(map[int]*partState), dirty: true,
		done: make(chan struct{}),
	}
	s.pump = d.join(s)
	if err := s.heartbeat(ctx); err != nil {
		d.leave(s)
		return nil, fail("subscribe", topic, group, "join", err)
	}
	kctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.keep(kctx)
	return s, nil
}

// createGroup inserts the group's positions for every partition unless
// they exist.
func (d *Driver) createGroup(ctx context.Context, topic, group string, parts int) error {
	start := int64(0)
	if d.cfg.start == herald.StartLatest {
		var err error
		if d.n.d == sqlcore.SQLite {
			start, err = d.maxID(ctx)
		} else {
			err = d.db.QueryRowContext(ctx, "SELECT last_seq FROM "+d.n.meta+" WHERE id = 1").Scan(&start)
		}
		if err != nil {
			return err
		}
	}
	var b strings.Builder
	head, tail := d.n.insertIgnore()
	b.WriteString(head)
	b.WriteString(d.n.offsets + " (grp, topic, part, pos) VALUES ")
	args := make([]any, 0, 4*parts)
	for p := range parts {
		if p > 0 {
			b.WriteByte(',')
		}
		i := len(args)
		fmt.Fprintf(&b, "(%s, %s, %s, %s)", d.n.ph(i+1), d.n.ph(i+2), d.n.ph(i+3), d.n.ph(i+4))
		args = append(args, group, topic, p, start)
	}
	b.WriteString(tail)
	_, err := d.db.ExecContext(ctx, b.String(), args...)
	return err
}

func (s *subscription) poke() {
	select {
	case s.wakeC <- struct{}{}:
	default:
	}
}

// ReportErrorsTo implements herald.ErrorReporter.
func (s *subscription) ReportErrorsTo(report func(error)) { s.sink.Set(report) }

func (s *subscription) report(err error) { s.sink.Report(err, s.d.cfg.onError) }

// safetyRead is how many maximum poll intervals an idle member waits for
// the pump before it reads anyway: the pump's head is what wakes it, the
// read is a safety net.
const safetyRead = 10

// Fetch returns rows of the owned partitions past what this member has
// read, oldest first per partition; it waits for the pump to see new rows.
func (s *subscription) Fetch(ctx context.Context, dst []herald.Delivery) (int, error) {
	for {
		if s.closed.Load() {
			return 0, fail("fetch", s.topic, s.group, "", herald.ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if n := s.take(dst); n > 0 {
			return n, nil
		}
		head := s.pump.head.Load()
		s.mu.Lock()
		read := s.dirty || head != s.readHead
		s.dirty = false
		s.mu.Unlock()
		if read {
			if err := s.read(ctx, len(dst), head); err != nil {
				if err := sqlcore.CtxErr(ctx); err != nil {
					return 0, err
				}
				s.mu.Lock()
				s.dirty = true
				s.mu.Unlock()
				return 0, fail("fetch", s.topic, s.group, "", err)
			}
			continue
		}
		t := time.NewTimer(safetyRead * s.d.cfg.maxPoll)
		select {
		case <-ctx.Done():
		case <-s.wakeC:
		case <-t.C:
			s.mu.Lock()
			s.dirty = true // a safety net under the pump
			s.mu.Unlock()
		}
		t.Stop()
	}
}

// take hands out buffered deliveries of partitions still held.
func (s *subscription) take(dst []herald.Delivery) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, i := 0, 0
	for ; i < len(s.buf) && n < len(dst); i++ {
		if s.buf[i].Ref.(*partState).revoked.Load() {
			continue
		}
		dst[n] = s.buf[i]
		n++
	}
	s.buf = s.buf[:copy(s.buf, s.buf[i:])]
	return n
}

// read queries every owned partition past its read position in one
// statement (a UNION ALL of per-partition index ranges, so the cost does
// not grow with the backlog) and buffers what it finds.
func (s *subscription) read(ctx context.Context, want int, head int64) error {
	s.mu.Lock()
	states := make([]*partState, 0, len(s.owned))
	for _, st := range s.owned {
		states = append(states, st)
	}
	slices.SortFunc(states, func(a, b *partState) int { return a.part - b.part })
	from := make([]int64, len(states))
	for i, st := range states {
		from[i] = st.next
	}
	s.mu.Unlock()
	if len(states) == 0 {
		s.mu.Lock()
		s.readHead = head
		s.mu.Unlock()
		return nil
	}
	limit := max(want/len(states), 32)
	query, args := s.readQuery(states, from, limit)
	rs, err := s.d.db.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	got := make(map[int]int, len(states))
	byPart := make(map[int]*partState, len(states))
	for _, st := range states {
		byPart[st.part] = st
	}
	var read []herald.Delivery
	for rs.Next() {
		var pos int64
		var part int
		m, err := scanMessage(rs, s.topic, &pos, &part)
		if err != nil {
			return err
		}
		got[part]++
		read = append(read, herald.Delivery{Message: m, Ref: byPart[part], Seq: uint64(pos)})
	}
	if err := rs.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	more := false
	for _, dv := range read {
		st := dv.Ref.(*partState)
		pos := int64(dv.Seq)
		if s.owned[st.part] != st || pos <= st.next {
			continue // released meanwhile, or read twice
		}
		st.next = pos
		st.fifo = append(st.fifo, entry{pos: pos})
		s.buf = append(s.buf, dv)
	}
	for _, st := range states {
		if got[st.part] >= limit {
			more = true
		}
	}
	if more {
		s.dirty = true
	} else {
		s.readHead = head
	}
	return nil
}

func (s *subscription) readQuery(states []*partState, from []int64, limit int) (string, []any) {
	n := s.d.n
	var b strings.Builder
	args := make([]any, 0, 3*len(states))
	for i, st := range states {
		if i > 0 {
			b.WriteString(" UNION ALL ")
		}
		j := len(args)
		fmt.Fprintf(&b, "SELECT * FROM (SELECT %[1]s, part, "+messageColumns+" FROM %[2]s WHERE topic = %[3]s AND part = %[4]s AND %[1]s > %[5]s ORDER BY %[1]s LIMIT %[6]d) AS p%[7]d",
			n.pos, n.log, n.ph(j+1), n.ph(j+2), n.ph(j+3), limit, i)
		args = append(args, s.topic, st.part, from[i])
	}
	return b.String(), args
}

// Revoked implements herald.Revoker: a delivery of a partition this
// member no longer holds is not run. A delivery that is not revoked
// counts as started until it is acknowledged, so a hand-over waits for it.
func (s *subscription) Revoked(dv herald.Delivery) bool {
	st := dv.Ref.(*partState)
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.revoked.Load() {
		return true
	}
	st.running++
	return false
}

// Ack marks the delivery done; the partition's position advances over
// every acknowledged row at its front and is committed by the next flush.
func (s *subscription) Ack(_ context.Context, dv herald.Delivery) error {
	st, ok := dv.Ref.(*partState)
	if !ok {
		return fail("ack", s.topic, s.group, "", errors.New("not a delivery of this driver"))
	}
	pos := int64(dv.Seq)
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.running > 0 {
		st.running--
	}
	if st.lost {
		return fail("ack", s.topic, s.group, fmt.Sprintf("partition %d position %d", st.part, pos), ErrNotOwner)
	}
	i, found := slices.BinarySearchFunc(st.fifo, pos, func(e entry, p int64) int { return cmpInt(e.pos, p) })
	if !found {
		return nil // acknowledged already
	}
	st.fifo[i].acked = true
	k := 0
	for k < len(st.fifo) && st.fifo[k].acked {
		st.acked = st.fifo[k].pos
		k++
	}
	if k > 0 {
		st.fifo = st.fifo[:copy(st.fifo, st.fifo[k:])]
	}
	return nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Lag counts the rows of the owned partitions past what this member has
// acknowledged (one COUNT over the partitions' index ranges). Rows not
// sequenced yet are not counted.
func (s *subscription) Lag(ctx context.Context) (int64, error) {
	if s.closed.Load() {
		return 0, fail("lag", s.topic, s.group, "", herald.ErrClosed)
	}
	s.mu.Lock()
	var conds []string
	var args []any
	n := s.d.n
	args = append(args, s.topic)
	for _, st := range s.owned {
		conds = append(conds, fmt.Sprintf("(part = %s AND %s > %s)", n.ph(len(args)+1), n.pos, n.ph(len(args)+2)))
		args = append(args, st.part, st.acked)
	}
	s.mu.Unlock()
	if len(conds) == 0 {
		return 0, nil
	}
	var lag int64
	err := s.d.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+n.log+" WHERE topic = "+n.ph(1)+" AND ("+strings.Join(conds, " OR ")+")", args...).Scan(&lag)
	if err != nil {
		return 0, fail("lag", s.topic, s.group, "", err)
	}
	return lag, nil
}

// Close commits what was acknowledged, gives the partitions back and
// leaves the group; what was not acknowledged goes to the next owner.
func (s *subscription) Close(ctx context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	defer s.d.leave(s)
	s.mu.Lock()
	states := make([]*partState, 0, len(s.owned))
	for _, st := range s.owned {
		st.revoked.Store(true)
		states = append(states, st)
	}
	clear(s.owned)
	s.buf = nil
	s.mu.Unlock()
	var errs []error
	for _, st := range states {
		if err := s.giveBack(ctx, st); err != nil {
			errs = append(errs, err)
		}
	}
	n := s.d.n
	if _, err := s.d.db.ExecContext(ctx, "DELETE FROM "+n.members+" WHERE grp = "+n.ph(1)+" AND topic = "+n.ph(2)+" AND member = "+n.ph(3), s.group, s.topic, s.member); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fail("close", s.topic, s.group, "", err)
	}
	return nil
}

// giveBack writes the partition's acknowledged position and clears its
// owner, if this member still owns it.
func (s *subscription) giveBack(ctx context.Context, st *partState) error {
	s.mu.Lock()
	pos := max(st.acked, st.committed)
	s.mu.Unlock()
	n := s.d.n
	_, err := s.d.db.ExecContext(ctx, "UPDATE "+n.offsets+" SET pos = "+n.ph(1)+", owner = NULL, lease_until = 0 WHERE grp = "+n.ph(2)+" AND topic = "+n.ph(3)+" AND part = "+n.ph(4)+" AND owner = "+n.ph(5),
		pos, s.group, s.topic, st.part, s.member)
	return err
}

var errLost = errors.New("lease lost")

// commit writes the acknowledged positions that moved, in one statement
// fenced by the owner; a partition whose row no longer names this member
// was lost and is revoked.
func (s *subscription) commit(ctx context.Context) error {
	type c struct {
		st  *partState
		pos int64
	}
	var todo []c
	s.mu.Lock()
	for _, st := range s.owned {
		if st.acked > st.committed {
			todo = append(todo, c{st, st.acked})
		}
	}
	s.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	n := s.d.n
	var b strings.Builder
	args := make([]any, 0, 3*len(todo)+3)
	b.WriteString("UPDATE " + n.offsets + " SET pos = CASE part")
	for _, x := range todo {
		fmt.Fprintf(&b, " WHEN %s THEN %s", n.ph(len(args)+1), n.ph(len(args)+2))
		args = append(args, x.st.part, x.pos)
	}
	i := len(args)
	fmt.Fprintf(&b, " ELSE pos END WHERE grp = %s AND topic = %s AND owner = %s AND part IN (", n.ph(i+1), n.ph(i+2), n.ph(i+3))
	args = append(args, s.group, s.topic, s.member)
	for j, x := range todo {
		if j > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n.ph(len(args) + 1))
		args = append(args, x.st.part)
	}
	b.WriteByte(')')
	var written []int64
	if n.d == MySQL {
		res, err := s.d.db.ExecContext(ctx, b.String(), args...)
		if err != nil {
			return err
		}
		if k, err := res.RowsAffected(); err == nil && int(k) == len(todo) {
			for _, x := range todo {
				written = append(written, int64(x.st.part))
			}
		} else if written, err = s.ownedInTable(ctx); err != nil {
			return err
		}
	} else {
		rs, err := s.d.db.QueryContext(ctx, b.String()+" RETURNING part", args...)
		if err != nil {
			return err
		}
		if written, err = scanInts(rs); err != nil {
			return err
		}
	}
	for _, x := range todo {
		if !slices.Contains(written, int64(x.st.part)) {
			s.lose(x.st)
			s.report(fail("commit", s.topic, s.group, fmt.Sprintf("partition %d", x.st.part), errLost))
			continue
		}
		s.mu.Lock()
		x.st.committed = max(x.st.committed, x.pos)
		s.mu.Unlock()
	}
	return nil
}

// ownedInTable lists the partitions the offsets table gives this member.
func (s *subscription) ownedInTable(ctx context.Context) ([]int64, error) {
	n := s.d.n
	rs, err := s.d.db.QueryContext(ctx, "SELECT part FROM "+n.offsets+" WHERE grp = "+n.ph(1)+" AND topic = "+n.ph(2)+" AND owner = "+n.ph(3), s.group, s.topic, s.member)
	if err != nil {
		return nil, err
	}
	return scanInts(rs)
}

// lose forgets a partition another member took over.
func (s *subscription) lose(st *partState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.revoked.Store(true)
	st.lost = true
	if s.owned[st.part] == st {
		delete(s.owned, st.part)
	}
}

// scanInt64s reads a one-column result.
func scanInts(rs *sql.Rows) ([]int64, error) {
	defer rs.Close()
	var out []int64
	for rs.Next() {
		var v int64
		if err := rs.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rs.Err()
}

// messageColumns are the columns scanMessage reads, after the caller's.
const messageColumns = "message_id, msg_key, headers, content_type, payload, payload IS NULL, created_at"

// HeaderBadHeaders is set on a message whose headers column is not a JSON
// object of strings (a row written by hand): its value is the parse error,
// and the other headers are lost. Such a message is delivered like any
// other, so a handler (or the dead-letter middleware) decides.
const HeaderBadHeaders = "herald-sql-bad-headers"

// scanMessage scans a row of lead columns and then messageColumns into a
// message of topic.
func scanMessage(rs *sql.Rows, topic string, lead ...any) (*herald.Message, error) {
	m := &herald.Message{Topic: topic}
	var headers []byte
	var payloadNull bool
	dest := append(lead, &m.ID, &m.Key, &headers, &m.ContentType, &m.Data, &payloadNull, sqlcore.TimeDest{T: &m.Time})
	if err := rs.Scan(dest...); err != nil {
		return nil, err
	}
	if m.Data == nil && !payloadNull {
		m.Data = []byte{}
	}
	if len(headers) > 0 {
		h, err := sqlcore.DecodeHeaders(headers)
		if err != nil {
			h = herald.Headers{HeaderBadHeaders: err.Error()}
		}
		m.Headers = h
	}
	return m, nil
}
