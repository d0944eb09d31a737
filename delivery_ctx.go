package herald

import "context"

// deliveryCtx is the context a scheduler's worker runs a handler with:
// the scheduler's handler context, the delivery (its message for
// CorrelationID, CausationID and retry later; its position for a group
// table, with the scheduler whose subscription knows it) and its delivery
// count (DeliveryCount). It is
// written once, before its handler runs, and never changed, so a handler
// may keep its context (for work it starts and does not wait for) like
// any other.
type deliveryCtx struct {
	context.Context
	base  *scope // the parent's scope (scopeOf adds d.Message to it)
	d     Delivery
	from  *scheduler
	count int // at least 1
}

func (c *deliveryCtx) Value(key any) any {
	switch key.(type) {
	case scopeKey, deliveryKey:
		return c
	case deliveryCountKey:
		return c.count
	}
	return c.Context.Value(key)
}

// deliveryKey finds a handler's deliveryCtx under the layers middleware
// added (a publish scope among them): deliveryOf.
type deliveryKey struct{}

// deliveryOf returns the delivery ctx is a handler's context for.
func deliveryOf(ctx context.Context) (*deliveryCtx, bool) {
	c, ok := ctx.Value(deliveryKey{}).(*deliveryCtx)
	return c, ok
}

// ctxSlabSize is how many delivery contexts one allocation holds.
const ctxSlabSize = 32

// ctxSlab carves a worker's delivery contexts from slabs of up to
// ctxSlabSize: one allocation per 32 deliveries instead of one (or two,
// with a delivery count) for each. A slab keeps the messages of its used
// contexts alive while it is in use, so an idle worker drops it (drop);
// after that slabs start at one context and double, so a worker woken for
// a message or two allocates for those only. A slab serves one parent
// context (a worker's never changes) and reads its scope once.
type ctxSlab struct {
	free []deliveryCtx
	next int // size of the next slab; 0 means 1
	base *scope
}

func (s *ctxSlab) context(parent context.Context, from *scheduler, d Delivery, count int) context.Context {
	if len(s.free) == 0 {
		n := max(s.next, 1)
		s.free = make([]deliveryCtx, n)
		s.next = min(2*n, ctxSlabSize)
	}
	if s.base == nil {
		base := scopeOf(parent)
		s.base = &base
	}
	c := &s.free[0]
	s.free = s.free[1:]
	c.Context, c.base, c.d, c.from, c.count = parent, s.base, d, from, max(count, 1)
	return c
}

// drop lets go of the current slab: the next context starts a new one,
// of one context.
func (s *ctxSlab) drop() { s.free, s.next = nil, 0 }
