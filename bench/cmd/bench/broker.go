package main

import (
	"context"
	"time"
)

// What the nats and rabbitmq scenarios share: the same four tables, the
// same slow handler, and reference rows that run several handlers.

// The tables of the nats and rabbitmq scenarios. Each publish case has a
// table of its own, so that each has its own reference: the bare client
// publishing the same count per call.
const (
	brokerTablePublish      = "publish, 1 message per call"
	brokerTablePublishBatch = "publish, a batch per call"
	brokerTableConsume      = "consume a backlog, no-op handler"
	brokerTableSlow         = "consume a backlog, handler sleeps 1 ms, 64 in flight"
)

const (
	// brokerConsumeConcurrency is the parallel herald row of the no-op
	// consume table.
	brokerConsumeConcurrency = 16
	// brokerSlowConcurrency and brokerSlowWork make the slow-handler
	// table: 64 handlers in flight that sleep 1 ms each.
	brokerSlowConcurrency = 64
	brokerSlowWork        = time.Millisecond
	// brokerBacklogShare is the share of -n of the consume tables' rows:
	// a backlog of 100,000 messages with the default -n.
	brokerBacklogShare = 0.5
)

// workersReference is the reference row of a slow-handler table: the
// broker's client used by hand with concurrency handlers doing work, so
// that its ceiling columns divide by the same bare-sleeper row as the
// libraries' rows of that concurrency.
func workersReference(id, system, label string, concurrency int, work time.Duration,
	setup func(ctx context.Context, p runParams) (*pipeline, error)) benchCase {
	c := referenceCase(id, system, label, consumeOnly, setup)
	c.concurrency, c.work = concurrency, work
	return c
}

// workOf is the handler's work of a bare consumer with workers handlers:
// the slow table's sleep when it has more than one.
func workOf(workers int) time.Duration {
	if workers > 1 {
		return brokerSlowWork
	}
	return 0
}
