package sqldriver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/sql/internal/sqlcore"
)

// stampBatch bounds the rows one sequencer round stamps; maxRuns bounds
// the UPDATE statements it spends on them (one per run of consecutive
// ids).
const (
	stampBatch = 5000
	maxRuns    = 64
)

// pump is a driver's one background loop while it has subscriptions: it
// sequences committed rows (the sequencer, see the package doc), learns
// the log's head, wakes the subscriptions when the head moves, and runs
// retention. It waits on PostgreSQL notifications, on writes of this
// process, and on an adaptive poll.
type pump struct {
	d      *Driver
	head   atomic.Int64 // the newest position known to be readable
	pokeC  chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	// moverDone is closed when the mover of delayed rows, which runs
	// beside the pump, has stopped.
	moverDone chan struct{}
}

func startPump(d *Driver) *pump {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pump{d: d, pokeC: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}), moverDone: make(chan struct{})}
	go p.run(ctx)
	go d.runMover(ctx, p.moverDone)
	return p
}

// poke wakes the pump (rows were committed in this process). Safe on nil.
func (p *pump) poke() {
	if p == nil {
		return
	}
	select {
	case p.pokeC <- struct{}{}:
	default:
	}
}

// stop ends the loop and waits for it. Safe on nil and twice.
func (p *pump) stop() {
	if p == nil {
		return
	}
	p.once.Do(p.cancel)
	<-p.done
	<-p.moverDone
}

func (p *pump) run(ctx context.Context) {
	defer close(p.done)
	d := p.d
	var l *sqlcore.Listener
	defer func() { l.Close() }()
	var listenTried time.Time
	lastRows := time.Now() // when a round last found rows, or a write was poked
	errs := 0
	nextPurge := time.Now().Add(d.purgeEvery())
	for ctx.Err() == nil {
		if d.cfg.notify && !l.Alive() && time.Since(listenTried) >= d.cfg.maxPoll {
			listenTried = time.Now()
			l.Close()
			var err error
			if l, err = sqlcore.Listen(ctx, d.db, d.n.written, d.n.sequenced); err != nil {
				l = nil
				if ctx.Err() == nil {
					d.report(fail("listen", "", "", "", err))
				}
			}
		}
		more, err := p.round(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			d.report(fail("sequence", "", "", "", err))
			errs++
		case more:
			lastRows, errs = time.Now(), 0
			continue
		default:
			errs = 0
		}
		if time.Now().After(nextPurge) {
			if err := d.purge(ctx); err != nil && ctx.Err() == nil {
				d.report(fail("retention", "", "", "", err))
			}
			nextPurge = time.Now().Add(d.purgeEvery())
		}
		wait := d.pollWait(time.Since(lastRows))
		if errs > 0 {
			wait = max(wait, backoff.Exponential(10*time.Millisecond, d.cfg.maxPoll, errs-1))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-p.pokeC:
			// A write of this process: committed, or about to commit in
			// its caller's transaction. Poll briskly for a while.
			lastRows = time.Now()
		case <-l.Wake(d.n.written):
		case <-l.Wake(d.n.sequenced):
		case <-t.C:
		}
		t.Stop()
	}
}

// pollWait is how long the pump waits for a wake-up before it polls: an
// eighth of the time since rows last arrived, within the poll bounds. So
// a steady stream is polled about eight times per gap between its rows
// (the latency stays a fraction of the gap), and an idle log once per
// maximum interval.
func (d *Driver) pollWait(sinceRows time.Duration) time.Duration {
	return min(max(sinceRows/8, d.cfg.minPoll), d.cfg.maxPoll)
}

// round sequences what it can and publishes the head; more reports that
// a full batch was stamped (so there may be more waiting) or the head
// moved (rows arrived: poll again soon).
func (p *pump) round(ctx context.Context) (more bool, err error) {
	var head int64
	full := false
	if p.d.n.d == sqlcore.SQLite {
		head, err = p.d.maxID(ctx)
	} else {
		head, full, err = p.d.sequence(ctx)
	}
	if err != nil {
		return false, err
	}
	if head > p.head.Load() {
		p.head.Store(head)
		p.d.wakeSubs()
		return true, nil
	}
	return full, nil
}

func (d *Driver) report(err error) {
	d.mu.Lock()
	var s *subscription
	for s = range d.subs {
		break
	}
	d.mu.Unlock()
	if s != nil {
		s.sink.Report(err, d.cfg.onError)
		return
	}
	d.cfg.onError(err)
}

func (d *Driver) wakeSubs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.subs {
		s.poke()
	}
}

// maxID is SQLite's head: ids are positions there.
func (d *Driver) maxID(ctx context.Context) (int64, error) {
	var head sql.NullInt64
	err := d.db.QueryRowContext(ctx, "SELECT MAX(id) FROM "+d.n.log).Scan(&head)
	return head.Int64, err
}

// sequence runs one round of the sequencer (PostgreSQL, MySQL): under the
// meta row's lock it stamps the committed rows that have no seq yet, in
// id order, with the positions after the last one stamped. It returns the
// head, and whether it stamped a full batch. When another process holds
// the lock it only reads the head.
func (d *Driver) sequence(ctx context.Context) (head int64, full bool, err error) {
	// One statement when there is nothing to stamp (the idle round).
	var waiting bool
	if err := d.db.QueryRowContext(ctx, "SELECT last_seq, EXISTS (SELECT 1 FROM "+d.n.log+" WHERE seq IS NULL) FROM "+d.n.meta+" WHERE id = 1").Scan(&head, &waiting); err != nil || !waiting {
		return head, false, err
	}
	tx, err := d.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return 0, false, err
	}
	defer func() { _ = tx.Rollback() }()
	var base int64
	err = tx.QueryRowContext(ctx, "SELECT last_seq FROM "+d.n.meta+" WHERE id = 1 FOR UPDATE SKIP LOCKED").Scan(&base)
	if errors.Is(err, sql.ErrNoRows) {
		return head, false, nil // another process is stamping
	}
	if err != nil {
		return 0, false, err
	}
	if d.n.d == sqlcore.Postgres {
		return d.stampPostgres(ctx, tx, base)
	}
	ids, err := d.unstamped(ctx, tx)
	if err != nil || len(ids) == 0 {
		return base, false, err
	}
	stamped, err := d.stamp(ctx, tx, base, ids)
	if err != nil {
		return 0, false, err
	}
	head = base + int64(stamped)
	if _, err := tx.ExecContext(ctx, "UPDATE "+d.n.meta+" SET last_seq = "+d.n.ph(1)+" WHERE id = 1", head); err != nil {
		return 0, false, err
	}
	if d.cfg.notify {
		if _, err := tx.ExecContext(ctx, "SELECT pg_notify("+sqlcore.QuoteLiteral(d.n.sequenced)+", '')"); err != nil {
			return 0, false, err
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, false, err
	}
	return head, len(ids) == stampBatch, nil
}

// stampPostgres is a round's work on PostgreSQL in one statement, inside
// the transaction that holds the meta row's lock: this statement's
// snapshot is taken after the lock, so it sees every earlier round's
// stamps (a statement that took the lock itself would not).
func (d *Driver) stampPostgres(ctx context.Context, tx *sql.Tx, base int64) (int64, bool, error) {
	n := d.n
	notify := ""
	if d.cfg.notify {
		notify = " LEFT JOIN LATERAL (SELECT pg_notify(" + sqlcore.QuoteLiteral(n.sequenced) + ", '') WHERE m.last_seq > $1) x ON true"
	}
	query := "WITH ids AS (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM " + n.log + " WHERE seq IS NULL ORDER BY id LIMIT " + fmt.Sprint(stampBatch) + "), " +
		"upd AS (UPDATE " + n.log + " l SET seq = $1 + ids.rn FROM ids WHERE l.id = ids.id RETURNING 1), " +
		"m AS (UPDATE " + n.meta + " SET last_seq = $1 + (SELECT COUNT(*) FROM upd) WHERE id = 1 RETURNING last_seq) " +
		"SELECT m.last_seq FROM m" + notify
	var head int64
	if err := tx.QueryRowContext(ctx, query, base).Scan(&head); err != nil {
		return 0, false, err
	}
	if err := tx.Commit(); err != nil {
		return 0, false, err
	}
	return head, head-base == stampBatch, nil
}

// unstamped reads the ids of committed rows without a seq, oldest first.
// It is a plain (non-locking) read, so a writer's open transaction never
// holds the sequencer up: its rows are stamped by a later round.
func (d *Driver) unstamped(ctx context.Context, tx *sql.Tx) ([]int64, error) {
	rs, err := tx.QueryContext(ctx, "SELECT id FROM "+d.n.log+" WHERE seq IS NULL ORDER BY id LIMIT "+fmt.Sprint(stampBatch))
	if err != nil {
		return nil, err
	}
	return scanInts(rs)
}

// stamp gives ids (ascending) the positions base+1, base+2, ... in
// order, with one UPDATE per run of consecutive ids: every id in such a
// run is a committed row found by unstamped, so the range holds exactly
// them. It stops after maxRuns runs and returns how many it stamped.
func (d *Driver) stamp(ctx context.Context, tx *sql.Tx, base int64, ids []int64) (int, error) {
	query := "UPDATE " + d.n.log + " SET seq = id + " + d.n.ph(1) + " WHERE id BETWEEN " + d.n.ph(2) + " AND " + d.n.ph(3) + " AND seq IS NULL"
	done := 0
	for runs := 0; done < len(ids) && runs < maxRuns; runs++ {
		end := done + 1
		for end < len(ids) && ids[end] == ids[end-1]+1 {
			end++
		}
		first := ids[done]
		// seq = base + (rank of id in ids, 1-based) = id + base + done + 1 - first
		if _, err := tx.ExecContext(ctx, query, base+int64(done)+1-first, first, ids[end-1]); err != nil {
			return 0, err
		}
		done = end
	}
	return done, nil
}

// purgeEvery is how often retention runs: a tenth of the retention,
// between a second and a minute.
func (d *Driver) purgeEvery() time.Duration {
	return min(max(d.cfg.retention/10, time.Second), time.Minute)
}

// purgeBatch bounds the rows one DELETE removes.
const purgeBatch = 2000

// purge deletes rows older than the retention that every group of their
// topic has acknowledged (rows of topics no group reads go by age alone),
// a batch at a time. Unsequenced rows are never deleted.
func (d *Driver) purge(ctx context.Context) error {
	cutoff := d.n.d.TimeArg(time.Now().Add(-d.cfg.retention))
	rs, err := d.db.QueryContext(ctx, "SELECT topic, part, MIN(pos) FROM "+d.n.offsets+" GROUP BY topic, part")
	if err != nil {
		return err
	}
	type floor struct {
		topic string
		part  int
		pos   int64
	}
	var floors []floor
	for rs.Next() {
		var f floor
		if err := rs.Scan(&f.topic, &f.part, &f.pos); err != nil {
			rs.Close()
			return err
		}
		floors = append(floors, f)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return err
	}
	n := d.n
	for _, f := range floors {
		where := "topic = " + n.ph(1) + " AND part = " + n.ph(2) + " AND " + n.pos + " <= " + n.ph(3) + " AND created_at < " + n.ph(4)
		if err := d.deleteBatches(ctx, where, n.pos, f.topic, f.part, f.pos, cutoff); err != nil {
			return err
		}
	}
	// Topics no group reads: a scan in id order (oldest first), so only
	// every tenth purge.
	if d.purges++; d.purges%10 != 1 {
		return nil
	}
	where := n.pos + " IS NOT NULL AND created_at < " + n.ph(1) + " AND topic NOT IN (SELECT topic FROM " + n.offsets + ")"
	return d.deleteBatches(ctx, where, "id", cutoff)
}

// deleteBatches deletes the rows where says, oldest by order first.
func (d *Driver) deleteBatches(ctx context.Context, where, order string, args ...any) error {
	var query string
	if d.n.d == sqlcore.MySQL {
		query = "DELETE FROM " + d.n.log + " WHERE " + where + " ORDER BY " + order + " LIMIT " + fmt.Sprint(purgeBatch)
	} else {
		query = "DELETE FROM " + d.n.log + " WHERE id IN (SELECT id FROM " + d.n.log + " WHERE " + where + " ORDER BY " + order + " LIMIT " + fmt.Sprint(purgeBatch) + ")"
	}
	for range 100 {
		res, err := d.db.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n < purgeBatch {
			return err
		}
	}
	return nil
}
