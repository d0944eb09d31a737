package herald

import (
	"context"
)

// HandlerFunc handles one message. Returning nil acknowledges it; an error
// leaves it unacknowledged, to be redelivered (see SchedulerConfig). The
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

// The Subscribe options install the built-in middleware in one fixed order;
// the package doc lists it ("Middleware order"), and Bus.chain and
// Bus.routeHandler build it.
