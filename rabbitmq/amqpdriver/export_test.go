package amqpdriver

import "github.com/heraldbus/herald"

// FlushAcks sends sub's deferred acknowledgments now, as a Fetch with
// nothing to hand out would.
func FlushAcks(sub herald.Subscription) error {
	s := sub.(*subscription)
	s.mu.Lock()
	g := s.gen
	s.mu.Unlock()
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.flushAcks()
}
