package herald_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/memory/memtest"
)

type Deposit struct {
	Account string `json:"account"`
	Amount  int    `json:"amount"`
}

func (d Deposit) Key() string { return d.Account }

type Balance struct {
	Total int `json:"total"`
	Count int `json:"count"`
}

// deposits returns n deposits over keys accounts in a random order, and
// each account's sum.
func deposits(n, keys int) ([]any, map[string]int) {
	events := make([]any, n)
	sums := make(map[string]int)
	for i := range events {
		d := Deposit{Account: fmt.Sprintf("acct-%d", rand.IntN(keys)), Amount: 1 + rand.IntN(100)}
		events[i] = d
		sums[d.Account] += d.Amount
	}
	return events, sums
}

// balanceMember is one member of group "ledger" on d: a bus with its own
// table, counting the handler's runs.
type balanceMember struct {
	bus   *herald.Bus
	table *herald.Table[Balance]
	runs  atomic.Int64
}

// addDeposit is the handler of the tests' ledger: it adds each deposit
// to its account's balance, counting its runs in runs.
func addDeposit(table *herald.Table[Balance], runs *atomic.Int64) func(context.Context, Deposit, *herald.Message) error {
	return func(ctx context.Context, e Deposit, _ *herald.Message) error {
		runs.Add(1)
		b, _, err := table.Get(ctx)
		if err != nil {
			return err
		}
		b.Total += e.Amount
		b.Count++
		return table.Set(ctx, b)
	}
}

func newBalanceMember(t *testing.T, d herald.Driver, concurrency int) *balanceMember {
	t.Helper()
	bus, err := herald.NewBus(d, herald.WithLogger(quiet), herald.WithErrorHandler(func(error) {}))
	must(t, err)
	herald.MustRegister[Deposit](bus, "deposits")
	table, err := herald.NewTable[Balance]("ledger.balances")
	must(t, err)
	m := &balanceMember{bus: bus, table: table}
	must(t, herald.Subscribe(bus, "ledger", addDeposit(table, &m.runs), herald.WithTable(table), herald.WithConcurrency(concurrency)))
	t.Cleanup(func() { _ = bus.Shutdown(context.Background()) })
	return m
}

func TestTableDeleteAndStagedReads(t *testing.T) {
	ctx := testContext(t)
	bus, b := newTestBus(t)
	herald.MustRegister[Deposit](bus, "deposits")
	table, err := herald.NewTable[Balance]("ledger.balances")
	must(t, err)
	var mu sync.Mutex
	var seen []string
	must(t, herald.Subscribe(bus, "ledger", func(ctx context.Context, e Deposit, _ *herald.Message) error {
		before, had, err := table.Get(ctx)
		if err != nil {
			return err
		}
		if e.Amount < 0 { // a negative deposit closes the account
			if err := table.Delete(ctx); err != nil {
				return err
			}
		} else if err := table.Set(ctx, Balance{Total: before.Total + e.Amount}); err != nil {
			return err
		}
		after, has, err := table.Get(ctx)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%v:%d->%v:%d", had, before.Total, has, after.Total))
		mu.Unlock()
		return err
	}, herald.WithTable(table)))
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, Deposit{"a", 5}, Deposit{"a", 7}, Deposit{"a", -1}, Deposit{"a", 2}))
	eventually(t, "handled", func() bool { return b.Backlog("deposits", "ledger") == 0 })
	want := []string{"false:0->true:5", "true:5->true:12", "true:12->false:0", "false:0->true:2"}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("the handler saw %v, want %v", seen, want)
	}
	if bal, ok, err := table.Value("a"); err != nil || !ok || bal.Total != 2 {
		t.Errorf("Value(a) = %+v, %v, %v; want total 2", bal, ok, err)
	}
}

func TestTableFailedHandlerChangesNothing(t *testing.T) {
	ctx := testContext(t)
	bus, b := newTestBus(t)
	herald.MustRegister[Deposit](bus, "deposits")
	table, err := herald.NewTable[Balance]("ledger.balances")
	must(t, err)
	var attempts atomic.Int32
	must(t, herald.Subscribe(bus, "ledger", func(ctx context.Context, e Deposit, _ *herald.Message) error {
		b, _, _ := table.Get(ctx)
		if err := table.Set(ctx, Balance{Total: b.Total + e.Amount}); err != nil {
			return err
		}
		if attempts.Add(1) <= 2 {
			return errors.New("not yet") // staged, then discarded
		}
		return nil
	}, herald.WithTable(table), herald.WithRetry(herald.RetryConfig{MaxAttempts: 5, InitialBackoff: 1, MaxBackoff: 1})))
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, Deposit{"a", 5}))
	eventually(t, "handled", func() bool { return b.Backlog("deposits", "ledger") == 0 })
	if bal, _, err := table.Value("a"); err != nil || bal.Total != 5 {
		t.Errorf("Value(a) = %+v, %v; want total 5 after two failed attempts", bal, err)
	}
}

func TestTableBadValues(t *testing.T) {
	ctx := testContext(t)
	var optErr *herald.OptionError
	if _, err := herald.NewTable[Balance](""); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("NewTable(\"\") = %v, want ErrInvalidName", err)
	}
	if _, err := herald.NewTable[Balance]("t", nil, herald.WithTableCodec(nil), herald.WithTableStore(nil)); !errors.As(err, &optErr) {
		t.Errorf("NewTable with nil options = %v, want an OptionError", err)
	}
	if _, err := herald.NewView[Balance](nil, "t"); !errors.Is(err, herald.ErrNilDriver) {
		t.Errorf("NewView(nil) = %v, want ErrNilDriver", err)
	}

	table, err := herald.NewTable[Balance]("ledger.balances")
	must(t, err)
	if _, _, err := table.Get(ctx); !errors.Is(err, herald.ErrNotInHandler) {
		t.Errorf("Get outside a handler = %v, want ErrNotInHandler", err)
	}
	if err := table.Set(ctx, Balance{}); !errors.Is(err, herald.ErrNotInHandler) {
		t.Errorf("Set outside a handler = %v, want ErrNotInHandler", err)
	}
	if _, ok, err := table.Value("a"); ok || err != nil {
		t.Errorf("Value before any delivery = %v, %v; want not found", ok, err)
	}

	noop := func(context.Context, Deposit, *herald.Message) error { return nil }
	plain := struct {
		herald.Writer
		herald.Reader
	}{memtest.Broker(t), memtest.Broker(t)}
	bus, err := herald.NewBus(plain)
	must(t, err)
	herald.MustRegister[Deposit](bus, "deposits")
	if err := herald.Subscribe(bus, "ledger", noop, herald.WithTable(table)); !errors.Is(err, herald.ErrTablesNotSupported) {
		t.Errorf("a table on a driver without changelogs = %v, want ErrTablesNotSupported", err)
	}

	bus, _ = newTestBus(t)
	herald.MustRegister[Deposit](bus, "deposits")
	if err := herald.Subscribe[Deposit](bus, "ledger", noop, herald.WithTable[Balance](nil)); !errors.As(err, &optErr) {
		t.Errorf("WithTable(nil) = %v, want an OptionError", err)
	}
	must(t, herald.Subscribe(bus, "ledger", noop, herald.WithTable(table)))
	if err := herald.Subscribe(bus, "audit", noop, herald.WithTable(table)); !errors.As(err, &optErr) {
		t.Errorf("one table on two subscriptions = %v, want an OptionError", err)
	}
	batch := func(context.Context, []herald.Item[Deposit]) error { return nil }
	if err := herald.SubscribeBatch(bus, "batches", batch, herald.WithTable(table)); !errors.As(err, &optErr) {
		t.Errorf("a table on a batch subscription = %v, want an OptionError", err)
	}
}

// TestTableKeylessMessages: a message without a key runs its handler,
// whose table calls fail with ErrNoKey.
func TestTableKeylessMessages(t *testing.T) {
	ctx := testContext(t)
	bus, b := newTestBus(t)
	table, err := herald.NewTable[Balance]("ledger.balances")
	must(t, err)
	got := make(chan error, 1)
	must(t, bus.Handle("raw", "ledger", func(ctx context.Context, _ *herald.Message) error {
		_, _, err := table.Get(ctx)
		got <- err
		return nil
	}, herald.WithTable(table)))
	must(t, bus.Start(ctx))
	must(t, bus.PublishMessages(ctx, &herald.Message{Topic: "raw", Data: []byte("{}")}))
	if err := <-got; !errors.Is(err, herald.ErrNoKey) {
		t.Errorf("Get for a keyless message = %v, want ErrNoKey", err)
	}
	eventually(t, "handled", func() bool { return b.Backlog("raw", "ledger") == 0 })
}

// TestTableUnencodableValue: a value the codec refuses fails the delivery
// for good (dead-lettered), and the table keeps what it had.
func TestTableUnencodableValue(t *testing.T) {
	ctx := testContext(t)
	bus, b := newTestBus(t)
	herald.MustRegister[Deposit](bus, "deposits")
	table, err := herald.NewTable[map[string]any]("ledger.odd")
	must(t, err)
	must(t, herald.Subscribe(bus, "ledger", func(ctx context.Context, e Deposit, _ *herald.Message) error {
		v := map[string]any{"amount": e.Amount}
		if e.Amount == 13 {
			v["bad"] = make(chan int) // JSON cannot encode it
		}
		return table.Set(ctx, v)
	}, herald.WithTable(table), herald.WithDeadLetter()))
	must(t, bus.Start(ctx))
	must(t, bus.Publish(ctx, Deposit{"a", 5}, Deposit{"a", 13}))
	eventually(t, "handled", func() bool { return b.Backlog("deposits", "ledger") == 0 })
	if v, _, err := table.Value("a"); err != nil || v["amount"] != float64(5) {
		t.Errorf("Value(a) = %v, %v; want amount 5", v, err)
	}
	dl, _, err := b.DeadLetters().List(ctx, herald.DeadLetterTopic("deposits"), "", 10)
	must(t, err)
	if len(dl) != 1 || !strings.Contains(dl[0].Reason, "encode") || dl[0].Attempts != 1 {
		t.Errorf("dead letters = %+v, want the unencodable one, after one attempt", dl)
	}
}

func TestViewFollowsTheTable(t *testing.T) {
	ctx := testContext(t)
	b := memtest.Broker(t)
	v, err := herald.NewView[Balance](b, "ledger.balances")
	must(t, err)
	must(t, v.Start(ctx)) // before the table has a record
	if err := v.Start(ctx); err == nil {
		t.Error("a second Start worked")
	}
	m := newBalanceMember(t, b, 2)
	must(t, m.bus.Start(ctx))
	events, sums := deposits(500, 10)
	must(t, m.bus.Publish(ctx, events...))
	eventually(t, "every deposit handled", func() bool { return b.Backlog("deposits", "ledger") == 0 })
	eventually(t, "the view caught up", func() bool {
		lag, err := v.Lag(ctx)
		return err == nil && lag == 0
	})
	for key, want := range sums {
		if bal, ok, err := v.Get(key); err != nil || !ok || bal.Total != want {
			t.Errorf("view Get(%s) = %+v, %v, %v; want %d", key, bal, ok, err, want)
		}
	}
	if _, ok, err := v.Get("nobody"); ok || err != nil {
		t.Errorf("view Get(nobody) = %v, %v; want not found", ok, err)
	}
	must(t, v.Close())
	must(t, v.Close())
	if err := v.Start(ctx); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

// BenchmarkTable is what a group table costs on the memory driver
// (drivertest.BenchTables), its rings large enough to hold every event
// written before the timer starts.
func BenchmarkTable(b *testing.B) {
	drivertest.BenchTables(b, func(b *testing.B) herald.Driver {
		broker, err := memdriver.New(memdriver.WithCapacity(1 << 20))
		must(b, err)
		b.Cleanup(func() { _ = broker.Close() })
		return broker
	})
}
