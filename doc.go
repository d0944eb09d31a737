// Package herald is an event bus for Go services: typed events go out
// through a Publisher and a pluggable Writer driver; subscribers receive
// them through a Reader driver, wrapped in middleware (retry, deduplication,
// dead-letter queue, recover, logging).
//
// The user side is small: NewBus, Register, Publish, Subscribe, Start and
// Shutdown. The driver side is driver.go: a driver implements Writer and
// Reader (Subscribe, then Fetch, Ack, Close on the Subscription) and passes
// drivertest.Run. Between them the SubscriberScheduler owns concurrency: a
// keyed worker pool that runs different keys in parallel and one key in
// order, redelivers failed messages in place, and shuts down without
// losing or leaking anything.
//
// Guarantees: at-least-once delivery (a message is acknowledged only after
// its handler chain returned nil or the dead-letter topic took it); per-key
// order; graceful shutdown bounded by a context; no package-level mutable
// state. The middleware order the Subscribe options apply is documented in
// middleware.go and fixed, so that options cannot defeat each other.
package herald
