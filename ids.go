package herald

import (
	"sync"
	"time"

	"github.com/segmentio/ksuid"
)

// ksuidSource makes KSUIDs without a crypto/rand read and a clock read per
// ID: each pooled ksuid.Sequence is seeded with fresh randomness and the
// current second, then hands out up to 65536 IDs that differ in their last
// two bytes, until the second changes. IDs stay unique (every seed carries
// 14 random bytes of its own) and time-ordered to the second, as KSUIDs are.
// Safe for concurrent use.
type ksuidSource struct{ pool sync.Pool }

type ksuidSeq struct {
	seq    ksuid.Sequence
	second int64
}

func (s *ksuidSource) next(now time.Time) string {
	q, _ := s.pool.Get().(*ksuidSeq)
	if q == nil {
		q = &ksuidSeq{}
	}
	sec := now.Unix()
	id, err := q.seq.Next()
	if q.second != sec || err != nil {
		q.seq = ksuid.Sequence{Seed: ksuid.New()}
		if seed, err := ksuid.NewRandomWithTime(now); err == nil {
			q.seq.Seed = seed
		}
		q.second = sec
		id, _ = q.seq.Next()
	}
	s.pool.Put(q)
	return id.String()
}
