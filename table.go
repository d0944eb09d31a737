package herald

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/heraldbus/herald/codec"
	"github.com/heraldbus/herald/internal/keyhash"
)

var (
	// ErrNoKey is returned by a table's Get, Set and Delete while a
	// message without a Key is handled: a table's state is per key.
	ErrNoKey = errors.New("herald: a group table needs a message key")
	// ErrTablesNotSupported is returned when a subscription with a table
	// is made on a driver that keeps no changelogs (TableLog), or whose
	// subscriptions have no partitions (Partitioned).
	ErrTablesNotSupported = errors.New("herald: the driver keeps no group tables")
	// ErrNotInHandler is returned by a table's Get, Set and Delete outside
	// a handler of the subscription that keeps it.
	ErrNotInHandler = errors.New("herald: not in a handler of the table's subscription")
)

// TableError is what a table returns when its changelog, its store or its
// codec fails: the table, the operation ("open", "catch up", "read",
// "write", "encode", "decode"), the partition and key where known, and
// the cause.
type TableError struct {
	Table     string
	Op        string
	Partition int // -1 when not known
	Key       string
	Err       error
}

func (e *TableError) Error() string {
	s := fmt.Sprintf("herald: table %q: %s", e.Table, e.Op)
	if e.Partition >= 0 {
		s += fmt.Sprintf(" partition %d", e.Partition)
	}
	if e.Key != "" {
		s += fmt.Sprintf(" key %q", e.Key)
	}
	return s + ": " + e.Err.Error()
}

func (e *TableError) Unwrap() error { return e.Err }

// TableStore keeps one member's copy of the table partitions it holds: the
// latest record of each key (tombstones included, so that a redelivered
// delete is still found applied) and how far into each partition's
// changelog the copy reaches. The default keeps them in memory; a store on
// disk lets a restarted member catch up from where it stopped instead of
// from the start. Implementations are safe for concurrent use; calls for
// one partition are not concurrent with its Put.
type TableStore interface {
	// Get returns the latest record of key in partition.
	Get(partition int, key string) (ChangelogRecord, bool, error)
	// Put replaces key's record with r and records that the copy reaches
	// r.Offset+1 (or further).
	Put(partition int, r ChangelogRecord) error
	// Next is the changelog offset the copy of partition reaches: every
	// record below it has been put (0 for a partition never put).
	Next(partition int) (uint64, error)
	// Range calls fn for each record of partition, in no set order, until
	// fn returns false.
	Range(partition int, fn func(ChangelogRecord) bool) error
}

// NewMemoryTableStore returns the default TableStore, which keeps
// everything in the process's memory.
func NewMemoryTableStore() TableStore { return &memoryTableStore{} }

type memoryTableStore struct{ parts sync.Map } // partition -> *memoryTablePart

type memoryTablePart struct {
	mu   sync.RWMutex
	recs map[string]ChangelogRecord
	next uint64
}

func (s *memoryTableStore) part(i int) *memoryTablePart {
	if p, ok := s.parts.Load(i); ok {
		return p.(*memoryTablePart)
	}
	p, _ := s.parts.LoadOrStore(i, &memoryTablePart{recs: make(map[string]ChangelogRecord)})
	return p.(*memoryTablePart)
}

func (s *memoryTableStore) Get(partition int, key string) (ChangelogRecord, bool, error) {
	p := s.part(partition)
	p.mu.RLock()
	r, ok := p.recs[key]
	p.mu.RUnlock()
	return r, ok, nil
}

func (s *memoryTableStore) Put(partition int, r ChangelogRecord) error {
	p := s.part(partition)
	p.mu.Lock()
	p.recs[r.Key] = r
	p.next = max(p.next, r.Offset+1)
	p.mu.Unlock()
	return nil
}

func (s *memoryTableStore) Next(partition int) (uint64, error) {
	p := s.part(partition)
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.next, nil
}

func (s *memoryTableStore) Range(partition int, fn func(ChangelogRecord) bool) error {
	p := s.part(partition)
	p.mu.RLock()
	recs := make([]ChangelogRecord, 0, len(p.recs))
	for _, r := range p.recs {
		recs = append(recs, r)
	}
	p.mu.RUnlock()
	for _, r := range recs {
		if !fn(r) {
			break
		}
	}
	return nil
}

// TableOption configures a Table.
type TableOption func(*tableOptions)

type tableOptions struct {
	codec codec.Codec
	store TableStore
	errs  []error
}

// WithTableCodec encodes the table's values with c (default JSON).
func WithTableCodec(c codec.Codec) TableOption {
	return func(o *tableOptions) {
		if isNil(c) {
			o.errs = append(o.errs, &OptionError{Option: "WithTableCodec", Value: nil, Reason: "nil codec"})
			return
		}
		o.codec = c
	}
}

// WithTableStore keeps the member's copy of the table in s (default
// NewMemoryTableStore).
func WithTableStore(s TableStore) TableOption {
	return func(o *tableOptions) {
		if isNil(s) {
			o.errs = append(o.errs, &OptionError{Option: "WithTableStore", Value: nil, Reason: "nil store"})
			return
		}
		o.store = s
	}
}

// Table is a group table: for every message key, a value of type V that
// the handler of the one subscription given it (WithTable) reads and
// writes (Get, Set, Delete) while it handles a message of that key. Its
// changelog is the driver's changelog named as the table (TableLog). What a handler staged is
// applied when it returns nil, written to the table's changelog
// (TableLog) before the message is acknowledged; an error or a panic
// discards it. Per-key order makes one key's updates serial without locks.
//
// Recovery. Each member keeps the partitions it handles in a TableStore
// (memory by default). When its driver gives it a partition, or gives it
// one back (Partitioned.Assignments), the member reads that partition's
// changelog to its end before it handles the partition's next message, so
// it starts from every update its group acknowledged.
//
// What is exactly once. Every changelog record carries the offset of the
// input message that wrote it (ChangelogRecord.Input), and a delivery at
// or below the offset of its key's latest record is acknowledged without
// running the handler: its effect is in the table already. So a crash
// between the changelog write and the acknowledgment, or a partition that
// moves then, applies no message twice to the table. What the handler did
// outside the table (a publish, a database write) happens at least once:
// a handler killed before its update reached the changelog runs again.
// Such effects must be idempotent, as in any herald handler.
//
// A Table is safe for concurrent use.
type Table[V any] struct {
	tableCopy[V]

	mu    sync.Mutex // guards bind, and open's first call
	bound *route     // the subscription that keeps it
	logs  TableLog
	// parts has one entry per changelog partition once the changelog is
	// open (at the first delivery); read without the lock by every one.
	parts atomic.Pointer[[]*tablePartition]
}

// tablePartition is a member's progress through one changelog partition.
type tablePartition struct {
	log Changelog
	// seen is 1 + the driver's Assignments when the partition was last
	// caught up; 0: never.
	seen    atomic.Uint64
	mu      sync.Mutex // serialises catch-up and writes, which move next
	next    uint64     // the changelog offset the store reaches
	started bool       // next was read from the store
}

// tableCopy is a copy of a table's records, by partition, in a
// TableStore: a member's partitions (Table) or all of them (View).
type tableCopy[V any] struct {
	name  string
	codec codec.Codec
	store TableStore
}

// newTableOptions applies opts over the defaults.
func newTableOptions(name string, opts []TableOption) (tableOptions, error) {
	o := tableOptions{codec: codec.JSON{}}
	for _, opt := range opts {
		if opt == nil {
			o.errs = append(o.errs, &OptionError{Option: "TableOption", Value: nil, Reason: "nil option"})
			continue
		}
		opt(&o)
	}
	o.errs = append(o.errs, ValidateName("table", name))
	if o.store == nil {
		o.store = NewMemoryTableStore()
	}
	return o, errors.Join(o.errs...)
}

// NewTable returns a table named name: 1 to MaxNameLength letters, digits
// and ".-_:/", as a topic. Bad options are reported at once.
func NewTable[V any](name string, opts ...TableOption) (*Table[V], error) {
	o, err := newTableOptions(name, opts)
	if err != nil {
		return nil, err
	}
	return &Table[V]{tableCopy: tableCopy[V]{name: name, codec: o.codec, store: o.store}}, nil
}

// Name returns the table's name, which is also its changelog's.
func (t *Table[V]) Name() string { return t.name }

// WithTable gives the subscription the group table t (see Table). A table
// belongs to one subscription (one topic and group) for its life; giving
// it to a second is an error, and so is a driver that keeps no tables
// (ErrTablesNotSupported). A batch subscription takes no table.
func WithTable[V any](t *Table[V]) SubscribeOption {
	return func(o *subscribeOptions) {
		if t == nil {
			o.tableErr = &OptionError{Option: "WithTable", Value: nil, Reason: "nil table"}
			return
		}
		o.table = t
	}
}

// groupTable is a Table of any value type, as a subscription holds it.
type groupTable interface {
	bind(r *route, d Driver) error
	wrap(h HandlerFunc) HandlerFunc
}

// bind makes t the table of r's subscription on d.
func (t *Table[V]) bind(r *route, d Driver) error {
	logs, ok := d.(TableLog)
	if !ok {
		return fmt.Errorf("herald: table %q on topic %q group %q: %w", t.name, r.topic, r.group, ErrTablesNotSupported)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.bound != nil && t.bound != r {
		return &OptionError{Option: "WithTable", Value: t.name,
			Reason: fmt.Sprintf("the table belongs to topic %q group %q", t.bound.topic, t.bound.group)}
	}
	t.bound, t.logs = r, logs
	return nil
}

// tableTx is what one handler run staged in a table: the key's record
// before the run, and the value set or the delete.
type tableTx[V any] struct {
	key            string
	current        ChangelogRecord
	found          bool
	value          V
	staged, delete bool
}

// wrap is the innermost layer of the table's subscription: it catches the
// delivery's partition up, skips a delivery already applied, gives h a
// fresh tableTx, and writes what h staged when h returns nil.
func (t *Table[V]) wrap(h HandlerFunc) HandlerFunc {
	return func(ctx context.Context, m *Message) error {
		if m.Key == "" {
			return h(context.WithValue(ctx, t, &tableTx[V]{}), m)
		}
		dc, ok := deliveryOf(ctx)
		if !ok {
			return fmt.Errorf("herald: table %q: %w", t.name, ErrNotInHandler)
		}
		p, ok := dc.from.sub.(Partitioned)
		if !ok {
			return Permanent(fmt.Errorf("herald: table %q: the subscription has no partitions: %w", t.name, ErrTablesNotSupported))
		}
		part, off := p.Position(dc.d)
		tp, err := t.caughtUp(ctx, part, p.Assignments())
		if err != nil {
			return err
		}
		cur, found, err := t.store.Get(part, m.Key)
		if err != nil {
			return &TableError{Table: t.name, Op: "read", Partition: part, Key: m.Key, Err: err}
		}
		if found && cur.Input >= off {
			ReportDuplicate(ctx, m) // its update is in the table: applied before a crash or a move
			return nil
		}
		tx := &tableTx[V]{key: m.Key, current: cur, found: found}
		if err := h(context.WithValue(ctx, t, tx), m); err != nil || !tx.staged {
			return err
		}
		if r, ok := dc.from.sub.(Revoker); ok && r.Revoked(dc.d) {
			// The partition moved while h ran: its new owner handles the
			// message again, from the state it caught up to; writing
			// this update too would apply the message twice.
			return nil
		}
		return t.write(ctx, tp, part, off, tx)
	}
}

// open opens the changelog, once, and returns its partitions.
func (t *Table[V]) open(ctx context.Context) ([]*tablePartition, error) {
	if parts := t.parts.Load(); parts != nil {
		return *parts, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if parts := t.parts.Load(); parts != nil {
		return *parts, nil
	}
	log, err := t.logs.Changelog(ctx, t.name, t.bound.topic)
	if err != nil {
		return nil, &TableError{Table: t.name, Op: "open", Partition: -1, Err: err}
	}
	parts := make([]*tablePartition, log.Partitions())
	for i := range parts {
		parts[i] = &tablePartition{log: log}
	}
	t.parts.Store(&parts)
	return parts, nil
}

// caughtUp returns partition part once the store holds every record its
// changelog had when the member's assignments were last seen at gen.
func (t *Table[V]) caughtUp(ctx context.Context, part int, gen uint64) (*tablePartition, error) {
	parts, err := t.open(ctx)
	if err != nil {
		return nil, err
	}
	if part < 0 || part >= len(parts) {
		return nil, Permanent(&TableError{Table: t.name, Op: "catch up", Partition: part,
			Err: fmt.Errorf("the changelog has %d partitions, fewer than the input topic", len(parts))})
	}
	tp := parts[part]
	if tp.seen.Load() == gen+1 {
		return tp, nil
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.seen.Load() == gen+1 {
		return tp, nil
	}
	if err := t.catchUp(ctx, part, tp); err != nil {
		return nil, &TableError{Table: t.name, Op: "catch up", Partition: part, Err: err}
	}
	tp.seen.Store(gen + 1)
	return tp, nil
}

// catchUpBatch is how many records one changelog read asks for.
const catchUpBatch = 512

// catchUp puts the records of partition part from tp.next to the
// changelog's end into the store; tp.mu held.
func (t *Table[V]) catchUp(ctx context.Context, part int, tp *tablePartition) error {
	if !tp.started {
		next, err := t.store.Next(part)
		if err != nil {
			return err
		}
		tp.next, tp.started = next, true
	}
	end, err := tp.log.End(ctx, part)
	if err != nil {
		return err
	}
	buf := make([]ChangelogRecord, catchUpBatch)
	for tp.next < end {
		n, err := tp.log.Read(ctx, part, tp.next, buf)
		if err != nil {
			return err
		}
		if n == 0 {
			break // the rest was compacted away
		}
		for _, r := range buf[:n] {
			if err := t.apply(part, r); err != nil {
				return err
			}
			tp.next = r.Offset + 1
		}
	}
	tp.next = max(tp.next, end)
	return nil
}

// apply puts r into the store unless the store holds a record of its key
// written for a later input message (a record a member wrote after it
// lost the partition, which its new owner rewrote).
func (t *tableCopy[V]) apply(part int, r ChangelogRecord) error {
	cur, found, err := t.store.Get(part, r.Key)
	if err != nil {
		return err
	}
	if found && cur.Input > r.Input {
		return nil
	}
	return t.store.Put(part, r)
}

// write appends what tx staged to the changelog and puts it in the store.
func (t *Table[V]) write(ctx context.Context, tp *tablePartition, part int, input uint64, tx *tableTx[V]) error {
	r := ChangelogRecord{Key: tx.key, Deleted: tx.delete, Input: input}
	if !tx.delete {
		data, err := t.codec.Marshal(tx.value)
		if err != nil {
			return Permanent(&TableError{Table: t.name, Op: "encode", Partition: part, Key: tx.key, Err: err})
		}
		r.Value = data
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	first, err := tp.log.Append(ctx, part, []ChangelogRecord{r})
	if err != nil {
		return &TableError{Table: t.name, Op: "write", Partition: part, Key: tx.key, Err: err}
	}
	r.Offset = first
	if first != tp.next {
		tp.seen.Store(0) // records of another writer lie between: read them before the next delivery
	} else {
		tp.next = first + 1
	}
	if err := t.store.Put(part, r); err != nil {
		tp.seen.Store(0)
		return &TableError{Table: t.name, Op: "write", Partition: part, Key: tx.key, Err: err}
	}
	return nil
}

// txOf returns the tableTx of the handler run ctx belongs to.
func (t *Table[V]) txOf(ctx context.Context) (*tableTx[V], error) {
	tx, ok := ctx.Value(t).(*tableTx[V])
	switch {
	case !ok:
		return nil, fmt.Errorf("herald: table %q: %w", t.name, ErrNotInHandler)
	case tx.key == "":
		return nil, fmt.Errorf("herald: table %q: %w", t.name, ErrNoKey)
	}
	return tx, nil
}

// Get returns the state of the key of the message being handled: what
// this run set (or deleted) so far, else what the table held. ok is false
// when the key has none.
func (t *Table[V]) Get(ctx context.Context) (v V, ok bool, err error) {
	tx, err := t.txOf(ctx)
	if err != nil {
		return v, false, err
	}
	if tx.staged {
		return tx.value, !tx.delete, nil
	}
	if !tx.found || tx.current.Deleted {
		return v, false, nil
	}
	v, err = t.decode(tx.current)
	return v, err == nil, err
}

// Set stages v as the state of the key of the message being handled; it
// is written when the handler returns nil.
func (t *Table[V]) Set(ctx context.Context, v V) error {
	tx, err := t.txOf(ctx)
	if err != nil {
		return err
	}
	tx.value, tx.staged, tx.delete = v, true, false
	return nil
}

// Delete stages the removal of the state of the key of the message being
// handled; it is written when the handler returns nil.
func (t *Table[V]) Delete(ctx context.Context) error {
	tx, err := t.txOf(ctx)
	if err != nil {
		return err
	}
	var zero V
	tx.value, tx.staged, tx.delete = zero, true, true
	return nil
}

func (t *tableCopy[V]) decode(r ChangelogRecord) (V, error) {
	var v V
	if err := t.codec.Unmarshal(r.Value, &v); err != nil {
		return v, &TableError{Table: t.name, Op: "decode", Partition: -1, Key: r.Key, Err: err}
	}
	return v, nil
}

// Value returns the state of key in this member's copy of the table,
// outside any handler (a test's check, a service's own read). The copy
// holds the partitions the member has handled messages of, as of its last
// update: another member's keys, or a partition that moved away, may be
// missing or behind. A View reads the whole table. ok is false before the
// subscription has handled a message.
func (t *Table[V]) Value(key string) (v V, ok bool, err error) {
	n := 0
	if parts := t.parts.Load(); parts != nil {
		n = len(*parts)
	}
	if n == 0 || key == "" {
		return v, false, nil
	}
	return t.value(key, n)
}

// value returns key's state in the copy of a table of n partitions.
func (t *tableCopy[V]) value(key string, n int) (v V, ok bool, err error) {
	part := keyhash.Partition(key, n)
	r, found, err := t.store.Get(part, key)
	if err != nil {
		return v, false, &TableError{Table: t.name, Op: "read", Partition: part, Key: key, Err: err}
	}
	if !found || r.Deleted {
		return v, false, nil
	}
	v, err = t.decode(r)
	return v, err == nil, err
}
