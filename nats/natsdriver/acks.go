package natsdriver

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Acknowledgments are sent at once and confirmed in the background: each
// carries a reply subject under the subscription's own inbox, the server
// answers on it once it has the acknowledgment, and one long-lived
// subscription on that inbox collects the answers. So Ack costs a publish,
// not a round trip, and the scheduler's worker moves on meanwhile.

// ackBody is the acknowledgment the server takes ("+ACK").
var ackBody = []byte("+ACK")

// pendingAck is an acknowledgment sent and not yet confirmed.
type pendingAck struct {
	h    *held
	sent time.Time
}

// listenAcks subscribes to the subscription's acknowledgment inbox.
func (s *subscription) listenAcks() error {
	nc := s.d.js.Conn()
	s.ackInbox = nc.NewRespInbox()
	sub, err := nc.Subscribe(s.ackInbox+".*", s.confirmed)
	if err != nil {
		return s.fail("subscribe", "acknowledgment inbox", err)
	}
	s.ackSub = sub
	return nil
}

// sendAck registers h's acknowledgment as pending and publishes it. The
// caller has taken h out of held, under s.mu, in the same critical section
// as register, so that Close, which collects held under s.mu, waits for it.
func (s *subscription) sendAck(token string, h *held) error {
	err := s.d.js.Conn().PublishRequest(h.msg.Reply(), s.ackInbox+"."+token, ackBody)
	if err != nil {
		s.settleAck(token)
	}
	return err
}

// registerAck records h's acknowledgment as pending and returns its token.
// The caller holds s.mu.
func (s *subscription) registerAck(h *held) string {
	s.ackSeq++
	token := strconv.FormatUint(s.ackSeq, 10)
	if len(s.acks) == 0 {
		s.acksIdle = make(chan struct{})
	}
	s.acks[token] = pendingAck{h: h, sent: time.Now()}
	return token
}

// settleAck forgets the pending acknowledgment token and reports whether
// it was still pending.
func (s *subscription) settleAck(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.acks[token]; !ok {
		return false
	}
	delete(s.acks, token)
	if len(s.acks) == 0 {
		close(s.acksIdle)
		s.acksIdle = nil
	}
	return true
}

// confirmed takes the server's answer to an acknowledgment: the message
// is acknowledged, and its release record, if it has one, is deleted
// before the acknowledgment stops being pending (so that Close waits for
// that too).
func (s *subscription) confirmed(m *nats.Msg) {
	token := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	s.mu.Lock()
	pa, ok := s.acks[token]
	s.mu.Unlock()
	if !ok {
		return // expired meanwhile, and reported
	}
	if pa.h.released > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.forgetReleases(ctx, pa.h)
		cancel()
	}
	s.settleAck(token)
}

// expireAcks gives up on acknowledgments the server did not confirm
// within the AckWait (lost with the connection, say) and reports each:
// the server delivers its message again.
func (s *subscription) expireAcks(now time.Time) {
	s.mu.Lock()
	var lost []pendingAck
	for token, pa := range s.acks {
		if now.Sub(pa.sent) >= s.d.cfg.ackWait {
			lost = append(lost, pa)
			delete(s.acks, token)
		}
	}
	if len(lost) > 0 && len(s.acks) == 0 {
		close(s.acksIdle)
		s.acksIdle = nil
	}
	s.mu.Unlock()
	for _, pa := range lost {
		s.onError(s.fail("ack", fmt.Sprintf("stream sequence %d: not confirmed within the ack wait (it may be delivered again)", pa.h.seq),
			context.DeadlineExceeded))
	}
}

// awaitAcks waits, bounded by ctx and the AckWait, until the server confirmed every
// acknowledgment sent, then stops listening. What is still pending is
// reported: those messages may be delivered again.
func (s *subscription) awaitAcks(ctx context.Context) {
	// Past the AckWait the server delivers an unconfirmed message again
	// anyway: waiting longer would only hold Close.
	ctx, cancel := context.WithTimeout(ctx, s.d.cfg.ackWait)
	defer cancel()
	s.mu.Lock()
	idle := s.acksIdle
	s.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
		}
	}
	_ = s.ackSub.Unsubscribe()
	s.mu.Lock()
	n := len(s.acks)
	s.mu.Unlock()
	if n > 0 {
		s.onError(s.fail("close", fmt.Sprintf("%d acknowledgments not confirmed (their messages may be delivered again)", n), ctx.Err()))
	}
}
