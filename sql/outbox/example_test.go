package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
	"github.com/heraldbus/herald/sql/outbox"
)

// OrderPlaced is the event of the example.
type OrderPlaced struct {
	OrderID string `json:"order_id"`
	Total   int    `json:"total"`
}

// The whole path on the embedded default, no server needed: a business
// write and its event in one SQLite transaction, the relay forwarding the
// committed event to the in-memory bus, a subscriber handling it.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "herald-outbox")
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "shop.db")+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_txlock=immediate")
	if err != nil {
		panic(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)`); err != nil {
		panic(err)
	}
	if err := outbox.Migrate(ctx, db, outbox.SQLite, "outbox"); err != nil {
		panic(err)
	}

	// A Publish in a transaction writes to the outbox table; one outside
	// goes to the broker at once. Subscribers read the broker.
	broker, err := memdriver.New()
	if err != nil {
		panic(err)
	}
	defer broker.Close()
	w, _ := outbox.NewWriter(outbox.SQLite, "outbox")
	bus, err := herald.NewBus(broker, herald.WithOutbox(w))
	if err != nil {
		panic(err)
	}
	herald.MustRegister[OrderPlaced](bus, "orders")
	handled := make(chan struct{})
	err = herald.Subscribe(bus, "billing", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		fmt.Printf("billing: order %s, total %d\n", e.OrderID, e.Total)
		close(handled)
		return nil
	}, herald.WithRetry(herald.RetryConfig{}), herald.WithDeadLetter())
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	defer bus.Shutdown(ctx)

	// The relay moves committed rows from the outbox to the broker.
	relay, _ := outbox.NewRelay(db, outbox.SQLite, "outbox", broker)
	go relay.Run(ctx)
	defer relay.Shutdown(ctx)

	// The business write and the event commit together, or not at all.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO orders VALUES (?, ?)`, "o-1", 4200); err != nil {
		panic(err)
	}
	if err := bus.Publish(outbox.WithTx(ctx, tx), OrderPlaced{OrderID: "o-1", Total: 4200}); err != nil {
		panic(err)
	}
	if err := tx.Commit(); err != nil {
		panic(err)
	}

	<-handled
	// Output:
	// billing: order o-1, total 4200
}
