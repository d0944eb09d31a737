package shopdb

import (
	"context"
	"testing"
)

func TestOpen(t *testing.T) {
	ctx := context.Background()
	db, closeDB, err := Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeDB)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := InsertOrder(ctx, tx, "o-1", 42); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var amount int
	if err := db.QueryRowContext(ctx, `SELECT amount FROM orders WHERE id = 'o-1'`).Scan(&amount); err != nil || amount != 42 {
		t.Fatalf("order o-1: amount %d, %v; want 42", amount, err)
	}
	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal mode %q, %v; want wal", mode, err)
	}
}
