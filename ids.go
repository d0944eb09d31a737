package herald

import (
	"sync"
	"time"
	"unsafe"

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
//
// A sequence encodes idBlock IDs at a time into one string and hands out
// slices of it: one allocation per idBlock IDs. An ID kept alive keeps
// its block's idBlock*27 bytes alive with it.
type ksuidSource struct{ pool sync.Pool }

// idBlock is how many IDs a sequence encodes at once.
const idBlock = 16

// ksuidLen is the length of a KSUID's string form.
const ksuidLen = 27

// base62 is the KSUID alphabet, digit value to character.
const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

type ksuidSeq struct {
	digits [ksuidLen]byte // the seed's base62 digit values (0 to 61), most significant first
	text   [ksuidLen]byte // the seed's string form
	count  uint32         // the next sequence number; above 65535 the sequence is spent
	second int64
	block  string // IDs encoded ahead, count-len(block)/ksuidLen to count-1, of second
}

func (s *ksuidSource) next(now time.Time) string {
	q, _ := s.pool.Get().(*ksuidSeq)
	if q == nil {
		q = &ksuidSeq{}
		q.reseed(now)
	} else if q.second != now.Unix() || q.block == "" && q.count > 0xffff {
		q.reseed(now)
	}
	if q.block == "" {
		q.encodeBlock()
	}
	id := q.block[:ksuidLen]
	q.block = q.block[ksuidLen:]
	s.pool.Put(q)
	return id
}

// encodeBlock encodes the next IDs of the sequence, up to idBlock and no
// further than its last, into q.block.
func (q *ksuidSeq) encodeBlock() {
	n := min(idBlock, 0x10000-int(q.count))
	buf := make([]byte, n*ksuidLen)
	for i := range n {
		q.put(buf[i*ksuidLen:(i+1)*ksuidLen], q.count)
		q.count++
	}
	q.block = unsafe.String(&buf[0], len(buf)) // buf is never written again
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
	q.count, q.second, q.block = 0, now.Unix(), ""
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
	var out [ksuidLen]byte
	q.put(out[:], n)
	return string(out[:])
}

// put writes id(n) into dst (ksuidLen bytes).
func (q *ksuidSeq) put(dst []byte, n uint32) {
	copy(dst, q.text[:])
	for i := ksuidLen - 1; n > 0 && i >= 0; i-- {
		v := uint32(q.digits[i]) + n
		dst[i], n = base62[v%62], v/62
	}
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
