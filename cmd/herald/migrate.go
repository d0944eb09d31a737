package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/heraldbus/herald/sql/outbox"
)

const migrateAbout = `Creates the outbox table, its quarantine table and its table of sent
rows, with their index, if they do not exist (outbox.Migrate: under the
database's own lock, so several instances may run it at once). With
-print it only prints the statements, for a migration tool (golang-migrate,
goose, Atlas, Flyway): the database is not contacted, and -dsn is needed
only to infer the dialect.

Exit status: 0 on success, 1 when the database failed, 2 for bad flags.`

// runMigrate is "herald migrate".
func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var db dbFlags
	var print bool
	f := newFlagSet("herald migrate", "[flags]", migrateAbout, false)
	db.register(f)
	f.bool(&print, "print", "", false, "print the statements (schema version "+fmt.Sprint(outbox.SchemaVersion)+") instead of running them")
	validate := func() error {
		db.resolve()
		return errors.Join(db.validate(!print)...)
	}
	if code := f.setUp(args, getenv, stdout, stderr, validate); code >= 0 {
		return code
	}
	if print {
		stmts, err := outbox.Schema(db.dialect(), db.Table)
		if err != nil {
			f.fail(stderr, err)
			return 2
		}
		fmt.Fprintf(stdout, "-- herald outbox schema version %d, %s, table %s\n", outbox.SchemaVersion, db.dialect(), db.Table)
		for _, s := range stmts {
			fmt.Fprintf(stdout, "%s;\n\n", strings.TrimSpace(s))
		}
		return 0
	}
	conn, err := db.open()
	if err != nil {
		f.fail(stderr, err)
		return 1
	}
	defer conn.Close()
	if err := outbox.Migrate(ctx, conn, db.dialect(), db.Table); err != nil {
		f.fail(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "tables of %s ready (schema version %d)\n", db.Table, outbox.SchemaVersion)
	return 0
}
