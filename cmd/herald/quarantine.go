package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/heraldbus/herald/sql/outbox"
)

const quarantineUsage = `Usage:

	herald quarantine list    [flags]                list the rows a relay gave up on
	herald quarantine replay  [flags] (-all | ID ...) move rows back into the outbox
	herald quarantine discard [flags] ID ...          delete rows for good

A relay moves a row to <table>_quarantine after -max-attempts failed
deliveries (a message its target refuses: too large, an invalid topic),
so that it never blocks its key. Replayed rows keep their message IDs and
get new outbox ids: they are delivered after every row already waiting.
IDs are the quarantine table's (the ID column of list).

Exit status: 0 on success, 1 when the database failed or an ID was not
found, 2 for bad flags or arguments.

Run "herald quarantine list -h" (or replay, discard) for the flags.
`

// runQuarantine is "herald quarantine".
func runQuarantine(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	sub, code := subcommand("quarantine", quarantineUsage, args, []string{"list", "replay", "discard"}, stdout, stderr)
	if code >= 0 {
		return code
	}
	var db dbFlags
	var limit int
	var asJSON, all bool
	synopsis := map[string]string{"list": "[flags]", "replay": "[flags] (-all | ID ...)", "discard": "[flags] ID ..."}[sub]
	f := newFlagSet("herald quarantine "+sub, synopsis, quarantineUsage, sub != "list")
	db.register(f)
	switch sub {
	case "list":
		f.IntVar(&limit, "limit", 50, "list at most this many rows (0: all)")
		f.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	case "replay":
		f.BoolVar(&all, "all", false, "replay every quarantined row")
	}
	var ids []int64
	validate := func() error {
		db.resolve()
		errs := db.validate(true)
		if limit < 0 {
			errs = append(errs, fmt.Errorf("-limit %d: want 0 (all) or more", limit))
		}
		for _, a := range f.Args() {
			id, err := strconv.ParseInt(a, 10, 64)
			if err != nil || id <= 0 {
				errs = append(errs, fmt.Errorf("ID %q: want a positive number (the ID column of list)", a))
			}
			ids = append(ids, id)
		}
		switch {
		case sub == "replay" && all == (len(ids) > 0):
			errs = append(errs, errors.New("give -all, or the IDs to replay, not both"))
		case sub == "discard" && len(ids) == 0:
			errs = append(errs, errors.New("give the IDs to discard"))
		}
		return errors.Join(errs...)
	}
	if code := f.setUp(args[1:], getenv, stdout, stderr, validate); code >= 0 {
		return code
	}
	conn, err := db.open()
	if err != nil {
		f.fail(stderr, err)
		return 1
	}
	defer conn.Close()
	q, err := outbox.NewQuarantine(conn, db.dialect(), db.Table)
	if err != nil {
		f.fail(stderr, err)
		return 2
	}
	switch sub {
	case "list":
		err = quarantineList(ctx, q, limit, asJSON, stdout, stderr)
	case "replay":
		err = quarantineChange(ctx, "replayed", ids, all, q.Replay, q.ReplayAll, stdout)
	default:
		err = quarantineChange(ctx, "discarded", ids, false, q.Discard, nil, stdout)
	}
	if err != nil {
		f.fail(stderr, err)
		return 1
	}
	return 0
}

func quarantineList(ctx context.Context, q *outbox.Quarantine, limit int, asJSON bool, stdout, stderr io.Writer) error {
	var rows []outbox.QuarantinedMessage
	after := int64(0)
	for limit == 0 || len(rows) < limit {
		want := listPage
		if limit > 0 {
			want = min(want, limit-len(rows))
		}
		page, err := q.List(ctx, after, want)
		if err != nil {
			return err
		}
		rows = append(rows, page...)
		if len(page) < want {
			break
		}
		after = page[len(page)-1].ID
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		for _, r := range rows {
			if err := enc.Encode(map[string]any{
				"id": r.ID, "outbox_id": r.OutboxID, "message_id": r.Message.ID, "topic": r.Message.Topic, "key": r.Message.Key,
				"attempts": r.Attempts, "last_error": r.LastError, "quarantined_at": formatTime(r.QuarantinedAt, time.RFC3339Nano),
			}); err != nil {
				return err
			}
		}
		return nil
	}
	if len(rows) == 0 {
		fmt.Fprintln(stderr, "no quarantined rows")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tOUTBOX ID\tMESSAGE ID\tTOPIC\tKEY\tATTEMPTS\tQUARANTINED\tLAST ERROR")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, r.OutboxID, r.Message.ID, r.Message.Topic, orDash(r.Message.Key),
			r.Attempts, formatTime(r.QuarantinedAt, time.RFC3339), oneLine(r.LastError, 60))
	}
	return tw.Flush()
}

// quarantineChange replays or discards ids (or every row with all) and
// says how many rows it changed; fewer than asked is an error.
func quarantineChange(ctx context.Context, verb string, ids []int64, all bool,
	some func(context.Context, ...int64) (int64, error), every func(context.Context) (int64, error), stdout io.Writer) error {
	var n int64
	var err error
	if all {
		n, err = every(ctx)
	} else {
		n, err = some(ctx, ids...)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %d row(s)\n", verb, n)
	if !all && n < int64(len(ids)) {
		return fmt.Errorf("%d of the %d IDs were not in the quarantine", int64(len(ids))-n, len(ids))
	}
	return nil
}
