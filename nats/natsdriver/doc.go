// Package natsdriver is a herald.Driver on NATS JetStream, through
// nats.go's jetstream package.
//
//	nc, _ := nats.Connect(nats.DefaultURL)
//	js, _ := jetstream.New(nc)
//	d, err := natsdriver.New(js, natsdriver.WithStreamPrefix("SHOP_"), natsdriver.WithSubjectPrefix("shop"))
//	...
//	bus, err := herald.NewBus(d, ...)
//
// The driver never closes the connection it was given: stop the Bus, then
// Close the driver, then close the connection.
//
// # Streams, subjects and names
//
// Each herald topic is one stream, created on first use (Write or
// Subscribe) with one subject, the configured storage (file by default),
// replicas, max age and duplicate window, and limits retention:
//
//	topic "orders.placed"  ->  stream HERALD_orders_placed, subject herald.orders_placed
//
// Stream names, consumer names and subject tokens cannot hold every
// character herald names allow, so a name passes through Token: letters,
// digits, '-' and '_' stay, and '.', ':' and '/' each become '_'. Two
// names with one token ("a.b" and "a_b") would share a stream or a
// consumer; the driver writes the herald name into the description of
// each stream and consumer it creates, and refuses the second name with
// herald.ErrInvalidName, from any process.
//
// With WithSubjects the driver maps topics onto streams the application
// manages instead: it publishes topic T on subject(T), creates no stream,
// and puts each group's consumer on the stream that takes that subject,
// filtered to it, named Token(group)+"_"+Token(topic).
//
// # Wire format
//
// A herald message is a NATS message: Data is the payload, and the headers
// carry the rest. Message.ID travels as Nats-Msg-Id, which the server
// uses to drop a second copy published within the stream's duplicate
// window; Key as Herald-Key, ContentType as Herald-Content-Type, Time as
// Herald-Time (RFC 3339 with nanoseconds, UTC); each user and herald-
// header as a header of its own. Two kinds of message are kept out of that
// window, with their ID in Herald-Id instead: a dead-letter entry or a
// redrive (a herald-dlq-* or herald-redrive-* header) has no Nats-Msg-Id,
// since it writes an ID the stream may hold already on purpose (two groups
// dead-lettering one message, a redrive within the window) and the server
// would drop it while Write reports it stored; a second copy of one is
// delivered and herald's deduplication skips it. With WithSubjects, where
// one stream may hold several topics, the Nats-Msg-Id is the topic, a
// space and the ID. Header names beginning with "Nats-", and the driver's
// own five, are refused in user headers, and so are names NATS cannot
// carry (empty, or with a ':' or white space): Write fails with
// herald.ErrInvalidName. A value with a line break (a dead letter's
// reason with a stack, say), which the NATS header block cannot carry,
// travels with '%', CR and LF percent-encoded and its name listed in
// Herald-Escaped, and comes back as it was written. The size
// limit (WithMaxMessageBytes, default 1 MiB, never above the server's
// max_payload) counts the payload and the encoded header block.
//
// # Groups and consumers
//
// Each group is one durable pull consumer on the topic's stream, named
// Token(group), with explicit acknowledgment, the configured AckWait,
// MaxDeliver unlimited (herald's dead-letter middleware decides when a
// message has been tried enough, not the server, which would drop it
// silently) and no inactivity threshold: a group whose members are all
// gone keeps its place and its unacknowledged messages for as long as the
// consumer exists, and DeleteGroup removes it. The members of a group
// share its consumer and compete for its messages. The consumer's
// MaxAckPending (the server's default, 1000 on a pull consumer) bounds
// what the group holds unacknowledged; a member asks for no more than its
// scheduler has room for.
//
// Fetch sends pull requests of len(dst) messages that wait up to the fetch
// wait on the server and returns as soon as some arrived. Ack sends an
// acknowledgment and returns without waiting for the server: each one
// carries a reply subject on the subscription's own inbox, and the
// server's confirmations are collected in the background (a release
// record is deleted then). An acknowledgment that is lost (with the
// connection, or with a process that dies right after Ack) is not
// confirmed; one not confirmed within the AckWait is reported, and its
// message is delivered again after the AckWait (deduplicate by ID, see
// "Duplicates"). Close waits for the outstanding confirmations before it
// hands anything back. A delivery held
// longer than half the AckWait (a long handler, or a delivery waiting
// behind its key) is signalled in progress every quarter of the AckWait
// until it is acknowledged, so the server does not deliver it again while
// it is worked on. Close hands back the deliveries still held, in stream
// order, with a negative acknowledgment: the group's next member receives
// them at once. A member that dies without Close leaves its deliveries to
// the server, which delivers them again when their AckWait ends.
//
// # Order
//
// JetStream has no partitions, so what holds for messages of one key is:
//
//   - Write publishes a batch in slice order on one connection, and the
//     server stores it in that order (except that nats.go retries a
//     publish no stream answered, a stream leader election say, and the
//     retried one may land after later ones); concurrent Writes interleave.
//   - A group with one member receives its messages in stream order, so
//     per key in publish order; a handler error is retried in place by
//     the scheduler, holding its key, and a graceful hand-back comes back
//     first, in order.
//   - A group with several members does NOT keep per-key order: the
//     server hands the messages of one key to whichever member pulls, and
//     their handlers run at the same time. Run one member per group where
//     order matters (or use the Kafka, Redis or SQL drivers, whose
//     partitions or single reader keep it).
//   - After a member died (or a pull request was lost with the
//     connection), its unacknowledged messages come back after the AckWait,
//     behind later messages of their keys that were delivered meanwhile.
//
// # Duplicates
//
// Delivery is at least once. The server drops a retried publish with the
// same Message.ID within the duplicate window (default 2 minutes), so a
// Write retried after an error does not store twice inside it. A message
// is delivered again when its member died (with it, any acknowledgment
// Ack had sent that the connection had not written yet), when an
// acknowledgment was lost with the connection, and after a server restart lost acknowledgments the
// server had not written to its consumer state yet (a SIGKILLed server
// keeps every acknowledged publish, but may deliver again what was
// acknowledged shortly before). Deduplicate by Message.ID
// (herald.WithDedup) where a second run matters.
//
// # Delivery counts
//
// Delivery.Count counts attempts, as herald's dead-letter middleware
// needs. The server counts every delivery (NumDelivered, which
// NumDelivered returns for a delivery) and cannot take a count back, so a
// delivery handed back because the scheduler shut down before starting it
// would count as much as one whose handler ran. Subscriptions are
// herald.Releasers: Release, and Close for what a pull request brought
// after the last Fetch, record each such hand-back in a key-value bucket
// (WithReleaseBucket), keyed by stream, consumer and stream sequence,
// before the hand-back; Fetch subtracts the record from NumDelivered for a
// redelivery (one read, only when NumDelivered is above 1); the
// confirmation of its Ack deletes the record. Counted as attempts all
// the same: deliveries of a member that died holding them, and messages
// the server sent for a pull request the connection lost (the driver never
// saw them). A record that cannot be
// read leaves Count 0 (unknown) and is reported.
//
// # Dead letters
//
// herald.WithDeadLetter writes "<topic>.dlq" through Write like any topic,
// so it has a stream of its own (or its subject, with WithSubjects).
// Driver.DeadLetters reads it for package dlq and the herald command: a
// position is the stream sequence ("1042"); List and Get read with a
// short-lived consumer of their own, without acknowledgments, deleted when
// the read ends (with direct gets on a stream without limits retention);
// MarkRedriven deletes the redriven messages from the stream, so nothing
// else records marks and every process sees the same. It creates no
// stream. See DeadLetters for the details.
//
// # Reconnects and restarts
//
// nats.go reconnects by itself. While the server is away Fetch fails (the
// scheduler calls it again after a backoff), a pull request the server
// lost is abandoned a second after its expiry, an acknowledgment not
// confirmed within the AckWait is reported (its message comes again),
// and Write waits for the server's acknowledgments until
// its context ends. With file storage a server restart keeps the streams
// and the consumers: nothing whose Write returned nil is lost.
//
// # Delayed delivery
//
// Off by default; WithDelays turns it on. Without it Write refuses a
// message whose herald.HeaderDeliverAt lies in the future with a
// *herald.DelayError wrapping herald.ErrDelayNotSupported, writing
// nothing of the batch, and a herald.Publisher refuses it before that. A
// due time in the past is an ordinary message either way.
//
// With it, Write puts a delayed message in the delay stream
// (DelayStreamName, "<stream prefix>DELAYED", subjects "<subject
// prefix>_delayed.>", work-queue retention) with herald.HeaderDelayTopic
// naming its topic, in the same batch of publishes as the rest of the
// Write. A mover forwards it: one per Driver, started by the first
// Subscribe or by StartDelayMover, stopped by Close, all of them members
// of the stream's one durable consumer. The mover hands a message that is
// not due back to the server with a negative acknowledgment delayed by
// what remains; the server delivers it again then, and the mover writes
// it through Write to its topic, keeping HeaderDeliverAt (now in the
// past), and acknowledges it once the server stored the copy. So:
//
//   - Never before due, by the mover's clock.
//   - At-least-once: a mover that dies between the forward and the
//     acknowledgment leaves the message to the server, which delivers it
//     again after the AckWait; the forward's Nats-Msg-Id is the ID with
//     the due time, so the topic stream's duplicate window drops the
//     second copy (and does not drop a WithRetryLater round, which has the
//     ID and another due time).
//   - Precision: the server's timer and a pull request that is always
//     open; DelayPrecision reports the fetch wait, the bound while a mover
//     runs. What a killed mover held comes back after the AckWait (30 s by
//     default), late by that much.
//   - Order: one mover forwards the messages of one key in due order
//     (equal due times in stream order). As for a consumer, what a killed
//     mover held comes back behind later messages of its keys, and with
//     several movers (several processes) two messages of one key due
//     within a few milliseconds of each other can swap. An undelayed
//     message overtakes a delayed one of its key.
//   - Cost: a delayed message is stored twice (the delay stream, then its
//     topic's); every waiting one is an unacknowledged delivery of the
//     movers' consumer, which has no limit of those (MaxAckPending -1), and
//     the server keeps a redelivery timer for it (measured: 100,000
//     waiting messages took the server from 21 to 104 MB resident). A
//     waiting message that comes to a mover before it is due (after a
//     server restart, say) is handed back again, never forwarded early.
//
// # Group tables
//
// The driver keeps no group tables yet (herald.Table): a subscription
// given herald.WithTable fails with herald.ErrTablesNotSupported (a stream's consumer has no partitions for a table's state to follow).
package natsdriver
