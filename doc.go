// Package herald is an event bus for Go services: typed events go out
// through a Publisher and a pluggable driver; subscribers receive them
// through the same driver, wrapped in middleware (retry, deduplication,
// dead-letter topic, recover, logging, telemetry).
//
//	broker, err := memdriver.New()                         // or kafkadriver, redisdriver
//	bus, err := herald.NewBus(broker)
//	herald.MustRegister[OrderPlaced](bus, "orders")        // event type -> topic
//	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
//		return charge(ctx, e)                              // nil acknowledges
//	}, herald.WithRetry(herald.RetryConfig{}), herald.WithDedup(store), herald.WithDeadLetter())
//	err = bus.Start(ctx)
//	err = bus.Publish(ctx, OrderPlaced{ID: "o-1"})
//	err = bus.Shutdown(ctx)
//
// The user side is small: NewBus, Register, Publish, Subscribe (or Handle
// for raw messages), Start and Shutdown. The driver side is driver.go: a
// driver implements Writer and Reader and passes drivertest.Run. The
// drivers are in modules of their own (memory/memdriver here; kafka,
// redis; sql for the outbox), so a service builds only the clients it
// uses.
//
// # Delivery
//
// At-least-once: a message is acknowledged to its driver only after its
// handler chain returned nil, or after the dead-letter topic took it.
//
// Keyed concurrency: each subscription runs up to WithConcurrency handlers
// at once; messages with one Key never run concurrently and run in the
// order the driver delivered them (drivers with partitions keep that order
// across the members of a group). A message whose key has one running
// waits behind it, so one slow or failing key holds up only itself. A
// subscription's fetching goroutine reads ahead of its workers, within
// SchedulerConfig.MaxInFlight; with one worker on a driver whose Fetch
// hands out what is already in the process (LocalFetcher: the memory and
// Kafka drivers) the fetching goroutine runs the handler itself.
//
// Redelivery in place: when the chain returns an error, the message is not
// acknowledged; the subscription runs it again after a backoff (doubling
// to SchedulerConfig.MaxRedeliveryBackoff, with jitter), its key blocked,
// until it succeeds or the subscription shuts down. The retry and
// dead-letter middleware decide when to stop; without them a message that
// always fails blocks its key, and only its key, and every failure goes to
// the error handler.
//
// Retry later (WithRetryLater): instead of being redelivered in place, a
// message the chain gave up on is re-published to its topic as a delayed
// copy addressed to the group (HeaderRetryGroup, HeaderRetryRound), due
// after a backoff, and acknowledged, so its key's later messages go on;
// after the configured rounds it is dead-lettered. It gives up per-key
// order for that key, which is why it is opt-in. The driver must be a
// DelayedWriter.
//
// Circuit breaker (WithBreaker): after a number of failed attempts in a
// row a subscription stops running its handler for a cool-down, holding
// its messages (nothing is acknowledged, retried or dead-lettered), then
// probes with one attempt and resumes by itself. Throttle (WithThrottle):
// a token bucket shared by a subscription's workers bounds how often its
// handler runs.
//
// Shutdown stops fetching, lets running handlers finish (bounded by its
// context), releases fetched messages that have not started to the driver
// without counting them as deliveries (Releaser), flushes
// acknowledgments, and leaves no goroutine behind.
//
// A handler's context carries the delivered message: CorrelationID and
// CausationID read it, so events it publishes continue the chain;
// DeliveryCount and Attempt say which delivery and attempt is running.
//
// Delayed delivery. herald.DeliverAt(ctx, t) and herald.DeliverAfter(ctx,
// d) make a Publish due later: the messages carry HeaderDeliverAt, and a
// driver that is a DelayedWriter (memdriver, redisdriver, sqldriver,
// kafkadriver and natsdriver with WithDelays, and the SQL outbox's Writer
// in a transaction) holds them until they are
// due; no subscriber receives one earlier.
// Any other Writer is refused them (ErrDelayNotSupported), so a delay is
// never dropped silently. A time in the past delivers at once; one more
// than MaxDelay ahead is an error (ErrInvalidDelay). Messages of one key
// arrive in the order they become due.
//
// # Middleware order
//
// The Subscribe options install the built-in middleware in one fixed
// order, outermost first, so that no option can silently defeat another:
//
//  1. Observer: the "process <topic>" span (unless WithoutTelemetry), a
//     child of and linked to the sender's span; the duration and outcome
//     metrics; a log line per delivery (a failure left for redelivery at
//     warn level, the rest at debug); and WithHandleHook's result for
//     every delivery, skipped ones included. Everything inside runs with
//     the span in its context, and reports retries, duplicates and dead
//     letters to the observer, which makes each a span event, a counter
//     and a log line (a dead letter at warn level) in that context.
//
//     Then the subscription dispatches by event type: a message the group
//     does not handle (another event type on a shared topic, a redrive or
//     a retry copy addressed to another group by HeaderRedriveGroup or
//     HeaderRetryGroup) is acknowledged
//     here without running anything, with outcome "skipped". The observer
//     wraps this dispatch once per topic and group; the layers below wrap
//     each handler. With WithBreaker, a message that arrives while the
//     breaker is open waits here, before deduplication, until the breaker
//     would let it run.
//
//  2. Dedup (WithDedup): claims (group, message ID) before anything runs,
//     commits when the chain inside succeeded (a dead-lettered message
//     counts as done), releases the claim when it failed so the
//     redelivery can run. A redrive addressed to the group is keyed by its
//     redrive count too, so it runs once more.
//
//  3. Dead letter (WithDeadLetter; always on for undecodable payloads):
//     takes what retry gave up on, writes it to "<topic>.dlq" with a
//     DeadLetterRecord, and only then lets the message be acknowledged.
//
//     Retry later (WithRetryLater) sits just inside dead letter: it takes
//     what retry gave up on, unless permanent, and writes it back to its
//     topic as a delayed copy for the next round, then lets the delivery
//     be acknowledged; a failed write leaves it unacknowledged. After the
//     last round it passes the failure (*RetryLaterError) on to dead
//     letter. It is outside retry, so retry's attempts run within a round,
//     and outside the breaker, so a message the breaker holds spends no
//     round.
//
//  4. Retry (WithRetry): reruns the attempt with backoff and jitter; a
//     Permanent error stops it. It sits inside dead letter, so dead
//     lettering never swallows a retry.
//
//  5. Breaker and throttle (WithBreaker, WithThrottle), around each
//     attempt: the breaker admits the attempt (one probe when half-open)
//     and records its outcome; a message whose failure opened it, or that
//     failed while it was open, is held and runs again when it next
//     admits it, without going back to retry or dead letter. The throttle
//     takes a token. Both waits are bounded by the delivery's context and
//     end at shutdown (ErrStopping), leaving the message unacknowledged.
//
//  6. Attempt timeout (RetryConfig.AttemptTimeout): a deadline per attempt,
//     inside retry and inside the waits of 5, so a timed-out attempt is
//     retried and a wait is not cut short by it.
//
//  7. Recover: a panic becomes a *PanicError that retry and dead letter see.
//
//  8. Your middleware (WithMiddleware), once per attempt, in the order given.
//
//  9. Table (WithTable): the delivery's partition is caught up from the
//     changelog, a delivery already applied is acknowledged without
//     running the handler, and what the handler staged is written when it
//     returns nil (see Table).
//
//  10. Decode and your handler.
//
// # Batch handlers
//
// SubscribeBatch and Bus.HandleBatch run a handler on up to WithBatch's
// size messages at once (a batch is handed over when full, or linger after
// its first message arrived). The subscription's scheduler is the same:
// a collector takes ready deliveries, each with the deliveries of its key
// waiting behind it, into a batch, and WithConcurrency runners each run
// one batch at a time; a key stays busy until its batch settled. So
// per-key order holds within a batch (delivery order) and across batches
// (a key's later message never enters a batch while an earlier one is
// unsettled).
//
// The built-in middleware act per message with the subscription's
// settings: dedup claims each message and leaves the handled ones out;
// undecodable messages and those past MaxDeliveries are dead-lettered one
// by one; the handler's nil acknowledges the batch; a *BatchError fails
// only the items it names, which retry reruns as a smaller batch and dead
// letter takes one by one when their attempts are spent; any other error
// (or a panic) fails every item. After an item of a key fails, the later
// items of that key in the batch wait and run again once it is settled
// (ErrHeldBehind when it stays unsettled). Items left unsettled are
// redelivered in place, as a smaller batch. WithMiddleware, WithBreaker,
// WithThrottle and WithRetryLater are refused.
// One "process <topic>" span per run of a batch, linked to every
// sender's span; the metrics and the handle hook are per message.
//
// # Group tables
//
// A subscription given WithTable keeps a Table: a value per message key
// that its handler reads and writes with Get, Set and Delete, kept in a
// changelog by drivers that are TableLogs (memory and Kafka). Updates
// are written before the acknowledgment, each partition's state follows
// the partition from member to member, and each input message changes
// the table once (see Table for the exact promise). A View follows a
// whole table for any process. memtest.Tester runs processors in unit
// tests.
//
// # Options
//
// An option is accepted only where it acts: Option configures a Bus,
// PublisherOption a Publisher (and a Bus's), SubscribeOption one
// subscription, RegisterOption one event type. A bad value is an error
// from the constructor that takes it (an *OptionError wrapping
// ErrInvalidOption, every problem at once), never silently corrected. Size
// limits are layered: see WithMaxMessageBytes.
//
// # Errors
//
// Sentinel errors and typed errors, usable with errors.Is and errors.As:
// ErrNilEvent, *UnregisteredError (ErrUnregisteredEvent), *NameError
// (ErrInvalidName), ErrMessageTooLarge, *DecodeError (ErrUndecodable),
// *RetryError, *PanicError, *SubscriptionError, *OptionError
// (ErrInvalidOption), ErrClosed, ErrBreakerOpen and ErrStopping (a breaker
// or throttle wait cut short by shutdown), *DelayError (ErrDelayNotSupported,
// ErrInvalidDelay), *RetryLaterError. Every driver's errors are a *DriverError
// (driver, operation, topic, group, cause) or, for a batch Write that was
// partly written, a *WriteError listing each *MessageError. There is no
// package-level mutable state.
package herald
