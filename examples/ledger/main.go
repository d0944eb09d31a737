// Ledger keeps a running balance per account in a group table, serves
// the balances over HTTP from a view, and publishes an event when an
// account goes below zero. It runs on the embedded memory driver, no
// server needed; main_test.go tests the processor with memtest.Tester.
//
//	go run ./examples/ledger           # the tour, then exit
//	go run ./examples/ledger -serve    # keep serving http://127.0.0.1:8090/balances/{account}
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
)

// Deposit and Withdrawal move money; the account is the key, so one
// account's movements are handled in order and its balance has one writer.
type Deposit struct {
	Account string `json:"account"`
	Cents   int64  `json:"cents"`
}

func (d Deposit) Key() string { return d.Account }

type Withdrawal struct {
	Account string `json:"account"`
	Cents   int64  `json:"cents"`
}

func (w Withdrawal) Key() string { return w.Account }

// Overdrawn is what the ledger publishes when a withdrawal takes an
// account below zero.
type Overdrawn struct {
	Account string `json:"account"`
	Cents   int64  `json:"cents"`
}

func (o Overdrawn) Key() string { return o.Account }

// Balance is the table's value: the state of one account.
type Balance struct {
	Cents     int64 `json:"cents"`
	Movements int   `json:"movements"`
}

// TableName is the ledger's group table (and its changelog).
const TableName = "ledger.balances"

// Subscribe registers the events and the ledger's two handlers on bus,
// which share the group "ledger" and its table.
func Subscribe(bus *herald.Bus) (*herald.Table[Balance], error) {
	if err := errors.Join(
		herald.Register[Deposit](bus, "ledger.movements"),
		herald.Register[Withdrawal](bus, "ledger.movements"),
		herald.Register[Overdrawn](bus, "ledger.overdrawn"),
	); err != nil {
		return nil, err
	}
	balances, err := herald.NewTable[Balance](TableName)
	if err != nil {
		return nil, err
	}
	move := func(ctx context.Context, account string, cents int64) error {
		b, _, err := balances.Get(ctx)
		if err != nil {
			return err
		}
		wasCovered := b.Cents >= 0
		b.Cents += cents
		b.Movements++
		if wasCovered && b.Cents < 0 {
			// Published at least once: a handler killed before its table
			// update is written runs again (see herald.Table).
			if err := bus.Publish(ctx, Overdrawn{Account: account, Cents: b.Cents}); err != nil {
				return err
			}
		}
		return balances.Set(ctx, b)
	}
	return balances, errors.Join(
		herald.Subscribe(bus, "ledger", func(ctx context.Context, d Deposit, _ *herald.Message) error {
			return move(ctx, d.Account, d.Cents)
		}, herald.WithTable(balances)),
		herald.Subscribe(bus, "ledger", func(ctx context.Context, w Withdrawal, _ *herald.Message) error {
			return move(ctx, w.Account, -w.Cents)
		}, herald.WithTable(balances)),
	)
}

// BalanceHandler serves GET /balances/{account} from view: the balance as
// JSON, 404 for an account it does not know.
func BalanceHandler(view *herald.View[Balance]) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /balances/{account}", func(w http.ResponseWriter, r *http.Request) {
		b, ok, err := view.Get(r.PathValue("account"))
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		case !ok:
			http.Error(w, "no such account", http.StatusNotFound)
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(b)
		}
	})
	return mux
}

func main() {
	serve := flag.Bool("serve", false, "keep serving the balances until interrupted")
	addr := flag.String("addr", "127.0.0.1:8090", "with -serve, where to listen")
	flag.Parse()
	if err := run(os.Stdout, *serve, *addr); err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, serve bool, addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	broker, err := memdriver.New()
	if err != nil {
		return err
	}
	defer broker.Close()
	bus, err := herald.NewBus(broker)
	if err != nil {
		return err
	}
	if _, err := Subscribe(bus); err != nil {
		return err
	}
	view, err := herald.NewView[Balance](broker, TableName)
	if err != nil {
		return err
	}
	if err := errors.Join(bus.Start(ctx), view.Start(ctx)); err != nil {
		return err
	}
	defer view.Close()
	defer bus.Shutdown(context.Background())

	if err := bus.Publish(ctx,
		Deposit{"alice", 10_000}, Deposit{"bob", 2_500}, Withdrawal{"alice", 3_000},
		Withdrawal{"bob", 4_000}, Deposit{"bob", 1_000}, Deposit{"alice", 500},
	); err != nil {
		return err
	}
	for broker.Unsettled() > 0 {
		time.Sleep(time.Millisecond)
	}
	if err := view.WaitCaughtUp(ctx); err != nil {
		return err
	}

	if !serve {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: BalanceHandler(view), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	for _, account := range []string{"alice", "bob", "carol"} {
		if err := show(ctx, w, "http://"+ln.Addr().String()+"/balances/"+account); err != nil {
			return err
		}
	}
	if serve {
		fmt.Fprintf(w, "serving http://%s/balances/{account}; Ctrl-C stops\n", ln.Addr())
		<-ctx.Done()
	}
	return nil
}

// show prints what GET url answers.
func show(ctx context.Context, w io.Writer, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "GET %s: %d %s", req.URL.Path, resp.StatusCode, body)
	return nil
}
