package herald

import (
	"context"
	"runtime/debug"
)

// recoverPanics turns a handler panic into a *PanicError carrying the panic value
// and the stack, so a panicking handler is retried and dead-lettered like a
// failing one instead of crashing the process.
func recoverPanics() Middleware {
	return func(next HandlerFunc) HandlerFunc {
		return func(ctx context.Context, m *Message) (err error) {
			defer func() {
				if v := recover(); v != nil {
					err = &PanicError{Value: v, Stack: debug.Stack()}
				}
			}()
			return next(ctx, m)
		}
	}
}
