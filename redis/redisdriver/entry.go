package redisdriver

import (
	"strconv"
	"strings"
	"time"

	"github.com/heraldbus/herald"
)

// Field names of a stream entry; see "Wire format" in the package
// documentation. Every header is a field of its own, so that redis-cli and
// producers in other languages can read and write them without a codec.
const (
	fieldID          = "id"
	fieldKey         = "key"
	fieldContentType = "content-type"
	fieldTime        = "time"
	fieldData        = "data"
	headerFieldPre   = "h:"
)

// entryBuilder makes the XADD field/value lists of one Write. The lists of a
// batch share one backing array, and the time field is formatted once for
// consecutive messages with the same Time (a Publish call stamps one time
// on all of its messages).
type entryBuilder struct {
	slab     []any
	lastTime time.Time
	timeText string
}

// values returns the XADD field/value list of m and its size in bytes
// (field names included). Data stays a []byte, which go-redis writes
// without copying.
func (b *entryBuilder) values(m *herald.Message) ([]any, int) {
	n := 2 + 2*len(m.Headers)
	if m.ID != "" {
		n += 2
	}
	if m.Key != "" {
		n += 2
	}
	if m.ContentType != "" {
		n += 2
	}
	if !m.Time.IsZero() {
		n += 2
	}
	if cap(b.slab)-len(b.slab) < n {
		b.slab = make([]any, 0, max(n, 16*n))
	}
	start := len(b.slab)
	vals := b.slab
	size := len(fieldData) + len(m.Data)
	if m.ID != "" {
		vals = append(vals, fieldID, m.ID)
		size += len(fieldID) + len(m.ID)
	}
	if m.Key != "" {
		vals = append(vals, fieldKey, m.Key)
		size += len(fieldKey) + len(m.Key)
	}
	if m.ContentType != "" {
		vals = append(vals, fieldContentType, m.ContentType)
		size += len(fieldContentType) + len(m.ContentType)
	}
	if !m.Time.IsZero() {
		if b.timeText == "" || !m.Time.Equal(b.lastTime) {
			b.lastTime, b.timeText = m.Time, strconv.FormatInt(m.Time.UnixNano(), 10)
		}
		vals = append(vals, fieldTime, b.timeText)
		size += len(fieldTime) + len(b.timeText)
	}
	for k, v := range m.Headers {
		vals = append(vals, headerFieldPre+k, v)
		size += len(headerFieldPre) + len(k) + len(v)
	}
	vals = append(vals, fieldData, m.Data)
	b.slab = vals
	return vals[start:len(vals):len(vals)], size
}

// decodeEntry turns a stream entry back into a Message of topic. It never
// fails: a field it does not know is ignored, and a missing ID or time is
// taken from the entry ID, so that entries written by other producers are
// delivered (an unusable payload then fails in the codec and goes to the
// dead-letter topic, instead of blocking the group).
func decodeEntry(topic, entryID string, values map[string]any) *herald.Message {
	m := &herald.Message{Topic: topic}
	for k, v := range values {
		s, _ := v.(string)
		switch k {
		case fieldID:
			m.ID = s
		case fieldKey:
			m.Key = s
		case fieldContentType:
			m.ContentType = s
		case fieldTime:
			if ns, err := strconv.ParseInt(s, 10, 64); err == nil {
				m.Time = time.Unix(0, ns).UTC()
			}
		case fieldData:
			m.Data = []byte(s)
		default:
			if name, ok := strings.CutPrefix(k, headerFieldPre); ok {
				if m.Headers == nil {
					m.Headers = make(herald.Headers, len(values))
				}
				m.Headers[name] = s
			}
		}
	}
	if m.ID == "" {
		m.ID = entryID
	}
	if m.Time.IsZero() {
		m.Time = entryTime(entryID)
	}
	return m
}

// entryTime is the millisecond time Redis put in an entry ID ("ms-seq").
func entryTime(entryID string) time.Time {
	ms, _, _ := strings.Cut(entryID, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}
