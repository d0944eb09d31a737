package drivertest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/heraldbus/herald"
)

// RunOptional runs the checks of the optional interfaces: that the
// driver's subscriptions implement exactly the ones Config declares, and
// the contract of each declared one. A case for a capability the driver
// does not declare is skipped and says so.
func RunOptional(t *testing.T, cfg Config) {
	cfg = cfg.withDefaults()
	tests := []struct {
		name string
		fn   func(*testing.T, Config)
	}{
		{"DeclaredInterfaces", testDeclared},
		{"ReleasedHandBackIsNotADelivery", testReleasedNotCounted},
		{"LagCountsUnacknowledged", testLag},
		{"RevokedDeliveriesBelongToTheNewOwner", testRevocation},
		{"DelayedNotDeliveredBeforeDue", testDelayNotBeforeDue},
		{"DelayedKeyOrderIsDueOrder", testDelayKeyOrder},
		{"DelayedSurvivesConsumerRestart", testDelaySurvivesRestart},
		{"DelayedBadValues", testDelayBadValues},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // every case has a driver, topics and groups of its own
			tc.fn(t, cfg)
		})
	}
}

// canDelay reports whether d is a herald.DelayedWriter that delays as
// configured (a positive DelayPrecision).
func canDelay(d herald.Driver) bool {
	dw, ok := d.(herald.DelayedWriter)
	return ok && dw.DelayPrecision() > 0
}

func implements[I any](v any) bool {
	_, ok := v.(I)
	return ok
}

// testDeclared checks that a subscription implements the optional
// interfaces Config declares, and no other.
func testDeclared(t *testing.T, cfg Config) {
	d := cfg.NewDriver(t)
	ctx := context4(t, cfg)
	sub := subscribe(t, ctx, d, Name(t, "t"), Name(t, "g"))
	defer CloseSub(t, sub)
	for _, c := range []struct {
		iface, field  string
		declared, has bool
	}{
		{"herald.Releaser", "DeliveryCounts", cfg.DeliveryCounts, implements[herald.Releaser](sub)},
		{"herald.LagReporter", "Lag", cfg.Lag, implements[herald.LagReporter](sub)},
		{"herald.Revoker", "Revocation", cfg.Revocation, implements[herald.Revoker](sub)},
		{"herald.ErrorReporter", "ErrorReporting", cfg.ErrorReporting, implements[herald.ErrorReporter](sub)},
		{"herald.DelayedWriter with a positive DelayPrecision (the driver)", "Delay", cfg.Delay, canDelay(d)},
		{"herald.Partitioned", "Tables", cfg.Tables, implements[herald.Partitioned](sub)},
		{"herald.TableLog (the driver)", "Tables", cfg.Tables, implements[herald.TableLog](d)},
	} {
		switch {
		case c.declared && !c.has:
			t.Errorf("Config.%s is declared but %T is not a %s", c.field, sub, c.iface)
		case !c.declared && c.has:
			t.Errorf("%T is a %s: declare Config.%s so the suite checks it", sub, c.iface, c.field)
		}
	}
}

// testReleasedNotCounted plays three members that each fetch one message,
// release it (the scheduler does that for deliveries it never started)
// and close: the fourth still sees it as a first delivery. A member that
// closes holding it, unreleased, may have run a handler: that counts.
func testReleasedNotCounted(t *testing.T, cfg Config) {
	if !cfg.DeliveryCounts {
		t.Skip("Config.DeliveryCounts not declared")
	}
	d, ctx, topic, group := setUp(t, cfg)
	sub := subscribe(t, ctx, d, topic, group)
	write(t, ctx, d, newMessages(topic, 1, sameKey)...)
	for member := 1; member <= 3; member++ {
		got := FetchExactly(t, sub, 1)
		if c := got[0].Count; c > 1 {
			t.Errorf("member %d: Count %d after %d released hand-backs, want 1 (or 0, unknown)", member, c, member-1)
		}
		r, ok := sub.(herald.Releaser)
		if !ok {
			t.Fatalf("a driver with DeliveryCounts has subscriptions that are herald.Releasers; %T is not", sub)
		}
		r.Release(got)
		CloseSub(t, sub)
		sub = subscribe(t, ctx, d, topic, group)
	}
	held := FetchExactly(t, sub, 1)
	CloseSub(t, sub) // closed holding it, not released
	sub = subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, sub)
	got := FetchExactly(t, sub, 1)
	if got[0].Message.ID != held[0].Message.ID || got[0].Count != 2 {
		t.Errorf("after a member closed holding %s: got %s with Count %d, want Count 2",
			held[0].Message.ID, got[0].Message.ID, got[0].Count)
	}
	Ack(t, sub, got...)
}

// testLag checks that Lag counts what the group has not acknowledged:
// everything for a fresh group, deliveries in flight included, less what
// was acknowledged (a driver that commits in the background may take a
// while to show it, never less than the truth), and that a closed
// subscription's Lag fails.
func testLag(t *testing.T, cfg Config) {
	if !cfg.Lag {
		t.Skip("Config.Lag not declared")
	}
	d, ctx, topic, group := setUp(t, cfg)
	const n, k = 20, 7
	// Both groups exist before the messages are written: a broker whose
	// groups see only what is published after they are created (a
	// RabbitMQ queue) counts them too.
	sub := subscribe(t, ctx, d, topic, group)
	other := subscribe(t, ctx, d, topic, Name(t, "other"))
	defer CloseSub(t, other)
	write(t, ctx, d, newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 5) })...)
	first := FetchExactly(t, sub, k)
	waitLag(t, cfg, sub, n, n, "with deliveries in flight, none acknowledged")
	Ack(t, sub, first...)
	waitLag(t, cfg, sub, n-k, n, "after acknowledging some")
	rest := FetchExactly(t, sub, n-k)
	Ack(t, sub, rest...)
	waitLag(t, cfg, sub, 0, n-k, "after acknowledging everything")

	FetchExactly(t, other, 1)
	waitLag(t, cfg, other, n, n, "of a second group holding one delivery")

	CloseSub(t, sub)
	if _, err := sub.(herald.LagReporter).Lag(ctx); err == nil {
		t.Error("Lag of a closed subscription succeeded")
	}
}

// waitLag is WaitLag for the suite: sub's lag must reach want within the
// suite's timeout, every reading in [want, hi].
func waitLag(t *testing.T, cfg Config, sub herald.Subscription, want, hi int64, when string) {
	t.Helper()
	WaitLag(t, cfg.Timeout, LagReporter(t, sub), want, want, hi, nil)
}

// testRevocation has member a fetch every message and hold them, then
// member b join the group. Whatever a member receives while the other
// holds a copy must already be revoked for the other, so no message is
// owned by two members at once; the held copies a keeps unrevoked, and
// what the rebalance hands to b or back to a, are acknowledged, until
// every message was.
func testRevocation(t *testing.T, cfg Config) {
	if !cfg.Revocation {
		t.Skip("Config.Revocation not declared")
	}
	d, ctx, topic, group := setUp(t, cfg)
	const n = 200
	write(t, ctx, d, newMessages(topic, n, func(i int) string { return strconv.Itoa(i % 40) })...)
	a := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, a)
	held := map[string]herald.Delivery{} // a's first copies
	for _, dl := range fetchN(t, cfg, a, n) {
		held[dl.Message.ID] = dl
	}
	b := subscribe(t, ctx, d, topic, group)
	defer CloseSub(t, b)
	members := []herald.Subscription{a, b}
	for _, m := range members {
		if _, ok := m.(herald.Revoker); !ok {
			t.Fatalf("Config.Revocation is declared but %T is not a herald.Revoker", m)
		}
	}
	revoked := func(m herald.Subscription, dl herald.Delivery) bool { return m.(herald.Revoker).Revoked(dl) }

	acked := map[string]bool{}
	buf := make([]herald.Delivery, 64)
	deadline := time.Now().Add(4 * cfg.Timeout)
	// a keeps holding its copies until b has received something: only
	// then has the group rebalanced, so that a copy a still owns can be
	// told from one it lost.
	for rebalanced := false; len(acked) < n; rebalanced = rebalanced || len(acked) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %d of %d messages acknowledged", 4*cfg.Timeout, len(acked), n)
		}
		for id, dl := range held {
			if rebalanced && !acked[id] && !revoked(a, dl) {
				Ack(t, a, dl)
				acked[id] = true
			}
		}
		for i, m := range members {
			fctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			got, err := m.Fetch(fctx, buf)
			cancel()
			if err != nil && fctx.Err() == nil {
				t.Fatalf("Fetch of member %d: %v", i, err)
			}
			for _, dl := range buf[:got] {
				if first, ok := held[dl.Message.ID]; ok && !acked[dl.Message.ID] && !revoked(a, first) {
					t.Fatalf("member %d received %s while a's first copy of it is not revoked: two members own it", i, dl.Message.ID)
				}
				Ack(t, m, dl)
				acked[dl.Message.ID] = true
			}
		}
	}
}
