package dlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/heraldbus/herald"
)

// DefaultBatchSize is how many entries Redrive writes and marks at a time
// when RedriveOptions.BatchSize is 0.
const DefaultBatchSize = 100

// ErrNoOriginalTopic is the reason Redrive skips an entry that does not
// say where it came from (no herald.HeaderDeadLetterTopic header).
var ErrNoOriginalTopic = errors.New("dlq: entry has no original topic")

// RedriveOptions configures Redrive.
type RedriveOptions struct {
	// Select names the entries to redrive, each by position or message ID
	// as Store.Get takes them; empty means every entry of the topic.
	Select []string
	// BatchSize is how many entries are written, then marked, at a time
	// (default DefaultBatchSize).
	BatchSize int
	// DryRun reads and checks the entries as a redrive would, and writes
	// and marks nothing; the result and the progress say what would be
	// redriven.
	DryRun bool
	// Progress, if set, is called after each batch, from the goroutine
	// that called Redrive.
	Progress func(Progress)
}

// Progress reports a batch Redrive has finished.
type Progress struct {
	// Batch holds the entries of this batch that were redriven (in a dry
	// run: that would be).
	Batch []Entry
	// Done counts the entries redriven so far, Batch included.
	Done int
	// Total is how many entries the run redrives in all when that is known
	// up front (with RedriveOptions.Select), else 0.
	Total int
}

// RedriveResult says what Redrive did. An entry is in at most one of its
// counts and lists.
type RedriveResult struct {
	// Redriven counts the entries written back and marked redriven (in a
	// dry run: that would be).
	Redriven int
	// Skipped lists the entries that cannot go back, with why; they are
	// left in the dead-letter topic, neither written nor marked.
	Skipped []SkippedEntry
	// Deferred counts the entries dead-lettered after this run started
	// (by their HeaderDeadLetterTime), left for the next run. That is what
	// stops a redrive of the whole topic from chasing messages that fail
	// again as it goes.
	Deferred int
	// NotFound lists the selected positions and IDs that matched no entry
	// (or one already redriven).
	NotFound []string
}

// SkippedEntry is an entry Redrive left in the dead-letter topic.
type SkippedEntry struct {
	Entry Entry
	// Err is why: ErrNoOriginalTopic, or a *herald.NameError for an
	// original topic that is not a valid name or is the dead-letter topic
	// itself.
	Err error
}

// Redrive writes entries of the dead-letter topic dlqTopic back to their
// original topics through w, then marks them redriven in s, one batch at a
// time: every entry, page by page in List order (entries dead-lettered
// after the run started are left, see RedriveResult.Deferred), or the
// entries named by opt.Select, in that order. Each message written is
// Entry.Redriven: same ID, key, payload and headers, without the
// herald-dlq-* headers, addressed to the group that gave up on it (see the
// package doc). Entries that cannot go back (no valid original
// topic) are skipped and reported, never written, marked or lost.
//
// Redrive is at-least-once and safe to re-run. A batch is marked only
// after w took all of it; when the write or the mark fails, Redrive
// returns the error with the result so far, and the batch's entries stay
// listed, so the next run writes them again (with the same IDs, which
// deduplicating subscribers skip). Entries already marked are not listed,
// so a second run over a drained topic writes nothing. Redrive stops when
// ctx ends, between or inside batches, with the same guarantee.
//
// dlqTopic and every original topic are checked with herald.ValidateName.
// Selecting by message ID asks the Store to search the topic for each ID.
func Redrive(ctx context.Context, s Store, w herald.Writer, dlqTopic string, opt RedriveOptions) (RedriveResult, error) {
	r := &redriver{store: s, w: w, topic: dlqTopic, opt: opt}
	if err := herald.ValidateName("topic", dlqTopic); err != nil {
		return r.res, fmt.Errorf("dlq: redrive: %w", err)
	}
	if opt.BatchSize < 0 {
		return r.res, fmt.Errorf("dlq: redrive %q: batch size %d: want 0 (default) or more", dlqTopic, opt.BatchSize)
	}
	if r.opt.BatchSize == 0 {
		r.opt.BatchSize = DefaultBatchSize
	}
	if len(opt.Select) > 0 {
		return r.res, r.selected(ctx)
	}
	return r.res, r.all(ctx)
}

type redriver struct {
	store Store
	w     herald.Writer
	topic string
	opt   RedriveOptions
	res   RedriveResult
}

// all pages through the whole topic.
func (r *redriver) all(ctx context.Context) error {
	start := time.Now()
	cursor := ""
	for {
		page, next, err := r.store.List(ctx, r.topic, cursor, r.opt.BatchSize)
		if err != nil {
			return fmt.Errorf("dlq: redrive %q: list: %w", r.topic, err)
		}
		current := page[:0:0]
		for _, e := range page {
			if e.Time.After(start) {
				r.res.Deferred++
				continue
			}
			current = append(current, e)
		}
		if err := r.redrive(ctx, r.keep(current), 0); err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		cursor = next
	}
}

// selected redrives the entries opt.Select names.
func (r *redriver) selected(ctx context.Context) error {
	seen := make(map[string]bool, len(r.opt.Select))
	var found []Entry
	for _, sel := range r.opt.Select {
		e, err := r.store.Get(ctx, r.topic, sel)
		if errors.Is(err, ErrNotFound) {
			r.res.NotFound = append(r.res.NotFound, sel)
			continue
		}
		if err != nil {
			return fmt.Errorf("dlq: redrive %q: get %q: %w", r.topic, sel, err)
		}
		if !seen[e.Position] {
			seen[e.Position] = true
			found = append(found, e)
		}
	}
	found = r.keep(found)
	for i := 0; i < len(found); i += r.opt.BatchSize {
		if err := r.redrive(ctx, found[i:min(i+r.opt.BatchSize, len(found))], len(found)); err != nil {
			return err
		}
	}
	return nil
}

// keep returns the entries that can go back and records the others as
// skipped.
func (r *redriver) keep(entries []Entry) []Entry {
	kept := entries[:0:0]
	for _, e := range entries {
		var err error
		switch {
		case e.Topic == "":
			err = ErrNoOriginalTopic
		case e.Topic == r.topic:
			err = &herald.NameError{Kind: "topic", Name: e.Topic, Reason: "original topic is the dead-letter topic itself"}
		default:
			err = herald.ValidateName("topic", e.Topic)
		}
		if err != nil {
			r.res.Skipped = append(r.res.Skipped, SkippedEntry{Entry: e, Err: err})
			continue
		}
		kept = append(kept, e)
	}
	return kept
}

// redrive writes one batch, marks it, and reports progress.
func (r *redriver) redrive(ctx context.Context, batch []Entry, total int) error {
	if len(batch) == 0 {
		return nil
	}
	if !r.opt.DryRun {
		msgs := make([]*herald.Message, len(batch))
		for i, e := range batch {
			msgs[i] = e.Redriven()
		}
		if err := r.w.Write(ctx, msgs); err != nil {
			return fmt.Errorf("dlq: redrive %d entries of %q from %s: write: %w", len(batch), r.topic, batch[0].Position, err)
		}
		if err := r.store.MarkRedriven(ctx, r.topic, batch); err != nil {
			return fmt.Errorf("dlq: redrive %d entries of %q from %s: written, but not marked (the next run writes them again): %w",
				len(batch), r.topic, batch[0].Position, err)
		}
	}
	r.res.Redriven += len(batch)
	if r.opt.Progress != nil {
		r.opt.Progress(Progress{Batch: batch, Done: r.res.Redriven, Total: total})
	}
	return nil
}
