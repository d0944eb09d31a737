package herald_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

// refusingDriver is a driver whose broker refuses every subscription, as a
// server that is down would.
type refusingDriver struct{ *memdriver.Broker }

func (refusingDriver) Subscribe(context.Context, string, string) (herald.Subscription, error) {
	return nil, errors.New("connection refused")
}

func probe(t *testing.T, h http.Handler) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	return rec.Code, body
}

func TestBusHealthLifecycle(t *testing.T) {
	bus, _ := newTestBus(t)
	herald.MustRegister[OrderPlaced](bus, "orders")
	must(t, herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error { return nil }))
	handler := herald.HealthHandler(bus)
	if code, body := probe(t, handler); code != http.StatusServiceUnavailable || body["ready"] != false {
		t.Fatalf("before Start: %d %v", code, body)
	}
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	code, body := probe(t, handler)
	if code != http.StatusOK || body["ready"] != true {
		t.Fatalf("started: %d %v", code, body)
	}
	st := bus.CheckHealth(ctx)
	subs := st.Details.(herald.BusHealth).Subscriptions
	if len(subs) != 1 || subs[0].Topic != "orders" || subs[0].Group != "billing" || !subs[0].Running || !subs[0].Subscribed {
		t.Errorf("subscriptions %+v", subs)
	}
	must(t, bus.Shutdown(ctx))
	if st := bus.CheckHealth(ctx); st.Ready {
		t.Errorf("ready after Shutdown: %+v", st)
	}
}

func TestBusHealthDriverDown(t *testing.T) {
	bus, err := herald.NewBus(refusingDriver{memtest.Broker(t)}, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}),
		herald.WithHealth(herald.HealthConfig{MaxDriverErrors: 2}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Shutdown(context.Background()) })
	herald.MustRegister[OrderPlaced](bus, "orders")
	must(t, herald.Subscribe(bus, "billing", func(context.Context, OrderPlaced, *herald.Message) error { return nil }))
	ctx := testContext(t)
	must(t, bus.Start(ctx))
	var st herald.HealthStatus
	eventually(t, "two failed subscribes", func() bool {
		st = bus.CheckHealth(ctx)
		return strings.Contains(strings.Join(st.Problems, ";"), "driver errors in a row")
	})
	if st.Ready || !strings.Contains(strings.Join(st.Problems, ";"), "connection refused") {
		t.Errorf("status %+v, want not ready naming the error", st)
	}
}

// A subscription whose handlers hang is stalled: by its full window
// (concurrency 2), or by one handler running on the fetching goroutine
// (concurrency 1 on the memory driver, a LocalFetcher).
func TestBusHealthStalled(t *testing.T) {
	for _, c := range []struct {
		name        string
		concurrency int
		field       func(herald.SubscriptionHealth) time.Time
	}{
		{"window", 2, func(h herald.SubscriptionHealth) time.Time { return h.WindowFullSince }},
		{"inline", 1, func(h herald.SubscriptionHealth) time.Time { return h.HandlerRunningSince }},
	} {
		t.Run(c.name, func(t *testing.T) {
			bus, _ := newTestBus(t, herald.WithHealth(herald.HealthConfig{StallAfter: time.Nanosecond, MaxLag: 1}))
			herald.MustRegister[OrderPlaced](bus, "orders")
			release := make(chan struct{})
			must(t, herald.Subscribe(bus, "billing", func(ctx context.Context, _ OrderPlaced, _ *herald.Message) error {
				select {
				case <-release:
				case <-ctx.Done():
				}
				return nil
			}, herald.WithScheduler(herald.SchedulerConfig{Concurrency: c.concurrency, MaxInFlight: c.concurrency})))
			ctx := testContext(t)
			must(t, bus.Start(ctx))
			must(t, bus.Publish(ctx, OrderPlaced{ID: "1"}, OrderPlaced{ID: "2"}, OrderPlaced{ID: "3"}))
			var st herald.HealthStatus
			eventually(t, "stalled", func() bool {
				st = bus.CheckHealth(ctx)
				return strings.Contains(strings.Join(st.Problems, ";"), "stalled")
			})
			if !strings.Contains(strings.Join(st.Problems, ";"), "lag") {
				t.Errorf("problems %q, want the lag above 1 named too", st.Problems)
			}
			if subs := st.Details.(herald.BusHealth).Subscriptions; len(subs) != 1 || c.field(subs[0]).IsZero() {
				t.Errorf("subscriptions %+v: the stall's own field is not set", subs)
			}
			close(release)
			eventually(t, "ready again", func() bool { return bus.CheckHealth(ctx).Ready })
		})
	}
}
