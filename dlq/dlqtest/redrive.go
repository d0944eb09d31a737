package dlqtest

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/drivertest"
)

// redriveAll is the RedriveAll scenario: messages dead-lettered by one
// group are all redriven in small batches, that group receives them again
// as they were published, and a second redrive finds nothing.
type redriveAll struct {
	cfg Config
	ctx context.Context
	d   herald.Driver
	s   dlq.Store
	n   int
	dl  deadLettered
}

func testRedriveAll(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	sc := &redriveAll{cfg: cfg, ctx: testContext(t, cfg), d: d, s: s, n: 7}
	sc.dl = deadLetter(t, cfg, d, s, sc.n)
	runSteps(t,
		step{"RedrivesEveryEntryInBatches", sc.redriveInBatches},
		step{"GroupThatGaveUpReceivesEachAsPublished", sc.receiveAsPublished},
		step{"SecondRedriveWritesNothing", sc.redriveAgain},
	)
}

// redriveInBatches redrives every entry in batches of three and checks
// the result, the progress reports and that no entry is left.
func (sc *redriveAll) redriveInBatches(t *testing.T) {
	var progress []dlq.Progress
	res, err := dlq.Redrive(sc.ctx, sc.s, sc.d, sc.dl.dlqTopic, dlq.RedriveOptions{
		BatchSize: 3,
		Progress:  func(p dlq.Progress) { progress = append(progress, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Redriven != sc.n || len(res.Skipped) != 0 || res.Deferred != 0 || len(res.NotFound) != 0 {
		t.Errorf("result %+v", res)
	}
	checkBatches(t, progress, 3, sc.n)
	if left := listAll(t, sc.s, sc.dl.dlqTopic, 100); len(left) != 0 {
		t.Errorf("%d entries left after the redrive: %v", len(left), Positions(left))
	}
}

// checkBatches checks the progress of a redrive of all n entries in
// batches of size: no total (nothing was selected), no batch larger than
// size, as many batches as that takes at least, and n done at the end.
func checkBatches(t *testing.T, progress []dlq.Progress, size, n int) {
	t.Helper()
	var done []int
	for _, p := range progress {
		done = append(done, p.Done)
		if len(p.Batch) > size || p.Total != 0 {
			t.Errorf("progress %d: batch of %d, total %d", p.Done, len(p.Batch), p.Total)
		}
	}
	if len(done) < (n+size-1)/size || done[len(done)-1] != n {
		t.Errorf("progress reported %v, want batches of at most %d up to %d", done, size, n)
	}
}

// receiveAsPublished checks the group that gave up, fixed, receives
// every message again, as published, without the dead-letter headers.
func (sc *redriveAll) receiveAsPublished(t *testing.T) {
	for id, m := range consume(t, sc.cfg, sc.d, sc.dl, sc.n) {
		sc.checkRedriven(t, id, m)
	}
}

// checkRedriven checks m, received after the redrive, is the message sent
// as id with the redrive's headers instead of the dead-letter ones.
func (sc *redriveAll) checkRedriven(t *testing.T, id string, m *herald.Message) {
	t.Helper()
	sent := sc.dl.sent[id]
	if sent == nil {
		t.Errorf("unexpected message %s", id)
		return
	}
	if m.Key != sent.Key || string(m.Data) != string(sent.Data) || m.ContentType != sent.ContentType ||
		!m.Time.Truncate(time.Millisecond).Equal(sent.Time.Truncate(time.Millisecond)) { // Kafka keeps milliseconds
		t.Errorf("message %s: got %+v, sent %+v", id, m, sent)
	}
	want := maps.Clone(sent.Headers)
	want[herald.HeaderRedriveGroup], want[herald.HeaderRedriveCount] = sc.dl.group, "1"
	if !maps.Equal(m.Headers, want) {
		t.Errorf("message %s: headers %v, want those sent and the redrive's %v", id, m.Headers, want)
	}
}

// redriveAgain checks a second redrive finds nothing and writes nothing,
// and a redriven entry is no longer found.
func (sc *redriveAll) redriveAgain(t *testing.T) {
	before := len(listAll(t, sc.s, sc.dl.topic, 100))
	res, err := dlq.Redrive(sc.ctx, sc.s, sc.d, sc.dl.dlqTopic, dlq.RedriveOptions{})
	if err != nil || res.Redriven != 0 {
		t.Errorf("second redrive: %+v, %v", res, err)
	}
	if after := len(listAll(t, sc.s, sc.dl.topic, 100)); before != 2*sc.n || after != before {
		t.Errorf("original topic holds %d messages before the second redrive and %d after, want %d", before, after, 2*sc.n)
	}
	if _, err := sc.s.Get(sc.ctx, sc.dl.dlqTopic, sc.dl.ids[0]); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get of a redriven entry: %v, want ErrNotFound", err)
	}
}

func testRedriveSelected(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	dl := deadLetter(t, cfg, d, s, 4)
	entries := listAll(t, s, dl.dlqTopic, 100)

	res, err := dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{Select: []string{dl.ids[1]}})
	if err != nil || res.Redriven != 1 {
		t.Fatalf("redrive by ID: %+v, %v", res, err)
	}
	left := listAll(t, s, dl.dlqTopic, 100)
	if len(left) != 3 || slices.ContainsFunc(left, func(e dlq.Entry) bool { return e.Message.ID == dl.ids[1] }) {
		t.Errorf("after redriving %s: %d entries left", dl.ids[1], len(left))
	}

	// By position, twice (once by ID), with one unknown name.
	var pos string
	for _, e := range entries {
		if e.Message.ID == dl.ids[2] {
			pos = e.Position
		}
	}
	var total []int
	res, err = dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{
		Select:   []string{pos, dl.ids[2], "no-such-id", dl.ids[1]},
		Progress: func(p dlq.Progress) { total = append(total, p.Done, p.Total) },
	})
	if err != nil || res.Redriven != 1 || !slices.Equal(res.NotFound, []string{"no-such-id", dl.ids[1]}) {
		t.Fatalf("redrive by position: %+v, %v", res, err)
	}
	if !slices.Equal(total, []int{1, 1}) {
		t.Errorf("progress (done, total): %v", total)
	}
	if left := listAll(t, s, dl.dlqTopic, 100); len(left) != 2 {
		t.Errorf("%d entries left, want 2", len(left))
	}
	got := consume(t, cfg, d, dl, 2)
	if got[dl.ids[1]] == nil || got[dl.ids[2]] == nil {
		t.Errorf("redriven %v, want %s and %s", slices.Collect(maps.Keys(got)), dl.ids[1], dl.ids[2])
	}
}

// leftBehind is the RedriveLeavesWhatCannotGoBack scenario: entries
// written straight to a dead-letter topic, three of which cannot go back
// (no original topic, an invalid one, the dead-letter topic itself), one
// dead-lettered after the redrive started, and one good.
type leftBehind struct {
	cfg             Config
	ctx             context.Context
	d               herald.Driver
	s               dlq.Store
	topic, dlqTopic string
}

func testLeftBehind(t *testing.T, cfg Config) {
	d, s := cfg.NewDriver(t)
	topic := drivertest.Name(t, "t")
	sc := &leftBehind{cfg: cfg, ctx: testContext(t, cfg), d: d, s: s, topic: topic, dlqTopic: herald.DeadLetterTopic(topic)}
	sc.writeEntries(t)
	runSteps(t,
		step{"DryRunCountsAndWritesNothing", sc.dryRun},
		step{"RedriveSkipsWhatCannotGoBackAndDefersTheLater", sc.redrive},
		step{"SkippedAndDeferredStayListed", sc.checkLeft},
		step{"OnlyTheGoodEntryGoesBackWithoutDeadLetterHeaders", sc.checkWrittenBack},
		step{"SelectingTheLaterEntryRedrivesIt", sc.redriveLater},
	)
}

// writeEntries writes the five entries and waits for them to be listed.
func (sc *leftBehind) writeEntries(t *testing.T) {
	t.Helper()
	now := time.Now().UTC()
	entry := func(id, origin string, at time.Time) *herald.Message {
		h := herald.Headers{herald.HeaderDeadLetterReason: "boom", herald.HeaderDeadLetterTime: at.Format(time.RFC3339Nano)}
		if origin != "" {
			h[herald.HeaderDeadLetterTopic] = origin
		}
		return &herald.Message{ID: id, Topic: sc.dlqTopic, Key: "k", Headers: h, Data: []byte(id), Time: now}
	}
	err := sc.d.Write(sc.ctx, []*herald.Message{
		entry("no-origin", "", now),
		entry("bad-origin", "no spaces allowed", now),
		entry("loop", sc.dlqTopic, now),
		entry("later", sc.topic, now.Add(time.Hour)),
		entry("good", sc.topic, now.Add(-time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, sc.cfg, "5 entries", func() bool { return len(listAll(t, sc.s, sc.dlqTopic, 100)) == 5 })
}

// dryRun checks a dry run reports what a redrive would do, with the good
// entry as its one batch, and writes nothing.
func (sc *leftBehind) dryRun(t *testing.T) {
	var batches [][]string
	res, err := dlq.Redrive(sc.ctx, sc.s, sc.d, sc.dlqTopic, dlq.RedriveOptions{DryRun: true, Progress: func(p dlq.Progress) {
		batches = append(batches, IDs(p.Batch))
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Redriven != 1 || res.Deferred != 1 || len(res.Skipped) != 3 || len(batches) != 1 || !slices.Equal(batches[0], []string{"good"}) {
		t.Errorf("dry run: %+v, batches %v", res, batches)
	}
	if n := len(listAll(t, sc.s, sc.topic, 100)); n != 0 {
		t.Errorf("dry run wrote %d messages", n)
	}
}

// redrive redrives the topic and checks each entry that cannot go back is
// skipped with the reason why, and the later one deferred.
func (sc *leftBehind) redrive(t *testing.T) {
	res, err := dlq.Redrive(sc.ctx, sc.s, sc.d, sc.dlqTopic, dlq.RedriveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	skipped := make(map[string]error)
	for _, sk := range res.Skipped {
		skipped[sk.Entry.Message.ID] = sk.Err
	}
	if res.Redriven != 1 || res.Deferred != 1 || len(skipped) != 3 ||
		!errors.Is(skipped["no-origin"], dlq.ErrNoOriginalTopic) ||
		!errors.Is(skipped["bad-origin"], herald.ErrInvalidName) || !errors.Is(skipped["loop"], herald.ErrInvalidName) {
		t.Errorf("redrive: %+v", res)
	}
}

// checkLeft checks the skipped and deferred entries are still listed.
func (sc *leftBehind) checkLeft(t *testing.T) {
	if left := IDs(listAll(t, sc.s, sc.dlqTopic, 100)); !slices.Equal(sorted(left), []string{"bad-origin", "later", "loop", "no-origin"}) {
		t.Errorf("left in the dead-letter topic: %v", left)
	}
}

// checkWrittenBack checks the original topic received the good entry
// alone, without the dead-letter headers.
func (sc *leftBehind) checkWrittenBack(t *testing.T) {
	back := listAll(t, sc.s, sc.topic, 100)
	if len(back) != 1 || back[0].Message.ID != "good" || len(back[0].Message.Headers) != 0 {
		t.Errorf("written back: %+v", back)
	}
}

// redriveLater checks selecting the entry dead-lettered "later" than the
// redrive's start redrives it.
func (sc *leftBehind) redriveLater(t *testing.T) {
	res, err := dlq.Redrive(sc.ctx, sc.s, sc.d, sc.dlqTopic, dlq.RedriveOptions{Select: []string{"later"}})
	if err != nil || res.Redriven != 1 {
		t.Errorf("redrive of the later entry: %+v, %v", res, err)
	}
}

func testFailedWrite(t *testing.T, cfg Config) {
	if cfg.RejectingWriter == nil {
		t.Skip("no RejectingWriter")
	}
	d, s := cfg.NewDriver(t)
	ctx := testContext(t, cfg)
	dl := deadLetter(t, cfg, d, s, 3)
	res, err := dlq.Redrive(ctx, s, cfg.RejectingWriter(t), dl.dlqTopic, dlq.RedriveOptions{})
	if err == nil || res.Redriven != 0 {
		t.Fatalf("redrive through a rejecting writer: %+v, %v", res, err)
	}
	if n := len(listAll(t, s, dl.dlqTopic, 100)); n != 3 {
		t.Errorf("%d entries listed after the failed redrive, want all 3", n)
	}
	if res, err := dlq.Redrive(ctx, s, d, dl.dlqTopic, dlq.RedriveOptions{}); err != nil || res.Redriven != 3 {
		t.Errorf("redrive after the failure: %+v, %v", res, err)
	}
}
