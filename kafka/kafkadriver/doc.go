// Package kafkadriver is herald's driver for Apache Kafka, built on
// github.com/segmentio/kafka-go. A *Driver is a herald.Driver:
//
//	d, err := kafkadriver.New([]string{"localhost:9092"}, kafkadriver.WithAutoCreateTopics())
//	...
//	defer d.Close()
//	bus, err := herald.NewBus(d)
//
// The Default* constants give every setting's default, each with its
// Option. New reports every invalid option at once.
//
// # Messages
//
// Message.Key is the Kafka record key (an empty key is a null key), Data
// the value, Time the record timestamp (milliseconds), ID and ContentType
// travel in the headers herald-id and herald-content-type, and every other
// header is a Kafka header. Reading maps them back; a header repeated in a
// record keeps its last value. A record without a herald-id header (from
// another producer) gets the ID "<topic>/<partition>/<offset>" (RecordID),
// the same on every delivery, so deduplication and redrive by ID work for
// it as for herald's own messages. Topic names must suit both herald and Kafka:
// letters, digits, '.', '_' and '-', so herald's ':' and '/' are refused
// with herald.ErrInvalidName.
//
// # Writing
//
// Write places a keyed message on Partition(key, n), the partition the
// Java client's default partitioner picks (murmur2), so producers in other
// languages agree on where a key lives; messages without a key are spread
// over partitions in runs of the batch size. Each broker gets one produce
// request at a time carrying the next batch of every partition it leads;
// what is written while a request is in flight makes up the next one. So a
// single Write never waits for a timer (WithBatchTimeout adds a linger) and
// batches grow with load. A partition never has two batches in flight, so
// the order of a key holds across retries. Writes wait for all in-sync
// replicas by default (WithRequiredAcks).
//
// kafka-go's own Writer is not used: it holds every batch until it is full
// or its BatchTimeout passes, which caps synchronous single-message
// publishing at about concurrency/BatchTimeout; and it sends one request
// per partition.
//
// Write checks every message before sending any (names, and the size of
// key, value and headers against WithMaxMessageBytes, which returns
// herald.ErrMessageTooLarge). A batch the broker finds too large is split
// until only the message that is too large by itself fails. Retriable
// broker errors (a leader moving, a topic being created) are retried with
// backoff, up to WithMaxAttempts; a retried request can write a message
// twice. When some messages fail, Write returns a *herald.WriteError
// naming each one with its topic, partition and cause; after a failure the
// rest of that Write is not sent (ErrNotSent), so what a Write wrote to a
// partition is a prefix of its messages there. If ctx ends first, messages
// not yet sent are withdrawn.
//
// # Reading
//
// Subscribe joins the Kafka consumer group named by the group argument
// (kafka-go's ConsumerGroup, with explicit generations). Each member
// fetches its assigned partitions, one connection and goroutine per
// partition, and hands the messages to Fetch in offset order, so the
// scheduler sees every key in order and runs different keys concurrently.
// A member notices new partitions, and a topic created after it joined,
// within WithPartitionWatchInterval; while its topic does not exist it
// rejoins once per interval (kafka-go alone would rejoin in a tight loop).
//
// Offsets. Per partition the subscription tracks the fetched messages and
// which are acknowledged, and commits the offset of the lowest
// unacknowledged one (or the end of what was fetched when all are): a
// message whose handler fails is never committed past, however far the
// other keys of its partition have moved. Commits are batched every
// WithCommitInterval, at a rebalance and at Close. A group's start
// position for a partition without a committed offset (WithStartPosition:
// earliest or latest) is committed as soon as it is resolved, so a restart
// does not skip what was written in between. A committed offset that is
// out of range (retention, a re-created topic) is reset the same way and
// logged.
//
// Rebalances. When the group rebalances, the member stops handing out
// messages of the ending generation, waits up to WithRevokeTimeout for the
// deliveries already handed out to be acknowledged, commits, and only then
// rejoins: the next owner of a partition starts after everything that was
// finished. A delivery still unacknowledged at that point is abandoned: its
// Ack returns ErrRevoked and commits nothing, and the message is delivered
// again to the partition's next owner (a duplicate, never a loss). One the
// scheduler has fetched but not started is skipped (the subscription is a
// herald.Revoker), so it does not run beside the new owner's copy.
// kafka-go sends no heartbeats during that wait, hence the bound.
//
// Backpressure. The scheduler bounds the deliveries in flight; in addition
// a partition stops fetching when WithMaxUncommitted messages have been
// fetched past its lowest unacknowledged one, so a key that keeps failing
// eventually holds its partition rather than memory growing without bound.
//
// Delivery.Count. Kafka keeps no delivery count. A subscription reports 0
// (unknown) for an offset this Driver has not delivered to the group
// before, since another member or process may have, and for a redelivery it
// has seen (after a rebalance, or a Subscription closed with unacknowledged
// messages) how many times this Driver delivered it: a lower bound.
// Deliveries the scheduler fetched and never started are released
// (herald.Releaser) and do not count.
//
// Close. Subscription.Close commits what is acknowledged and leaves the
// group, bounded by its context; with a context that has ended it drops
// the connections without committing, as a crash would, and the group
// drops the member after the session timeout. When the final commit is
// refused because the group moved on without the member (UNKNOWN_MEMBER_ID,
// ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID: the broker
// dropped it in a rebalance), nothing is wrong for the caller, since the
// new owners receive what was not committed: Close reports it to the
// scheduler's error handler and returns nil. Other commit failures are
// Close's error. Commit failures at the end of a generation that is not
// the last (a rebalance) go to the same error handler. No goroutine of a
// subscription outlives its Close; no goroutine of the Driver outlives
// Close.
//
// # Limitations
//
//   - No idempotent or transactional producer (kafka-go has none): retried
//     writes may duplicate, and a request that timed out but is applied
//     after its retry leaves its copies behind later messages of the
//     partition; consumers should deduplicate by Message.ID.
//   - Reads are read-uncommitted, and kafka-go's batch reader passes
//     transaction control records through as messages (kafka-go issues
//     #1332, #1446): on a topic written by transactional producers of other
//     clients, their commit and abort markers (a 4-byte key, no headers)
//     and aborted records are delivered. herald's writer never writes them.
//   - kafka-go speaks the classic consumer group protocol with eager
//     rebalancing: every rebalance revokes all of a member's partitions.
//   - SASL/SCRAM credentials are not SASLprep-normalized.
//
// Errors. Besides Write's *herald.WriteError, what the Driver, its
// subscriptions and its dead-letter Store return, and report to an error
// handler, is a *herald.DriverError (Driver "kafkadriver") naming the
// operation, topic and group, and wrapping the cause: ErrClosed (which
// wraps herald.ErrClosed), ErrRevoked, ErrRebalancing, herald's sentinels,
// or kafka-go's errors.
//
// Operations: a subscription reports its lag (herald.LagReporter): for the
// partitions assigned to the member, the high watermark minus the group's
// committed offset, with no request while its fetches are fresh and one
// ListOffsets round trip otherwise (as after this Driver wrote to the
// partition, so that a Lag after a Write counts it); ErrRebalancing while
// it joins. Acks show in it after the next commit (WithCommitInterval).
// Driver.DeadLetters reads dead-letter topics for package dlq and records
// redriven positions in a compacted "<topic>.redriven" sidecar topic.
//
// Testing: the package's tests run against an in-process kfake broker
// (github.com/twmb/franz-go/pkg/kfake), or against HERALD_KAFKA_BROKERS.
//
// # Delayed delivery
//
// A message carrying herald.HeaderDeliverAt in the future is written to
// a delay tier topic (DelayTopic: "herald.delay.<hold>" for each hold of
// WithDelayTiers) instead of its topic, with HeaderDelayTopic naming its
// topic and HeaderDelayReady when it may leave the tier. The mover, one
// member per Driver in a consumer group per tier (started by Subscribe
// or StartDelayMover, stopped by Close), holds each record until it is
// ready and writes it again: to the next tier, or to its topic once due.
// A tier offset is committed only after that Write was acknowledged, so
// a crashed mover causes duplicates, never losses. Messages of one key
// arrive in due order. Delays are off unless WithDelays: a Driver without
// it creates no tier topics, runs no mover and refuses delayed messages.
//
// # Group tables
//
// The Driver is a herald.TableLog and its subscriptions are
// herald.Partitioned, so a subscription may keep a herald.Table. A
// table's changelog is the topic named as the table, created by the
// first member that opens it with the input topic's partition count and
// cleanup.policy=compact (an existing changelog must have as many
// partitions as the input). Each update is produced to the partition of
// its key, acknowledged by every in-sync replica, before the input
// message is acknowledged; the input offset travels in the
// herald-table-input header and a deleted key is a record with a null
// value. A member catches a partition up at the first delivery of each
// generation. Compaction removes tombstones after the topic's
// delete.retention.ms: a delete redelivered later than that is applied
// again.
package kafkadriver
