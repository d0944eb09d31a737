package sqldriver

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"time"
)

// Membership. Every member of a group keeps a row in the members table
// that expires a lease after its last heartbeat, and owns partitions
// through the owner and lease_until columns of the offsets table. Each
// heartbeat (a third of the lease) a member renews its leases, counts the
// live members, and moves toward its fair share, ceil(partitions / live):
// it hands over partitions beyond it (gracefully: no new deliveries start,
// the running ones finish or a quarter lease passes, the acknowledged
// position is written, the owner cleared) and claims partitions that are
// free or whose lease expired. Every lease time is the database's clock.
// A member's writes of positions are fenced by its owner id, so a member
// that lost a partition cannot move its position.

// keep runs the heartbeats and the commits until ctx ends.
func (s *subscription) keep(ctx context.Context) {
	defer close(s.done)
	beat := time.NewTicker(s.d.cfg.lease / 3)
	defer beat.Stop()
	flush := time.NewTicker(s.d.cfg.commitInterval)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-flush.C:
			if err := s.commit(ctx); err != nil && ctx.Err() == nil {
				s.report(fail("commit", s.topic, s.group, "", err))
			}
		case <-beat.C:
			if err := s.heartbeat(ctx); err != nil && ctx.Err() == nil {
				s.report(fail("heartbeat", s.topic, s.group, "", err))
			}
		}
	}
}

// heartbeat renews this member and its leases and rebalances.
func (s *subscription) heartbeat(ctx context.Context) error {
	n := s.d.n
	now := n.nowMillis()
	lease := fmt.Sprint(s.d.cfg.lease.Milliseconds())
	held, live, err := s.beat(ctx, now, lease)
	if err != nil {
		return err
	}
	s.dropLost(held)
	if err := s.releaseStrays(ctx, held); err != nil {
		return err
	}
	if s.beats++; s.beats%10 == 0 {
		if _, err := s.d.db.ExecContext(ctx, "DELETE FROM "+n.members+" WHERE grp = "+n.ph(1)+" AND topic = "+n.ph(2)+" AND expires_at < "+now+" - 10 * "+lease,
			s.group, s.topic); err != nil {
			return err
		}
	}
	fair := (s.parts + max(live, 1) - 1) / max(live, 1)
	s.mu.Lock()
	have := len(s.owned)
	s.mu.Unlock()
	switch {
	case have > fair:
		return s.handOver(ctx, have-fair)
	case have < fair:
		return s.claim(ctx, fair-have)
	}
	return nil
}

// beat registers this member, renews its leases and counts the live
// members: one statement on PostgreSQL, three elsewhere. It returns the
// partitions the offsets table gives this member.
func (s *subscription) beat(ctx context.Context, now, lease string) (held []int64, live int, err error) {
	n := s.d.n
	register := "INSERT INTO " + n.members + " (grp, topic, member, expires_at) VALUES (" + n.ph(1) + ", " + n.ph(2) + ", " + n.ph(3) + ", " + now + " + " + lease + ")"
	count := "SELECT COUNT(*) FROM " + n.members + " WHERE grp = " + n.ph(1) + " AND topic = " + n.ph(2) + " AND expires_at > " + now
	switch n.d {
	case Postgres:
		// The statement's snapshot does not see its own upsert: count the
		// others and add this member.
		rs, err := s.d.db.QueryContext(ctx, "WITH m AS ("+register+" ON CONFLICT (grp, topic, member) DO UPDATE SET expires_at = EXCLUDED.expires_at RETURNING 1), "+
			"r AS (UPDATE "+n.offsets+" SET lease_until = "+now+" + "+lease+" WHERE grp = $1 AND topic = $2 AND owner = $3 RETURNING part) "+
			"SELECT c.live, r.part FROM ("+count+" AND member <> $3) c(live) LEFT JOIN r ON true", s.group, s.topic, s.member)
		if err != nil {
			return nil, 0, err
		}
		defer rs.Close()
		for rs.Next() {
			var part sql.NullInt64
			if err := rs.Scan(&live, &part); err != nil {
				return nil, 0, err
			}
			if part.Valid {
				held = append(held, part.Int64)
			}
		}
		return held, live + 1, rs.Err()
	case MySQL:
		register += " ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)"
	default:
		register += " ON CONFLICT (grp, topic, member) DO UPDATE SET expires_at = excluded.expires_at"
	}
	if _, err := s.d.db.ExecContext(ctx, register, s.group, s.topic, s.member); err != nil {
		return nil, 0, err
	}
	if held, err = s.renew(ctx, now, lease); err != nil {
		return nil, 0, err
	}
	err = s.d.db.QueryRowContext(ctx, count, s.group, s.topic).Scan(&live)
	return held, live, err
}

// renew extends the leases this member holds and returns the partitions
// the offsets table gives it: one UPDATE ... RETURNING where the database
// has it (PostgreSQL, SQLite), an UPDATE and a SELECT on MySQL.
func (s *subscription) renew(ctx context.Context, now, lease string) ([]int64, error) {
	n := s.d.n
	update := "UPDATE " + n.offsets + " SET lease_until = " + now + " + " + lease + " WHERE grp = " + n.ph(1) + " AND topic = " + n.ph(2) + " AND owner = " + n.ph(3)
	query := update + " RETURNING part"
	if n.d == MySQL {
		if _, err := s.d.db.ExecContext(ctx, update, s.group, s.topic, s.member); err != nil {
			return nil, err
		}
		return s.ownedInTable(ctx)
	}
	rs, err := s.d.db.QueryContext(ctx, query, s.group, s.topic, s.member)
	if err != nil {
		return nil, err
	}
	return scanInts(rs)
}

// releaseStrays gives back the partitions the offsets table gives this
// member although it does not hold them (a hand-over whose giveBack
// failed, a claim whose position read failed): the heartbeat renews every
// lease naming the member, so nobody would read them again. What was
// acknowledged there and not committed is delivered again.
func (s *subscription) releaseStrays(ctx context.Context, held []int64) error {
	s.mu.Lock()
	var strays []int64
	for _, p := range held {
		if _, ok := s.owned[int(p)]; !ok {
			strays = append(strays, p)
		}
	}
	s.mu.Unlock()
	n := s.d.n
	for _, p := range strays {
		if _, err := s.d.db.ExecContext(ctx, "UPDATE "+n.offsets+" SET owner = NULL, lease_until = 0 WHERE grp = "+n.ph(1)+" AND topic = "+n.ph(2)+" AND part = "+n.ph(3)+" AND owner = "+n.ph(4),
			s.group, s.topic, p, s.member); err != nil {
			return err
		}
	}
	return nil
}

// dropLost revokes the partitions this member holds locally that the
// offsets table no longer gives it.
func (s *subscription) dropLost(held []int64) {
	s.mu.Lock()
	var lost []*partState
	for p, st := range s.owned {
		if !slices.Contains(held, int64(p)) {
			lost = append(lost, st)
		}
	}
	s.mu.Unlock()
	for _, st := range lost {
		s.lose(st)
		s.report(fail("heartbeat", s.topic, s.group, fmt.Sprintf("partition %d", st.part), errLost))
	}
}

// claim takes up to k partitions that are free or whose lease expired,
// and starts them at their committed position: one UPDATE ... RETURNING
// on PostgreSQL and SQLite, an UPDATE and a SELECT per partition on MySQL.
func (s *subscription) claim(ctx context.Context, k int) error {
	n := s.d.n
	now := n.nowMillis()
	lease := fmt.Sprint(s.d.cfg.lease.Milliseconds())
	free := "(owner IS NULL OR lease_until < " + now + ")"
	take := "UPDATE " + n.offsets + " SET owner = " + n.ph(1) + ", lease_until = " + now + " + " + lease +
		" WHERE grp = " + n.ph(2) + " AND topic = " + n.ph(3) + " AND " + free
	var got [][2]int64 // part, pos
	if n.d != MySQL {
		lock := ""
		if n.d == Postgres {
			lock = " FOR UPDATE SKIP LOCKED"
		}
		rs, err := s.d.db.QueryContext(ctx, take+" AND part IN (SELECT part FROM "+n.offsets+" WHERE grp = "+n.ph(2)+" AND topic = "+n.ph(3)+" AND "+free+
			" ORDER BY part LIMIT "+fmt.Sprint(k)+lock+") RETURNING part, pos", s.member, s.group, s.topic)
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var pp [2]int64
			if err := rs.Scan(&pp[0], &pp[1]); err != nil {
				return err
			}
			got = append(got, pp)
		}
		if err := rs.Err(); err != nil {
			return err
		}
	} else {
		var err error
		if got, err = s.claimEach(ctx, take+" AND part = "+n.ph(4), free, k); err != nil {
			return err
		}
	}
	for _, pp := range got {
		st := &partState{part: int(pp[0]), committed: pp[1], acked: pp[1], next: pp[1]}
		s.mu.Lock()
		s.owned[st.part] = st
		s.dirty = true
		s.mu.Unlock()
	}
	if len(got) > 0 {
		s.poke()
	}
	return nil
}

// claimEach is claim on MySQL, whose UPDATE neither returns rows nor
// reads the table it updates in a subquery: the free partitions, then an
// UPDATE (fenced again) and a SELECT of the position for each.
func (s *subscription) claimEach(ctx context.Context, take, free string, k int) ([][2]int64, error) {
	n := s.d.n
	rs, err := s.d.db.QueryContext(ctx, "SELECT part FROM "+n.offsets+" WHERE grp = "+n.ph(1)+" AND topic = "+n.ph(2)+" AND "+free+" ORDER BY part", s.group, s.topic)
	if err != nil {
		return nil, err
	}
	parts, err := scanInts(rs)
	if err != nil {
		return nil, err
	}
	var got [][2]int64
	for _, p := range parts {
		if len(got) == k {
			break
		}
		res, err := s.d.db.ExecContext(ctx, take, s.member, s.group, s.topic, p)
		if err != nil {
			return nil, err
		}
		if c, err := res.RowsAffected(); err != nil || c == 0 {
			continue // someone else was quicker
		}
		var pos int64
		if err := s.d.db.QueryRowContext(ctx, "SELECT pos FROM "+n.offsets+" WHERE grp = "+n.ph(1)+" AND topic = "+n.ph(2)+" AND part = "+n.ph(3),
			s.group, s.topic, p).Scan(&pos); err != nil {
			return nil, err
		}
		got = append(got, [2]int64{p, pos})
	}
	return got, nil
}

// handOver gives k partitions back (the highest numbered) so that a
// member with fewer can claim them.
func (s *subscription) handOver(ctx context.Context, k int) error {
	s.mu.Lock()
	parts := make([]int, 0, len(s.owned))
	for p := range s.owned {
		parts = append(parts, p)
	}
	slices.Sort(parts)
	var give []*partState
	for _, p := range parts[len(parts)-k:] {
		st := s.owned[p]
		st.revoked.Store(true)
		delete(s.owned, p)
		give = append(give, st)
	}
	s.mu.Unlock()
	deadline := time.Now().Add(s.d.cfg.lease / 4)
	for _, st := range give {
		for time.Now().Before(deadline) && s.runningOf(st) > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		err := s.giveBack(ctx, st)
		s.mu.Lock()
		st.lost = true
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *subscription) runningOf(st *partState) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return st.running
}
