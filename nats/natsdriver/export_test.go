package natsdriver

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
)

// HandBackLate does with the next message of sub's consumer what Close
// does with one its last pull request brought after the last Fetch: it
// cancels sub's context, records the hand-back and hands the message
// back. It returns the message's NumDelivered.
func HandBackLate(ctx context.Context, sub herald.Subscription) (uint64, error) {
	s := sub.(*subscription)
	b, err := s.cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		return 0, err
	}
	msg, ok := <-b.Messages()
	if !ok {
		return 0, errors.Join(errors.New("no message to hand back"), b.Error())
	}
	meta, err := msg.Metadata()
	if err != nil {
		return 0, err
	}
	s.cancel()
	s.releaseLate(ctx, []jetstream.Msg{msg})
	return meta.NumDelivered, msg.Nak()
}
