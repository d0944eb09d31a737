// Package shopdb is the examples' stand-in for a service's own database: a
// fresh SQLite file with an orders table, beside which an example puts its
// outbox table.
package shopdb

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // database/sql driver "sqlite", pure Go
)

// Open creates a shop database in a new temporary directory and returns it
// with a function that closes it and deletes the directory. It opens the
// file with the DSN the outbox package recommends for SQLite (WAL, a busy
// timeout, immediate transactions): the relay is a second writer of the
// file, and neither side should fail with SQLITE_BUSY.
func Open(ctx context.Context) (*sql.DB, func(), error) {
	dir, err := os.MkdirTemp("", "herald-shop")
	if err != nil {
		return nil, nil, err
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "shop.db")+
		"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_txlock=immediate")
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	closeDB := func() {
		db.Close()
		os.RemoveAll(dir)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE orders (id TEXT PRIMARY KEY, amount INTEGER)`); err != nil {
		closeDB()
		return nil, nil, err
	}
	return db, closeDB, nil
}

// InsertOrder writes an order in tx: the business write that an event
// commits with.
func InsertOrder(ctx context.Context, tx *sql.Tx, id string, amount int) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO orders VALUES (?, ?)`, id, amount)
	return err
}
