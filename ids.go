package herald

import (
	"sync"
	"time"

	"github.com/segmentio/ksuid"
)

// ksuidSource makes KSUIDs without a crypto/rand read, a clock read or a
// base62 encoding per ID: each pooled sequence is seeded with fresh
// randomness and the current second, its last two bytes zeroed, and
// encoded once; the IDs it hands out (up to 65536, until the second
// changes) are the seed plus a counter in those two bytes, and their
// string form is the seed's base62 digits plus the counter, carried
// through the low digits, which is the same string ksuid.KSUID.String
// makes of the same bytes. IDs stay unique (every seed carries 14 random
// bytes of its own) and time-ordered to the second, as KSUIDs are. Safe
// for concurrent use.
type ksuidSource struct{ pool sync.Pool }

// ksuidLen is the length of a KSUID's string form.
const ksuidLen = 27

// base62 is the KSUID alphabet, digit value to character.
const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

type ksuidSeq struct {
	digits [ksuidLen]byte // the seed's base62 digit values (0 to 61), most significant first
	text   [ksuidLen]byte // the seed's string form
	count  uint32         // the next sequence number; above 65535 the sequence is spent
	second int64
}

func (s *ksuidSource) next(now time.Time) string {
	q, _ := s.pool.Get().(*ksuidSeq)
	if q == nil {
		q = &ksuidSeq{}
		q.reseed(now)
	} else if q.second != now.Unix() || q.count > 0xffff {
		q.reseed(now)
	}
	id := q.id(q.count)
	q.count++
	s.pool.Put(q)
	return id
}

// reseed starts a sequence at now: a new random KSUID of now's second
// with its last two bytes zeroed, encoded.
func (q *ksuidSeq) reseed(now time.Time) {
	seed, err := ksuid.NewRandomWithTime(now)
	if err != nil {
		seed = ksuid.New()
	}
	seed[len(seed)-2], seed[len(seed)-1] = 0, 0
	q.setSeed(seed)
	q.count, q.second = 0, now.Unix()
}

// setSeed encodes seed (its last two bytes zero) as the sequence's base.
func (q *ksuidSeq) setSeed(seed ksuid.KSUID) {
	seed.Append(q.text[:0])
	for i, c := range q.text {
		q.digits[i] = digitValue(c)
	}
}

// id is the string form of the seed with n in its last two bytes: n added
// to the seed's digits, from the last, as far as it carries (three or
// four digits; the seed's low 16 bits are zero, so nothing carries past
// the 27 digits).
func (q *ksuidSeq) id(n uint32) string {
	out := q.text
	for i := ksuidLen - 1; n > 0 && i >= 0; i-- {
		v := uint32(q.digits[i]) + n
		out[i], n = base62[v%62], v/62
	}
	return string(out[:])
}

func digitValue(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'A' && c <= 'Z':
		return c - 'A' + 10
	default:
		return c - 'a' + 36
	}
}
