package natsdriver_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/dlq/dlqtest"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// missingPosition is a stream sequence the suite never reaches.
const missingPosition = "999999"

func TestDeadLetters(t *testing.T) {
	dlqtest.Run(t, dlqtest.Config{
		NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
			d := newEnv(t).driver(t)
			return d, d.DeadLetters()
		},
		RejectingWriter: func(t *testing.T) herald.Writer {
			return newEnv(t).driver(t, natsdriver.WithMaxMessageBytes(1))
		},
		MissingPosition: missingPosition,
		BadPositions:    []string{"0", "007", "+3", "1:2", "99999999999999999999"},
	})
}

// TestDeadLettersSharedStream runs the suite on one stream the
// application made for every topic (WithSubjects): positions count across
// topics, and each topic reads only its subject.
func TestDeadLettersSharedStream(t *testing.T) {
	dlqtest.Run(t, dlqtest.Config{
		NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
			d := newEnv(t).sharedStreamDriver(t, jetstream.LimitsPolicy)
			return d, d.DeadLetters()
		},
		RejectingWriter: func(t *testing.T) herald.Writer {
			return newEnv(t).driver(t, natsdriver.WithMaxMessageBytes(1))
		},
		MissingPosition: missingPosition,
		BadPositions:    []string{"0", "007", "+3", "1:2", "99999999999999999999"},
	})
}

// sharedStreamDriver creates one stream with retention for every subject
// of the environment and returns a driver that maps topics onto it.
func (e testEnv) sharedStreamDriver(t *testing.T, retention jetstream.RetentionPolicy) *natsdriver.Driver {
	t.Helper()
	ctx := drivertest.Context(t, time.Minute)
	_, err := e.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: e.streamPrefix + "APP", Subjects: []string{e.subjectPrefix + ".>"}, Retention: retention,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e.driver(t, natsdriver.WithSubjects(func(topic string) string {
		return e.subjectPrefix + "." + natsdriver.Token(topic)
	}))
}

// consumers returns how many consumers the stream name has.
func consumers(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) int {
	t.Helper()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.Consumers
}

// TestDeadLettersReadAcrossGaps deletes sequences from the middle and the
// ends of a dead-letter stream: List pages over the gaps with positions
// that are the stream sequences, Get of a deleted position finds nothing,
// and no read leaves a consumer behind.
func TestDeadLettersReadAcrossGaps(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	ctx := drivertest.Context(t, time.Minute)
	dlqTopic := dlqtest.WriteEntries(t, ctx, d, drivertest.Name(t, "t"), "a", "b", "c", "d", "e", "f", "g")
	stream, err := e.js.Stream(ctx, d.StreamName(dlqTopic))
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{1, 3, 4, 7} { // a, c, d, g
		if err := stream.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	s := d.DeadLetters()
	for _, size := range []int{1, 2, 3, 100} {
		all, cursors := dlqtest.Pages(t, ctx, s, dlqTopic, size)
		if got := dlqtest.IDs(all); !slices.Equal(got, []string{"b", "e", "f"}) {
			t.Errorf("pages of %d: %v, want [b e f]", size, got)
		}
		if got := dlqtest.Positions(all); !slices.Equal(got, []string{"2", "5", "6"}) {
			t.Errorf("pages of %d: positions %v, want the stream sequences [2 5 6]", size, got)
		}
		if size == 1 && !slices.Equal(cursors, []string{"2", "5"}) {
			t.Errorf("pages of 1: cursors %v, want [2 5] (none after the last entry)", cursors)
		}
	}
	if page, next, err := s.List(ctx, dlqTopic, "6", 10); err != nil || len(page) != 0 || next != "" {
		t.Errorf("List after the last entry: %d entries, next %q, %v", len(page), next, err)
	}
	if page, _, err := s.List(ctx, dlqTopic, "3", 1); err != nil || len(page) != 1 || page[0].Message.ID != "e" {
		t.Errorf("List after a deleted position: %v, %v; want e", page, err)
	}
	for _, key := range []string{"3", "a", "7"} {
		if _, err := s.Get(ctx, dlqTopic, key); !errors.Is(err, dlq.ErrNotFound) {
			t.Errorf("Get(%q) of a deleted entry: %v, want ErrNotFound", key, err)
		}
	}
	if got, err := s.Get(ctx, dlqTopic, "f"); err != nil || got.Position != "6" || got.Reason != "boom f" {
		t.Errorf("Get(f) = %+v, %v", got, err)
	}
	if n := consumers(t, ctx, e.js, d.StreamName(dlqTopic)); n != 0 {
		t.Errorf("the reads left %d consumers on the stream", n)
	}
}

// TestDeadLettersMarksAreDeletes checks the NATS form of a mark: the
// message is deleted from the stream, so a driver on another connection
// does not list it, marking it again is harmless, and an entry that is
// not the message at its position deletes nothing.
func TestDeadLettersMarksAreDeletes(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	ctx := drivertest.Context(t, time.Minute)
	topic := drivertest.Name(t, "t")
	dlqTopic := dlqtest.WriteEntries(t, ctx, d, topic, "a", "b", "c", "d")
	otherTopic := dlqtest.WriteEntries(t, ctx, d, drivertest.Name(t, "other"), "x")
	s := d.DeadLetters()
	entries, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 10)
	if len(entries) != 4 {
		t.Fatalf("listed %d entries, want 4", len(entries))
	}
	res, err := dlq.Redrive(ctx, s, d, dlqTopic, dlq.RedriveOptions{Select: []string{"b", "d"}})
	if err != nil || res.Redriven != 2 {
		t.Fatalf("redrive: %+v, %v", res, err)
	}

	other := envOn(t, e.url, connect(t, e.url))
	other.streamPrefix, other.subjectPrefix = e.streamPrefix, e.subjectPrefix
	fresh := other.driver(t).DeadLetters()
	if left, _ := dlqtest.Pages(t, ctx, fresh, dlqTopic, 10); !slices.Equal(dlqtest.IDs(left), []string{"a", "c"}) {
		t.Errorf("a driver on another connection lists %v, want [a c]", dlqtest.IDs(left))
	}
	stream, err := e.js.Stream(ctx, d.StreamName(dlqTopic))
	if err != nil {
		t.Fatal(err)
	}
	if st := stream.CachedInfo().State; st.Msgs != 2 || st.NumDeleted != 2 {
		t.Errorf("stream after the marks: %d messages, %d deleted; want 2 and 2", st.Msgs, st.NumDeleted)
	}
	if err := fresh.MarkRedriven(ctx, dlqTopic, entries[1:2]); err != nil {
		t.Errorf("marking a deleted entry again: %v", err)
	}

	// An entry listed from another topic, and one whose message is not
	// the one at its position: refused, and nothing of the call deleted.
	xs, _ := dlqtest.Pages(t, ctx, s, otherTopic, 10)
	forged := entries[0]
	forged.Message = forged.Message.Clone()
	forged.Message.ID = "not-a"
	for name, batch := range map[string][]dlq.Entry{
		"entry of another topic":    {entries[2], xs[0]},
		"entry not at its position": {entries[2], forged},
	} {
		if err := s.MarkRedriven(ctx, dlqTopic, batch); !errors.Is(err, natsdriver.ErrForeignEntry) {
			t.Errorf("%s: %v, want ErrForeignEntry", name, err)
		}
	}
	if left, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 10); !slices.Equal(dlqtest.IDs(left), []string{"a", "c"}) {
		t.Errorf("after the refused marks: %v, want [a c]", dlqtest.IDs(left))
	}
	// A position alone (an entry without its message) is marked.
	if err := s.MarkRedriven(ctx, dlqTopic, []dlq.Entry{{Position: entries[0].Position}}); err != nil {
		t.Fatal(err)
	}
	if left, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 10); !slices.Equal(dlqtest.IDs(left), []string{"c"}) {
		t.Errorf("after marking a's position: %v, want [c]", dlqtest.IDs(left))
	}
}

// TestDeadLettersBadInputIsTyped checks what the store refuses, with the
// errors a caller can test for, and that a topic without a stream gets
// none from it.
func TestDeadLettersBadInputIsTyped(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	ctx := drivertest.Context(t, time.Minute)
	s := d.DeadLetters()
	dlqTopic := dlqtest.WriteEntries(t, ctx, d, drivertest.Name(t, "t"), "a")
	drivertest.CheckDriverError(t, func() error { _, _, err := s.List(ctx, dlqTopic, "x", 1); return err }(),
		"natsdriver", "list dead letters", dlqTopic, "")

	// A topic whose stream name is another's token twin.
	twin := "dt_" + dlqTopic[len("dt."):]
	if _, _, err := s.List(ctx, twin, "", 1); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("List of %q, whose stream is %q's: %v, want ErrInvalidName", twin, dlqTopic, err)
	}

	missing := herald.DeadLetterTopic(drivertest.Name(t, "none"))
	if err := s.MarkRedriven(ctx, missing, []dlq.Entry{{Position: "1"}}); err != nil {
		t.Errorf("MarkRedriven on a topic without a stream: %v", err)
	}
	if _, err := s.Get(ctx, missing, "1"); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get on a topic without a stream: %v, want ErrNotFound", err)
	}
	if _, err := e.js.Stream(ctx, d.StreamName(missing)); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the store created a stream for %s: %v", missing, err)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.List(ctx, dlqTopic, "", 1); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("List after Close: %v, want ErrClosed", err)
	}
}

// TestDeadLettersOnAWorkQueueStream reads a dead-letter topic on a
// work-queue stream, where a consumer would take the messages away: the
// store reads with direct gets, creates no consumer, and the entries stay
// until they are marked.
func TestDeadLettersOnAWorkQueueStream(t *testing.T) {
	e := newEnv(t)
	d := e.sharedStreamDriver(t, jetstream.WorkQueuePolicy)
	ctx := drivertest.Context(t, time.Minute)
	dlqTopic := dlqtest.WriteEntries(t, ctx, d, drivertest.Name(t, "t"), "a", "b", "c")
	dlqtest.WriteEntries(t, ctx, d, drivertest.Name(t, "other"), "x", "y") // later sequences, another subject
	s := d.DeadLetters()
	for range 2 {
		all, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 2)
		if got := dlqtest.IDs(all); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Errorf("listed %v, want [a b c]", got)
		}
	}
	got, err := s.Get(ctx, dlqTopic, "c")
	if err != nil || got.Position != "3" {
		t.Fatalf("Get(c) = %+v, %v", got, err)
	}
	if _, err := s.Get(ctx, dlqTopic, "4"); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get of a position of another topic: %v, want ErrNotFound", err)
	}
	if n := consumers(t, ctx, e.js, e.streamPrefix+"APP"); n != 0 {
		t.Errorf("the reads created %d consumers on a work-queue stream", n)
	}
	if err := s.MarkRedriven(ctx, dlqTopic, []dlq.Entry{got}); err != nil {
		t.Fatal(err)
	}
	if all, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 10); !slices.Equal(dlqtest.IDs(all), []string{"a", "b"}) {
		t.Errorf("after marking c: %v, want [a b]", dlqtest.IDs(all))
	}
	if err := s.MarkRedriven(ctx, dlqTopic, []dlq.Entry{{Position: "4"}}); !errors.Is(err, natsdriver.ErrForeignEntry) {
		t.Errorf("marking a position of another topic: %v, want ErrForeignEntry", err)
	}
}

// TestDeadLetterWritesAreNotDroppedAsDuplicates checks which writes the
// server's duplicate window takes: a retried publish of a message is
// dropped, but not a second dead-letter entry of one message (two groups
// gave up on it), a redrive written within the window, or, on a stream
// shared by several topics, one ID written to two topics.
func TestDeadLetterWritesAreNotDroppedAsDuplicates(t *testing.T) {
	ctx := drivertest.Context(t, time.Minute)
	for _, shared := range []bool{false, true} {
		e := newEnv(t)
		d := e.driver(t)
		if shared {
			d = e.sharedStreamDriver(t, jetstream.LimitsPolicy)
		}
		topic := drivertest.Name(t, "t")
		dlqTopic := herald.DeadLetterTopic(topic)
		plain := message(topic, "m", "k")
		entry := func(group string) *herald.Message {
			m := plain.Clone()
			m.Topic = dlqTopic
			m.Headers[herald.HeaderDeadLetterTopic], m.Headers[herald.HeaderDeadLetterGroup] = topic, group
			return m
		}
		for _, batch := range [][]*herald.Message{{plain}, {plain}, {entry("g1")}, {entry("g2")}} {
			if err := d.Write(ctx, batch); err != nil {
				t.Fatal(err)
			}
		}
		s := d.DeadLetters()
		entries, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 10)
		if len(entries) != 2 || entries[0].Group != "g1" || entries[1].Group != "g2" || entries[1].Message.ID != "m" {
			t.Fatalf("shared %v: dead-letter entries %+v, want one per group, of message m", shared, entries)
		}
		res, err := dlq.Redrive(ctx, s, d, dlqTopic, dlq.RedriveOptions{})
		if err != nil || res.Redriven != 2 {
			t.Fatalf("shared %v: redrive: %+v, %v", shared, res, err)
		}
		back, _ := dlqtest.Pages(t, ctx, s, topic, 10)
		if got := dlqtest.IDs(back); !slices.Equal(got, []string{"m", "m", "m"}) {
			t.Errorf("shared %v: the topic holds %v, want m once and its two redrives", shared, got)
		}
		if len(back) == 3 && (back[0].Message.Headers[herald.HeaderRedriveGroup] != "" || back[2].Message.Headers[herald.HeaderRedriveGroup] != "g2") {
			t.Errorf("shared %v: stored %+v", shared, back)
		}
	}
}
