// Package errsink is how herald's drivers implement herald.ErrorReporter:
// a subscription sends the errors it meets outside Fetch and Ack to the
// function the scheduler gave it, or else to its own fallback.
package errsink

import "sync/atomic"

// Sink holds the function ReportErrorsTo set. The zero value reports to
// the fallback; it is safe for concurrent use.
type Sink struct {
	f atomic.Pointer[func(error)]
}

// Set makes Report send to f (herald.ErrorReporter.ReportErrorsTo).
func (s *Sink) Set(f func(error)) { s.f.Store(&f) }

// Report sends err to the function Set gave, or to fallback before Set
// was called.
func (s *Sink) Report(err error, fallback func(error)) {
	if f := s.f.Load(); f != nil {
		(*f)(err)
		return
	}
	fallback(err)
}
