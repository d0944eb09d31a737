package herald_test

import (
	"context"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
)

// The publish scope's values (correlation, causation, delivery time) live
// under one context key: setting one keeps the others set before it, the
// nearest setting of each wins, and a zero DeliverAt cancels a delay.
func TestPublishScopeLayers(t *testing.T) {
	b, err := memdriver.New()
	must(t, err)
	t.Cleanup(func() { _ = b.Close() })
	p, err := herald.NewPublisher(b)
	must(t, err)
	herald.MustRegister[OrderPlaced](p, "orders")
	base := context.Background()

	ctx := herald.WithCausationID(herald.DeliverAfter(herald.WithCorrelationID(base, "c-1"), time.Hour), "cause-1")
	ctx = herald.WithCorrelationID(ctx, "c-2")
	if c, k := herald.CorrelationID(ctx), herald.CausationID(ctx); c != "c-2" || k != "cause-1" {
		t.Errorf("layered: correlation %q causation %q, want c-2 cause-1", c, k)
	}
	if c := herald.CorrelationID(herald.WithCausationID(base, "x")); c != "" {
		t.Errorf("a causation id alone set correlation %q", c)
	}
	msgs, err := p.Encode(ctx, OrderPlaced{ID: "1"})
	must(t, err)
	at, ok, err := msgs[0].DeliverAt()
	if err != nil || !ok || time.Until(at) < 59*time.Minute {
		t.Errorf("a correlation id set after DeliverAfter lost the delay: %v %v %v", at, ok, err)
	}
	if h := msgs[0].Headers; h[herald.HeaderCorrelationID] != "c-2" || h[herald.HeaderCausationID] != "cause-1" {
		t.Errorf("encoded lineage %v", h)
	}
	msgs, err = p.Encode(herald.DeliverAt(ctx, time.Time{}), OrderPlaced{ID: "2"})
	must(t, err)
	if _, ok, _ := msgs[0].DeliverAt(); ok {
		t.Error("a zero DeliverAt did not cancel the delay set before it")
	}
}

// A handler's context adds the delivered message to the scope of the
// context the Bus started with; values set inside the handler layer on
// top of both.
func TestHandlerScopeLayersOnTheStartContext(t *testing.T) {
	bus, _ := newTestBus(t)
	type seen struct{ corr, caus, inner string }
	got := make(chan seen, 1)
	var id string
	must(t, bus.Handle("raw.scope", "g", func(ctx context.Context, m *herald.Message) error {
		id = m.ID
		got <- seen{herald.CorrelationID(ctx), herald.CausationID(ctx),
			herald.CorrelationID(herald.WithCausationID(ctx, "later"))}
		return nil
	}))
	ctx := testContext(t)
	must(t, bus.Start(herald.WithCorrelationID(ctx, "from-start")))
	must(t, bus.PublishMessages(ctx, &herald.Message{Topic: "raw.scope"}))
	select {
	case s := <-got:
		if s.corr != "from-start" || s.caus != id || s.inner != "from-start" {
			t.Errorf("handler scope %+v, want correlation from-start, causation %s", s, id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("never handled")
	}
}
