package sqlcore

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/heraldbus/herald"
)

// ErrInvalidMessage is returned for a message a table cannot store
// faithfully: an ID, key or content type that is not valid UTF-8,
// contains a NUL byte, or is too long for its column.
var ErrInvalidMessage = errors.New("herald/sql: invalid message")

// Column limits a writer checks, so a message fails with a clear error
// before it reaches the database instead of being truncated by it.
const (
	MaxIDBytes          = 255
	MaxContentTypeBytes = 255
	MaxKeyBytes         = 65535 // MySQL TEXT
	// MaxStatementBytes bounds the data of one INSERT, well below MySQL's
	// default max_allowed_packet (16 MiB on MariaDB); a batch above it is
	// split into several INSERTs in the same transaction.
	MaxStatementBytes = 4 << 20
)

// maxErrorText bounds a stored error text.
const maxErrorText = 4000

// CheckMessage validates m for a row of table (named in errors), with a
// size limit of maxBytes by herald.Message.Size (0: none), and returns
// roughly how many bytes its row carries.
func CheckMessage(m *herald.Message, table string, maxBytes int) (int, error) {
	if m == nil {
		return 0, fmt.Errorf("herald/sql: write to %s: %w", table, herald.ErrNilEvent)
	}
	if err := herald.ValidateName("topic", m.Topic); err != nil {
		return 0, fmt.Errorf("herald/sql: write message %s to %s: %w", m.ID, table, err)
	}
	// A message can break the size limit and a column's limit at once
	// (a huge key): the error then wraps both sentinels.
	var tooLarge error
	if maxBytes > 0 {
		if n := m.Size(); n > maxBytes {
			tooLarge = fmt.Errorf("herald/sql: write message %s (topic %q) to %s: %d bytes with key and headers, limit %d: %w",
				m.ID, m.Topic, table, n, maxBytes, herald.ErrMessageTooLarge)
		}
	}
	bad := func(field, reason string) error {
		err := fmt.Errorf("herald/sql: write message %q (topic %q) to %s: %s %s: %w",
			m.ID, m.Topic, table, field, reason, ErrInvalidMessage)
		if tooLarge != nil {
			return errors.Join(err, tooLarge)
		}
		return err
	}
	for _, f := range [...]struct {
		name, value string
		max         int
	}{{"id", m.ID, MaxIDBytes}, {"key", m.Key, MaxKeyBytes}, {"content type", m.ContentType, MaxContentTypeBytes}} {
		switch {
		case len(f.value) > f.max:
			return 0, bad(f.name, fmt.Sprintf("is longer than %d bytes", f.max))
		case !utf8.ValidString(f.value):
			return 0, bad(f.name, "is not valid UTF-8")
		case strings.IndexByte(f.value, 0) >= 0:
			return 0, bad(f.name, "contains a NUL byte")
		}
	}
	n := len(m.ID) + len(m.Topic) + len(m.Key) + len(m.ContentType) + len(m.Data) + 64
	for k, v := range m.Headers {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return 0, bad("header "+fmt.Sprintf("%q", k), "is not valid UTF-8 (headers are stored as JSON)")
		}
		n += len(k) + len(v) + 6
	}
	if tooLarge != nil {
		return 0, tooLarge
	}
	return n, nil
}

// AppendHeadersJSON appends h as a JSON object with its keys sorted. CheckMessage
// has made sure every string is valid UTF-8, so only quotes, backslashes
// and control characters need escaping; encoding/json would spend half a
// dozen allocations per message on the same result.
func AppendHeadersJSON(b []byte, h herald.Headers) []byte {
	b = append(b, '{')
	if len(h) == 1 {
		for k, v := range h {
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, v)
		}
		return append(b, '}')
	}
	for i, k := range slices.Sorted(maps.Keys(h)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, h[k])
	}
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// DecodeHeaders parses a headers column written by AppendHeadersJSON (or
// by hand: then it may fail).
func DecodeHeaders(b []byte) (herald.Headers, error) {
	var h herald.Headers
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, err
	}
	return h, nil
}

// ErrorText makes an error storable in last_error: valid UTF-8, no NUL
// (PostgreSQL text refuses it), bounded.
func ErrorText(err error) string {
	s := strings.ToValidUTF8(err.Error(), "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	if len(s) > maxErrorText {
		s = s[:maxErrorText]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

// TimeDest scans a time column whatever the driver returns: time.Time (pgx, go-sql-driver with parseTime=true),
// text (go-sql-driver without parseTime; read as UTC) or Unix
// microseconds (the SQLite schema). NULL gives the zero time.
type TimeDest struct{ T *time.Time }

// Scan implements sql.Scanner.
func (d TimeDest) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*d.T = time.Time{}
	case time.Time:
		*d.T = v.UTC()
	case int64:
		*d.T = time.UnixMicro(v).UTC()
	case []byte:
		return d.parse(string(v))
	case string:
		return d.parse(v)
	default:
		return fmt.Errorf("herald/sql: cannot scan %T into a time", src)
	}
	return nil
}

func (d TimeDest) parse(s string) error {
	t, err := time.ParseInLocation("2006-01-02 15:04:05.999999999", s, time.UTC)
	if err != nil {
		return fmt.Errorf("herald/sql: parse time %q: %w", s, err)
	}
	*d.T = t
	return nil
}

// InsertSQL builds the INSERT of n rows of params values each into table
// (quoted) with columns (a comma-separated list). A non-empty notify
// channel (PostgreSQL only) adds pg_notify to the same statement: a
// data-modifying WITH always runs to completion, so the INSERT and the
// NOTIFY travel in one round trip, and the notification is delivered when
// the transaction commits.
func InsertSQL(d Dialect, table, columns string, params, n int, notify string) string {
	return InsertSQLLead(d, table, columns, "", params, n, notify)
}

// InsertSQLLead is InsertSQL with lead, an SQL expression, as the first
// value of every row (its column first in columns), before the
// placeholders; an empty lead adds nothing.
func InsertSQLLead(d Dialect, table, columns, lead string, params, n int, notify string) string {
	notify = map[bool]string{true: notify}[d == Postgres]
	b := make([]byte, 0, 128+len(table)+len(columns)+n*(params*7+3+len(lead)))
	if notify != "" {
		b = append(b, "WITH ins AS ("...)
	}
	b = append(b, "INSERT INTO "...)
	b = append(b, table...)
	b = append(b, " ("...)
	b = append(b, columns...)
	b = append(b, ") VALUES "...)
	p := 1
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '(')
		if lead != "" {
			b = append(b, lead...)
			b = append(b, ',')
		}
		for j := range params {
			if j > 0 {
				b = append(b, ',')
			}
			if d == Postgres {
				b = strconv.AppendInt(append(b, '$'), int64(p), 10)
			} else {
				b = append(b, '?')
			}
			p++
		}
		b = append(b, ')')
	}
	if notify != "" {
		b = append(b, ") SELECT pg_notify("...)
		b = append(b, QuoteLiteral(notify)...)
		b = append(b, ", '')"...)
	}
	return string(b)
}

// Batches splits n messages whose rows carry sizes[i] bytes into runs
// that fit one statement: at most perStmt rows and MaxStatementBytes of
// data (a single larger row goes alone). f gets each run's bounds.
func Batches(sizes []int, perStmt int, f func(start, end int) error) error {
	for start := 0; start < len(sizes); {
		end, bytes := start, 0
		for end < len(sizes) && end-start < perStmt && (end == start || bytes+sizes[end] <= MaxStatementBytes) {
			bytes += sizes[end]
			end++
		}
		if err := f(start, end); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// Pacer decides which writes call pg_notify: a write that comes at least
// Pause after the previous one. The first write after a pause wakes the
// listeners; the writes of a steady stream do not, because the readers
// are awake then and poll. PostgreSQL serializes the commits of notifying
// transactions, so a NOTIFY in every one caps them at about one per WAL
// flush. The zero Pause notifies every write.
type Pacer struct {
	Pause time.Duration
	last  atomic.Int64 // when the last write started (Unix ns)
}

// Due reports whether a write starting at now notifies.
func (p *Pacer) Due(now time.Time) bool {
	prev := p.last.Swap(now.UnixNano())
	return now.UnixNano()-prev >= int64(p.Pause)
}

// Values are the bind values of a message's row that need converting.
type Values struct {
	ID      string // Message.ID, or a new KSUID when it is empty
	Headers any    // the headers as a JSON object, nil for none
	Payload any    // Message.Data, nil (SQL NULL) for nil Data
	Time    any    // Message.Time (the write's time when zero), see TimeArg
}

// MessageValues returns m's Values; the headers' JSON is built in buf,
// which is returned for the next message.
func (d Dialect) MessageValues(m *herald.Message, now time.Time, buf []byte) (Values, []byte) {
	v := Values{ID: m.ID}
	if v.ID == "" {
		v.ID = herald.NewKSUID()
	}
	if len(m.Headers) > 0 {
		buf = AppendHeadersJSON(buf[:0], m.Headers)
		v.Headers = string(buf)
	}
	if m.Data != nil {
		v.Payload = m.Data
	}
	ts := m.Time
	if ts.IsZero() {
		ts = now
	}
	v.Time = d.TimeArg(ts)
	return v, buf
}
