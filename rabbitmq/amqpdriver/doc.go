// Package amqpdriver is a herald.Driver on RabbitMQ, through AMQP 0-9-1
// (github.com/rabbitmq/amqp091-go).
//
//	d, err := amqpdriver.New("amqp://guest:guest@localhost:5672/")
//	if err != nil { ... }
//	defer d.Close()
//	bus, err := herald.NewBus(d)
//
// # Connections
//
// The driver owns its connections: New dials the URL, NewDial calls a
// DialFunc, for each connection it needs, and Close closes them. It keeps
// two: one for publishing and one shared by its subscriptions, each
// dialled on first use. amqp091 does not recover a lost connection or a
// channel the broker closed; the driver does. Write opens the publishing
// channel again on the next call (the Write that met the loss fails, see
// Write), and a subscription's next Fetch consumes again, dialling a new
// connection when the old one is gone, after a backoff between failed
// attempts (WithReconnectBackoff). Everything is declared again (durable
// declarations are idempotent), so a queue deleted under a running group
// comes back, empty.
//
// # Topology
//
// Topic T is a durable topic exchange, prefix+T (WithNamePrefix, default
// "herald."), or one shared exchange (WithExchange). Group G of T is a
// durable queue, prefix+T+"@"+G (Driver.QueueName), bound to the
// exchange so that it receives every message of T; every member of the
// group consumes from that queue, with manual acknowledgments and a
// prefetch window (WithPrefetch). Queues are quorum queues by default
// (WithQueueType). A queue receives what is published after it was
// declared, at the group's first Subscribe: RabbitMQ keeps no history for
// a queue that does not exist yet, so herald.StartPosition has no
// meaning here and the driver takes no WithStartPosition option. Queues
// and exchanges outlive the driver; delete them with the broker's tools
// when a group or a topic is gone for good.
//
// # Messages
//
// A herald message is published persistent (delivery mode 2) with ID as
// the message-id property, ContentType as content-type, Time as the
// timestamp property (AMQP keeps seconds; the HeaderTimeNanos header
// keeps nanoseconds, and the reader uses it), Headers as AMQP headers
// (string values), the key in the HeaderKey header and, with an exchange
// per topic, as the routing key (when it is at most 255 bytes), and Data
// as the body. Write waits for publisher confirms of the whole batch: it
// publishes every message, then waits for every confirm. Sizes:
// WithMaxMessageBytes and MaxPropertyBytes.
//
// # Order and duplicates
//
// Delivery is at-least-once: a message is removed from its group's queue
// when a member acknowledges it, and the broker puts back every delivery
// not acknowledged when its channel or connection closes (Close, a crash,
// a lost network). A message whose handler ran but whose acknowledgment
// was lost with the connection is delivered again: deduplicate by
// Message.ID (herald.WithDedup) where that matters. What is acknowledged
// and sent is never delivered again.
//
// Acknowledgments are coalesced: those that extend the run of acknowledged
// deliveries from the oldest go as one basic.ack with multiple set, when 64
// wait, 10 ms after the first, when Fetch has nothing to hand out, and at
// Close; one out of order goes on its own at once, so it never waits
// behind a slow handler. A process killed within those 10 ms leaves those
// acknowledgments unsent: their messages come again, as after any crash.
//
// Order, per mode:
//
//   - Default (members share the queue): the broker delivers a queue in
//     publish order (one Write's messages in slice order; concurrent
//     Writes in the order the broker received them), spreading
//     deliveries across members up to each one's prefetch. A group with
//     one member receives every key, indeed the whole topic, in publish
//     order, and the herald scheduler keeps per-key order among its
//     workers. With several members, two messages of one key can go to
//     two members and be handled at once, in either order: per-key order
//     does not hold across members. Use this mode for work that does not
//     depend on order, or run one member per group.
//   - WithSingleActiveConsumer: the broker delivers the queue to one
//     member at a time; the others wait, and the longest-waiting takes
//     over when the active one leaves or dies. Per-key order, and the
//     total order of the queue, hold within the group as with a single
//     member. When the active member leaves holding unacknowledged
//     deliveries, they go back to the queue ahead of the rest, in their
//     order (quorum and classic queues alike), so the next member
//     receives them first; a message the old member had handled
//     without its acknowledgment arriving comes again (a duplicate, in
//     place).
//
// A delivery is also put back by the broker, not by the handler: herald
// retries a failed handler in the process (herald.SchedulerConfig), so a
// handler error keeps the message, and the order behind it, where it is.
//
// # Delivery counts
//
// Delivery.Count is 0 (unknown) and subscriptions are not
// herald.Releasers. Quorum queues count deliveries (x-delivery-count),
// but every hand-back counts, including the prefetched deliveries a
// member never started when it shuts down, and AMQP 0-9-1 has no way to
// hand one back uncounted; surfaced as Delivery.Count, routine restarts
// would push messages toward herald.DeadLetterConfig.MaxDeliveries. The
// x-delivery-count header is removed from the headers a handler sees. A
// handler that crashes its process on a message therefore meets it again
// without limit: the dead-letter middleware's in-process attempts still
// apply to handler errors.
//
// # Lag
//
// Subscriptions are herald.LagReporters: the queue's messages ready for
// delivery (a passive queue.declare) plus the deliveries this member has
// received and not acknowledged. AMQP does not tell what other members
// hold, and a delivery on its way from the queue to the member is, for
// a moment, counted by neither.
//
// # Dead letters
//
// A queue hands each message to one consumer and keeps no history, so
// the dead letters of a topic no group consumes would be dropped, and
// those of one that does could not be listed. The driver therefore keeps
// every retained topic (WithRetainedTopics; by default the dead-letter
// topics, "<topic>.dlq") in a stream queue as well (StreamName), declared
// and bound to the topic's exchange by the first Write to the topic, so
// that Driver.DeadLetters, a dlq.Store, can list, look up and redrive
// them, and herald dlq -driver rabbitmq with it. The stream keeps them
// until its retention drops them (WithRetention: a week and 1 GiB by
// default). Streams need RabbitMQ 3.9 or later; on an older broker pass
// WithRetainedTopics(nil), and dead letters reach only the groups
// subscribed to their topic.
//
// # Reserved headers
//
// HeaderKey and HeaderTimeNanos (both under herald.HeaderPrefix) carry the
// key and the time; the reader removes them, and x-delivery-count.
//
// Delayed delivery is not supported yet: Write refuses a message whose
// herald.HeaderDeliverAt lies in the future with a *herald.DelayError
// wrapping herald.ErrDelayNotSupported (herald.RefuseDelayed), writing
// nothing of the batch, and a herald.Publisher refuses it before that. A
// due time in the past is an ordinary message.
//
// # Group tables
//
// The driver keeps no group tables yet (herald.Table): a subscription
// given herald.WithTable fails with herald.ErrTablesNotSupported (a queue has no partitions for a table's state to follow).
package amqpdriver
