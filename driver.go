package herald

import (
	"context"
	"fmt"
	"unicode/utf8"
)

// This file is the whole contract between herald and a driver. A driver
// implements Writer (the publishing side) and Reader (the consuming side);
// the Bus, the Publisher and the scheduler do everything else:
// encoding, IDs, keyed concurrency, retries, deduplication and dead-letters.
// drivertest.Run checks an implementation against this contract.

// Writer writes messages to a broker.
//
// Write stores msgs durably (as the driver defines durable) and returns nil,
// or returns an error and the caller must assume none of them were written
// (a driver that can write part of a batch says so in its docs; callers then
// retry the whole batch and rely on deduplication by Message.ID). Messages
// with one Key are written in slice order. Write takes ownership of msgs and
// of the messages: the caller must not change them after the call. A nil or
// empty slice is a no-op. Write blocks while the broker pushes back and
// returns ctx.Err() when ctx is done first. Implementations are safe for
// concurrent use.
type Writer interface {
	Write(ctx context.Context, msgs []*Message) error
}

// Reader opens consumer-group subscriptions.
//
// Every group receives every message published to the topic after the group
// was first created (and, where the driver retains history, what was
// published before, as its start-position option says). Subscriptions of one
// group compete: each message is delivered to one of them at a time.
// Implementations are safe for concurrent use.
type Reader interface {
	Subscribe(ctx context.Context, topic, group string) (Subscription, error)
}

// Driver is a Writer and a Reader, which is what NewBus takes.
//
// Who closes what. Every herald driver (memdriver, kafkadriver, sqldriver,
// redisdriver) also has Close() error: it closes the subscriptions still
// open, makes later calls fail with ErrClosed, and is idempotent
// (drivertest checks it). A driver never closes a client it was given (a
// go-redis client, a *sql.DB): that stays the caller's. The Bus closes
// neither. So a service stops in this order: Bus.Shutdown (handlers
// finish, acknowledgments flush), then the driver's Close, then the
// clients it was given.
type Driver interface {
	Writer
	Reader
}

// Subscription is one member of a consumer group.
//
// The scheduler calls Fetch from one goroutine, and Ack from many
// goroutines at once; Close is called once, after the last Ack.
type Subscription interface {
	// Fetch blocks until at least one delivery is available or ctx is done,
	// fills dst[:n] and returns n. It returns ctx.Err() when ctx ends first.
	// Other errors are reported and Fetch is called again after a backoff,
	// so a driver reconnects inside Fetch rather than failing for good.
	// Messages with one key are returned in publish order. Drivers with
	// partitions give each partition to one member at a time, so the order
	// holds across the members of a group too; what a driver promises after
	// a member leaves with unacknowledged messages is in its docs.
	Fetch(ctx context.Context, dst []Delivery) (n int, err error)

	// Ack settles a delivery: the handler chain finished with it and the
	// driver must not deliver it to this group again. Drivers may batch
	// acknowledgments, but a batch must be flushed by Close. Ack of a
	// delivery whose ownership was lost (a rebalance, an expired claim) may
	// return an error; the scheduler reports it and moves on.
	Ack(ctx context.Context, d Delivery) error

	// Close leaves the group. Deliveries not acknowledged by then are
	// delivered again, to this group's next member (at-least-once); pending
	// acknowledgments are flushed first, bounded by ctx.
	Close(ctx context.Context) error
}

// Revoker is an optional interface of a Subscription that can lose
// deliveries it has handed out, as a Kafka member loses its partitions in a
// rebalance. Before it starts a fetched delivery, the scheduler asks
// Revoked; a revoked delivery is neither run nor acknowledged (its new
// owner receives it), so it never runs alongside the new owner's copy.
// Revoked must be cheap and safe for concurrent use.
type Revoker interface {
	Revoked(d Delivery) bool
}

// Releaser is an optional interface of a Subscription that counts
// deliveries (Delivery.Count). When the scheduler shuts down, it calls
// Release once, before Close, with the deliveries it fetched and never
// started: no handler ran for them, so handing them back is not a
// delivery, and the group's next member must see the count they had, not
// one more. Close still hands back every unacknowledged delivery; Release
// only says which of them do not count. A delivery whose handler ran (and
// failed, or was cut off by the shutdown) is not released: it counts. A
// driver that counts deliveries and lacks Release counts every hand-back,
// so routine restarts push messages toward DeadLetterConfig.MaxDeliveries.
type Releaser interface {
	Release(ds []Delivery)
}

// LocalFetcher is an optional interface of a Subscription whose Fetch
// hands out what is already in the process (the memory driver's log, or
// what the Kafka driver's partition readers fetched in the background)
// rather than waiting on a server while messages are there, and whose Ack
// does not wait on a server. A scheduler with one worker (Concurrency 1, no batches)
// then runs each delivery on the goroutine that fetched it: no hand-off
// between goroutines per message, and one goroutine per subscription.
// FetchesLocally must give the same answer every time.
type LocalFetcher interface {
	FetchesLocally() bool
}

// Partitioned is an optional interface of a Subscription whose deliveries
// come from numbered partitions of the topic: a key always lands in the
// same partition, and a partition's offsets increase in write order and
// are never reused (memdriver and Kafka). Group tables (Table) need it:
// a table's changelog is partitioned like its input, a member catches a
// partition's state up before it handles that partition, and a delivery
// at or below the offset a key's state was last written for is one whose
// effect is already in the table.
type Partitioned interface {
	// Position returns the partition and the offset of d.
	Position(d Delivery) (partition int, offset uint64)
	// Assignments returns a number that changes each time this member
	// gains a partition, or gains one back; it may change more often. It
	// is safe for concurrent use.
	Assignments() uint64
}

// TableLog is an optional interface of a Driver that keeps the changelogs
// of group tables (Table) and serves them to views (View).
type TableLog interface {
	// Changelog opens the changelog named name, creating it when it does
	// not exist yet. A changelog is partitioned like input, the topic its
	// table's group consumes, so that a key's state and its messages share
	// a partition number; input is "" for a reader (a View), which takes
	// the changelog as it is.
	Changelog(ctx context.Context, name, input string) (Changelog, error)
}

// Changelog is one group table's log of changes: for every key, the
// latest record is kept (older ones may be compacted away), in
// partitions numbered as the table's input topic's. Implementations are
// safe for concurrent use.
type Changelog interface {
	// Partitions is the number of partitions.
	Partitions() int
	// Append stores recs durably at the end of partition, in order, and
	// returns the offset the first one got (the others follow it).
	Append(ctx context.Context, partition int, recs []ChangelogRecord) (first uint64, err error)
	// Read fills dst with the records of partition kept at offset from
	// and after, in offset order, and returns how many; 0 when there is
	// none yet (it does not wait).
	Read(ctx context.Context, partition int, from uint64, dst []ChangelogRecord) (n int, err error)
	// End is the offset the next record appended to partition will get.
	End(ctx context.Context, partition int) (uint64, error)
	// Wait blocks until partition's End is beyond offset, or ctx ends.
	Wait(ctx context.Context, partition int, offset uint64) error
}

// ChangelogRecord is one change of a group table: the state of Key after
// the handler of an input message returned nil.
type ChangelogRecord struct {
	// Offset is the record's place in its partition, set by Append.
	Offset uint64
	// Key is the table key (the input message's Key).
	Key string
	// Value is the encoded state; nil when Deleted.
	Value []byte
	// Deleted marks the key's state as removed (a tombstone).
	Deleted bool
	// Input is the offset, in the input partition, of the message whose
	// handler wrote the record (Partitioned.Position): a redelivery of
	// that message or an earlier one finds its effect already applied.
	Input uint64
}

// ErrorReporter is an optional interface of a Subscription that meets
// errors outside Fetch and Ack (a background acknowledgment flush, an entry
// lost to trimming). Right after Subscribe the scheduler calls
// ReportErrorsTo with a function that forwards to its error handler (as a
// *SubscriptionError with Op "background"); until then, and without it, the
// driver reports them its own way. The function is safe for concurrent use.
type ErrorReporter interface {
	ReportErrorsTo(report func(error))
}

// LagReporter is an optional interface of a Subscription that knows how
// far its group is behind. Lag returns the number of messages of the topic
// this member is responsible for that the group has not acknowledged yet:
// published but not delivered, plus delivered and not acknowledged. Kafka
// counts the partitions assigned to this member (high watermark minus the
// committed offset); Redis counts the group's whole stream (entries not yet
// delivered plus the pending entries list). Lag must be safe for concurrent
// use and cheap enough to call every few seconds (it feeds the
// herald.consumer.lag gauge and health checks). It may do one round trip.
type LagReporter interface {
	Lag(ctx context.Context) (int64, error)
}

// StartPosition is where a consumer group that has no position in a
// topic yet (a new group, or nothing committed for a partition) starts
// reading it. Every driver takes it the same way, as its
// WithStartPosition option; the position a group resolves to is then its
// own, so a restart neither rereads nor skips.
type StartPosition int

const (
	// StartEarliest reads everything the topic still holds (the default).
	StartEarliest StartPosition = iota
	// StartLatest reads only what is written after the group first joins.
	StartLatest
)

// String returns "earliest" or "latest".
func (p StartPosition) String() string {
	switch p {
	case StartEarliest:
		return "earliest"
	case StartLatest:
		return "latest"
	}
	return fmt.Sprintf("StartPosition(%d)", int(p))
}

// Valid reports whether p is StartEarliest or StartLatest.
func (p StartPosition) Valid() bool { return p == StartEarliest || p == StartLatest }

// Pinger is an optional interface of a Writer or Reader that can tell
// whether its broker answers: one round trip, no side effect. The outbox
// relay's Check pings its target with it, so that a relay pointed at a
// broker it cannot use fails at start instead of quarantining rows.
type Pinger interface {
	Ping(ctx context.Context) error
}

// MessagingSystem is an optional interface of a Writer or Reader that names
// its broker for telemetry, as the OpenTelemetry messaging.system attribute
// ("kafka", "redis", "herald.memory", "herald.sql", "herald.outbox"). Without it the
// attribute is "herald".
type MessagingSystem interface {
	MessagingSystem() string
}

// Delivery is one message handed to the scheduler by a Subscription.
type Delivery struct {
	// Message is the delivered message; read-only to everyone after Fetch.
	Message *Message
	// Count is how many times the driver has delivered this message to
	// the group, this time included, when the driver knows (Redis pending
	// entries, redeliveries after a member left); 0 means unknown (treat as 1).
	// It counts attempts: deliveries a handler may have run, including to
	// a member that died holding the message; a graceful hand-back of a
	// delivery no handler started does not count (see Releaser).
	Count int
	// Ref and Seq are the driver's own bookkeeping (a partition, an offset,
	// a stream entry); nothing else reads them.
	Ref any
	Seq uint64
}

// MaxNameLength bounds topic and group names; it fits Kafka (249), Redis
// keys and SQL identifiers after a prefix.
const MaxNameLength = 200

// ValidateName checks a topic or group name: 1 to MaxNameLength bytes of
// letters, digits and ".-_:/". These names become Kafka topics, Redis keys
// and values in SQL rows, so anything else is refused before it reaches a
// broker. kind names the thing in the error ("topic", "group").
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return &NameError{Kind: kind, Name: name, Reason: "empty"}
	case len(name) > MaxNameLength:
		return &NameError{Kind: kind, Name: name, Reason: "longer than 200 bytes"}
	}
	for i := 0; i < len(name); i++ {
		if !nameByte[name[i]] {
			// Every byte of a multi-byte character is outside the set, so
			// a name that is not UTF-8 ends up here too.
			if !utf8.ValidString(name) {
				return &NameError{Kind: kind, Name: name, Reason: "not valid UTF-8"}
			}
			return &NameError{Kind: kind, Name: name, Reason: "only letters, digits and . - _ : / are allowed"}
		}
	}
	if name == "." || name == ".." {
		return &NameError{Kind: kind, Name: name, Reason: "reserved"}
	}
	return nil
}

// nameByte marks the bytes a name may hold: ASCII letters and digits and
// . - _ : / (one table lookup per byte: names are checked on every
// publish).
var nameByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || c == '/'
	}
	return t
}()
