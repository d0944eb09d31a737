package herald

import (
	"context"
)

// HandlerFunc handles one message. Returning nil acknowledges it; an error
// leaves it unacknowledged, to be redelivered (see SubscriberScheduler). The
// context is cancelled when the subscriber shuts down and its deadline has
// passed.
type HandlerFunc func(ctx context.Context, m *Message) error

// Middleware wraps a handler, like net/http middleware wraps an
// http.Handler.
type Middleware func(HandlerFunc) HandlerFunc

// Chain wraps h in mws; the first middleware is the outermost (it sees the
// message first and the outcome last).
func Chain(h HandlerFunc, mws ...Middleware) HandlerFunc {
	for i := len(mws) - 1; i >= 0; i-- {
		if mws[i] != nil {
			h = mws[i](h)
		}
	}
	return h
}

// The canonical order in which the Subscribe options install the built-in
// middleware, outermost first. It is fixed so that no option can silently
// defeat another:
//
//  0. Telemetry (unless WithoutTelemetry): the consumer span, a child of
//     the sender's span, and the duration and outcome metrics; everything
//     inside runs with the span in its context, so retries, duplicates and
//     dead-letters become events on it and logs can carry its trace id.
//  1. Observe (logging, metrics hook): sees every delivery and its final
//     outcome, including skipped duplicates and dead-letters.
//
//     Then the subscription dispatches by event type: a message the group
//     does not handle (another event type on a shared topic, a redrive
//     addressed to another group by HeaderRedriveGroup) is acknowledged
//     here without running anything, with outcome skipped. Layers 0 and 1
//     wrap this dispatch, once per topic and group; the layers below wrap
//     each handler.
//  2. Dedup: claims (group, message ID) before anything runs, commits when
//     the chain inside succeeded (a dead-lettered message counts as done),
//     releases the claim when it failed so the redelivery can run. A
//     redrive addressed to the group is keyed by its redrive count as well,
//     so it runs once more.
//  3. Dead-letter: takes what the retry layer gave up on (and undecodable
//     payloads at once), writes it to the dead-letter topic, and only then
//     lets the message be acknowledged.
//  4. Retry: reruns the attempt with backoff and jitter; a permanent error
//     stops it. It sits inside dead-letter so dead-lettering never swallows
//     a retry.
//  5. Attempt timeout: a deadline per attempt, inside retry, so a timed-out
//     attempt is retried instead of poisoning every later attempt.
//  6. Recover: turns a panic into an error that retry and dead-letter see.
//  7. The user's middleware (WithMiddleware), in the order given.
//  8. Decode and the handler.
