package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/heraldbus/herald/memory/memtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLedger tests the processor alone, with the tester: feed movements,
// read the table, check what it published.
func TestLedger(t *testing.T) {
	tt := memtest.NewTester(t)
	balances, err := Subscribe(tt.Bus())
	if err != nil {
		t.Fatal(err)
	}
	tt.Feed(Deposit{"alice", 1_000}, Withdrawal{"alice", 300}, Deposit{"bob", 200})
	for account, want := range map[string]Balance{"alice": {700, 2}, "bob": {200, 1}} {
		if got, ok, err := balances.Value(account); err != nil || !ok || got != want {
			t.Errorf("balance of %s = %+v, %v, %v; want %+v", account, got, ok, err, want)
		}
	}
	if got := tt.Emitted("ledger.overdrawn"); len(got) != 0 {
		t.Fatalf("overdrawn before any overdraft: %d events", len(got))
	}

	tt.Feed(Withdrawal{"bob", 500}, Withdrawal{"bob", 100}) // below zero once
	over := tt.Emitted("ledger.overdrawn")
	if len(over) != 1 {
		t.Fatalf("published %d Overdrawn events, want 1", len(over))
	}
	var o Overdrawn
	if err := json.Unmarshal(over[0].Data, &o); err != nil || o != (Overdrawn{"bob", -300}) {
		t.Errorf("Overdrawn = %+v, %v; want bob at -300", o, err)
	}
	if got, _, _ := balances.Value("bob"); got != (Balance{-400, 3}) {
		t.Errorf("balance of bob = %+v, want -400 after 3 movements", got)
	}
}

// TestRun runs the tour: the view serves what the table holds.
func TestRun(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out, false, ""); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`GET /balances/alice: 200 {"cents":7500,"movements":3}`,
		`GET /balances/bob: 200 {"cents":-500,"movements":3}`,
		"GET /balances/carol: 404 no such account",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
