// Package redisdriver is a herald driver on Redis Streams, through go-redis v9.
//
//	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
//	defer client.Close()
//	drv, err := redisdriver.New(client)
//	...
//	bus, err := herald.NewBus(drv)
//
// New takes a goredis.UniversalClient, so a single node, Sentinel and
// Cluster all work: every command and Lua script touches one key, the
// topic's stream, so no key needs a hash tag, and a batch that spans
// topics is split by go-redis across the masters of their slots. The
// tests run the conformance suite on a six-node cluster.
// Redis 6.2 or later is required (XAUTOCLAIM); Redis 7 reports pending
// entries lost to trimming precisely.
//
// # Streams and groups
//
// Each topic is one stream, at the key prefix + topic (WithKeyPrefix,
// default "herald:stream:"); topic and group names are checked with
// herald.ValidateName before they reach a command. A herald group is a
// Redis consumer group, created with MKSTREAM at the configured start
// position (WithStartPosition: the whole stream by default, or only new
// entries) by the first Subscribe; every Subscription is a consumer of its
// own, named host-pid-random.
//
// # Wire format
//
// A message is one stream entry with these fields, readable from redis-cli
// and writable by producers in any language:
//
//	id            Message.ID (absent: the entry ID is used)
//	key           Message.Key (absent: no key)
//	content-type  Message.ContentType
//	time          Message.Time as Unix nanoseconds, decimal (absent: the
//	              millisecond time of the entry ID)
//	data          Message.Data
//	h:<name>      one field per header
//
// Fields the driver does not know are ignored.
//
// # Writing
//
// Write sends one XADD per message in a single pipelined round trip per
// call. The XADDs are not a transaction: when some fail, Write returns a
// *herald.WriteError listing them, and the others were stored (see
// Driver.Write); retry and deduplicate by ID. An entry above the size
// limit (WithMaxMessageBytes, default 1 MiB for the whole entry) fails
// with herald.ErrMessageTooLarge before anything is sent. Redis
// acknowledges an XADD once the entry is in memory; whether it survives a
// crash of the server depends on the server's persistence (appendonly yes
// with appendfsync always or everysec) and, with replicas, on replication,
// which is asynchronous: a failover can lose entries Write reported
// stored. WithWait makes Write wait for replicas (WAIT, per master) and
// fail the messages fewer replicas acknowledged; see WithWait for what it
// does not promise.
//
// # Reading and acknowledging
//
// Fetch reads new entries with XREADGROUP ... > and a bounded BLOCK
// (WithBlock, default 500 ms): go-redis cannot interrupt a blocked read,
// so a cancelled Fetch, and a Close waiting for it, return within that
// time; a Fetch whose context has a deadline blocks no longer than it.
// First deliveries have Delivery.Count 1.
//
// Ack does not wait for Redis: a background goroutine per Subscription
// sends the acknowledgments that have accumulated as one XACK, as soon as
// the previous one returned, so that under load one round trip acknowledges
// many entries. Close flushes what is left. Acknowledgments that could not
// be sent (Redis unreachable) are retried with backoff; if the process dies
// before they are sent, the entries are delivered again (at-least-once).
//
// # Taking over pending entries
//
// An entry read by a consumer stays in the group's pending entries list
// until it is acknowledged. Every subscription scans that list (XAUTOCLAIM,
// every WithReclaimInterval, default 5 s) and takes over entries idle for
// at least the claim min idle time (WithClaimMinIdle, default 30 s), the
// entries of consumers that crashed. Redis counts each such delivery, and
// the driver reads the count back (XPENDING) into Delivery.Count, so
// herald.DeliveryCount and herald.DeadLetterConfig.MaxDeliveries see how
// often a message came back, across processes: a message that crashes its
// consumer every time goes to the dead-letter topic after N deliveries
// instead of looping forever.
//
// A handler may hold an entry far longer than the claim min idle time (the
// scheduler retries a failing message in place, and entries wait behind
// their key). So that no other member takes such an entry over while it is
// being handled, the background goroutine touches every in-flight entry of
// its consumer every third of the claim min idle time: one Lua script that
// checks the entry is still this consumer's and resets its idle time
// (XCLAIM ... JUSTID, which does not count a delivery). If Redis stays
// unreachable for longer than the claim min idle time, another member may
// take the entry over and handle it too; the driver reports that as an
// EntriesError wrapping ErrClaimLost. Give every member of a group the same
// claim min idle time.
//
// Close hands the consumer's unacknowledged entries back: it re-claims
// them to itself with a delivery time far in the past (XCLAIM ... TIME
// JUSTID), so the next scan of any member takes them, with their count up
// by one. Entries the scheduler fetched and never started (it releases
// them at shutdown, herald.Releaser) are handed back with their count one
// lower (XCLAIM ... RETRYCOUNT), so a rolling restart is not a delivery:
// the count goes up only for deliveries a handler may have run. A consumer that holds no pending entries is deleted from the
// group (XGROUP DELCONSUMER); one that still holds some (its Close failed,
// or it crashed) stays until other members have taken its entries over,
// and is deleted by one of them once it has none left and has been silent
// for WithConsumerIdle (default 30 min). The check and the deletion are one
// Lua script, because deleting a consumer discards its pending entries.
//
// # Order
//
// Within one Subscription the scheduler keeps the order of each key (it
// runs one message of a key at a time, in the order Fetch returned them),
// and entries are read in stream order. Across the members of a group,
// Redis Streams has no partitions: entries go to whichever member reads
// next, so two members may handle messages of one key at the same time and
// out of order. Use one Subscription per group (with WithConcurrency for
// parallelism) where per-key order matters across the whole group. Entries
// taken over from a crashed or closed member are delivered after newer
// entries of their key may already have been handled.
//
// # Trimming
//
// Streams grow until trimmed, and trimming is off by default.
// WithTrimMaxLen (XADD MAXLEN ~ n) and WithTrimMaxAge (XADD MINID ~) bound
// a stream, but Redis trims without looking at consumer groups: entries a
// slow or stopped group has not read yet are deleted without trace, and
// entries it has read but not acknowledged disappear from under it (the
// driver reports those when it meets them, as an EntriesError wrapping
// ErrTrimmed). Trim only with a bound far above the backlog a group can
// build up, and watch each group's lag (Driver.GroupStats, or XINFO GROUPS)
// against that bound.
//
// # Failures and restarts
//
// go-redis reconnects by itself. A Fetch that fails returns the error, and
// the herald scheduler calls it again with backoff. When the stream or the
// group has vanished (a restart of a server without persistence, a deleted
// key), Fetch recreates the group at the beginning of the stream, whatever
// the start position, so that nothing written since is skipped, and goes
// on; what the server lost is lost. A server with persistence loses nothing it acknowledged (an
// XADD, an XACK, the pending list), within its fsync policy.
//
// On a cluster, when a master fails its replica takes its slots over
// (after cluster-node-timeout) and go-redis follows them there: Write and
// Fetch fail meanwhile, and go on once it has. What the replica had not
// received when its master died is gone: entries Write reported stored
// (unless WithWait held Write until a replica had them), and the group's
// last reads and acknowledgments, so entries come again (duplicates, which
// consumers deduplicate by Message.ID). The tests measure both with a
// replica that lags behind its killed master.
//
// Errors. Besides Write's *herald.WriteError and the EntriesError above,
// what the Driver, its subscriptions and its dead-letter Store return, and
// report to the error handler, is a *herald.DriverError (Driver
// "redisdriver") naming the operation, topic and group, and wrapping the
// cause: herald.ErrClosed, ErrNoGroup, ErrLagUnknown, herald's sentinels,
// dlq.ErrNotFound, or go-redis's error.
//
// # Delayed delivery
//
// The Driver is a herald.DelayedWriter. Write puts a message whose
// herald.HeaderDeliverAt lies in the future (herald.DeliverAt,
// herald.DeliverAfter) not in the stream but in the topic's delayed set,
// a sorted set scored by the due time in Unix milliseconds, rounded up,
// whose member is the stream entry's fields (DelayKey: it starts with the
// key prefix and shares the stream's hash slot, so it works on Redis
// Cluster). A ZADD replaces the XADD in Write's pipeline; the rest of the
// batch is written as usual, and a delayed message counts as written
// once it is in the set.
//
// Every Driver with an open subscription on a topic runs one mover for
// it: it calls a Lua script that takes the due members (ZRANGEBYSCORE, up
// to 500, in due order, equal due times in write order), XADDs each to
// the stream with the Driver's trim settings and removes them (ZREM), in
// one atomic step. Movers in any number of processes may run at once:
// an entry is either in the set or in the stream, so none is lost or
// moved twice, and a process killed mid-way leaves the rest to the
// others. The mover calls again at once after a full batch, at the next
// due time when it comes within the poll interval, else after
// WithDelayPollInterval (DefaultDelayPollInterval, 100 ms): the
// precision, which the tests measure (p99 close to the interval). The due
// time is compared with the mover's clock, so skew between the
// publisher's and the mover's hosts shifts delivery by as much. Order:
// messages of one key reach a group in the order they become due, so an
// undelayed message overtakes a delayed one of its key. A topic no
// process subscribes to keeps its due messages in the set until one
// does. Driver.Waiting counts a topic's set; MoveDue moves by hand.
// Members the script cannot read (not written by this driver) are moved
// to DelayKey+":unreadable" and reported (the mover's errors go to a
// subscription of the topic, so a Bus's error handler sees them). Not supported yet: delays with
// WithWait (the ZADD and the mover's XADD would need their own WAIT), so
// such a Driver reports DelayPrecision 0 and refuses delayed messages
// with herald.ErrDelayNotSupported; a prefix with braces but no hash tag
// (ErrNoDelaySlot). Cost: one script call per topic, process and poll
// interval while idle; a delayed message is written twice (ZADD, then
// XADD) and held in memory once more while it waits.
//
// # Operations
//
// A subscription reports its group's lag (herald.LagReporter) with one
// XINFO GROUPS: entries not yet delivered to the group plus its pending
// entries, for the whole stream; ErrLagUnknown when Redis cannot count
// (before 7.0, or after an XDEL ahead of the group). Driver.DeadLetters
// reads dead-letter streams for package dlq; a redriven entry is deleted
// with XDEL.
//
// # Group tables
//
// The driver keeps no group tables yet (herald.Table): a subscription
// given herald.WithTable fails with herald.ErrTablesNotSupported (a stream has no partitions for a table's state to follow).
package redisdriver
