package herald

import (
	"cmp"
	"context"
)

// scopeKey holds a context's publish scope.
type scopeKey struct{}

// scope is what a context tells the messages published with it: the
// correlation and causation ids set on it (WithCorrelationID,
// WithCausationID), the delivered message of a handler's context, and a
// delivery time or delay (DeliverAt, DeliverAfter). They live under one
// key so that a publish finds them all in one context lookup: a
// service's contexts are often many layers deep, and every lookup walks
// them.
type scope struct {
	delivered              *Message // the message a handler's context was made for
	correlation, causation string
	setCorr, setCaus       bool
	deliverAt              deliverAtValue // zero: none
}

// scopeOf returns the scope of ctx (the zero scope when none was set).
// A handler's context (deliveryCtx) answers with itself: its scope is
// its parent's with the delivered message added.
func scopeOf(ctx context.Context) scope {
	switch v := ctx.Value(scopeKey{}).(type) {
	case *scope:
		return *v
	case *deliveryCtx:
		s := *v.base
		s.delivered = v.d.Message
		return s
	}
	return scope{}
}

// withScope returns a context whose scope is the scope of ctx changed by
// set.
func withScope(ctx context.Context, set func(*scope)) context.Context {
	s := scopeOf(ctx)
	set(&s)
	return context.WithValue(ctx, scopeKey{}, &s)
}

// lineage is the correlation and causation ids a publish stamps: a value
// WithCorrelationID or WithCausationID set wins, else the delivered
// message's.
func (s scope) lineage() lineage {
	l := lineage{correlation: s.correlation, causation: s.causation}
	if m := s.delivered; m != nil {
		if !s.setCorr {
			l.correlation = cmp.Or(m.Headers.Get(HeaderCorrelationID), m.ID)
		}
		if !s.setCaus {
			l.causation = m.ID
		}
	}
	return l
}
