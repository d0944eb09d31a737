package amqpdriver_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/dlq"
	"github.com/heraldbus/herald/dlq/dlqtest"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// retainAll keeps every topic in a stream, so that the suite can read
// back, with the store, the topics the redrives wrote to.
var retainAll = amqpdriver.WithRetainedTopics(func(string) bool { return true })

func TestDeadLetters(t *testing.T) {
	dlqtest.Run(t, dlqtest.Config{
		NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
			d := newDriver(t, retainAll)
			return d, d.DeadLetters()
		},
		RejectingWriter: func(t *testing.T) herald.Writer {
			return newDriver(t, amqpdriver.WithMaxMessageBytes(1))
		},
		// An offset no stream of the suite reaches.
		MissingPosition: "999999999",
		BadPositions:    []string{"007", "+3", "1:2", "99999999999999999999"},
	})
}

func TestDeadLettersSharedExchange(t *testing.T) {
	dlqtest.Run(t, dlqtest.Config{
		NewDriver: func(t *testing.T) (herald.Driver, dlq.Store) {
			d := newDriver(t, retainAll, amqpdriver.WithExchange(prefix(t)+"all"))
			return d, d.DeadLetters()
		},
		RejectingWriter: func(t *testing.T) herald.Writer {
			return newDriver(t, amqpdriver.WithMaxMessageBytes(1))
		},
		MissingPosition: "999999999",
		BadPositions:    []string{"007", "+3", "1:2", "99999999999999999999"},
	})
}

// TestDeadLettersKeptWithoutAGroup checks what the stream adds: dead
// letters no group consumes are kept (a queue-only topology drops them),
// and a group that does consume the dead-letter topic gets them as well,
// while the fences of the reads reach neither that group nor the
// listing; a topic that is not retained keeps nothing.
func TestDeadLettersKeptWithoutAGroup(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, time.Minute)
	topic := drivertest.Name(t, "t")
	dlqTopic := herald.DeadLetterTopic(topic)
	sub, err := d.Subscribe(ctx, dlqTopic, "ops")
	if err != nil {
		t.Fatal(err)
	}
	dlqtest.WriteEntries(t, ctx, d, topic, "a", "b", "c")
	s := d.DeadLetters()
	for _, size := range []int{1, 2, 10} {
		all, cursors := dlqtest.Pages(t, ctx, s, dlqTopic, size)
		if got := dlqtest.IDs(all); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Errorf("pages of %d: %v, want [a b c]", size, got)
		}
		if size == 1 && len(cursors) != 2 {
			t.Errorf("pages of 1: cursors %v, want 2 (none after the last entry)", cursors)
		}
		if len(all) == 3 && (all[0].Reason != "boom a" || all[0].Topic != topic || all[0].Message.Topic != dlqTopic) {
			t.Errorf("entry a: %+v", all[0])
		}
	}
	got := drivertest.FetchExactly(t, sub, 3)
	var ids []string
	for _, dl := range got {
		ids = append(ids, dl.Message.ID)
	}
	if !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Errorf("the ops group received %v, want [a b c]", ids)
	}
	drivertest.Ack(t, sub, got...)
	if lag, err := drivertest.LagReporter(t, sub).Lag(ctx); err != nil || lag != 0 {
		t.Errorf("the ops group's queue holds %d more (%v), want 0: no fence of the reads", lag, err)
	}
	drivertest.CloseSub(t, sub)

	plain := drivertest.Name(t, "plain")
	if err := d.Write(ctx, []*herald.Message{{ID: "p", Topic: plain, Data: []byte("p")}}); err != nil {
		t.Fatal(err)
	}
	if page, next, err := s.List(ctx, plain, "", 10); err != nil || len(page) != 0 || next != "" {
		t.Errorf("List of a topic that is not retained: %d entries, next %q, %v", len(page), next, err)
	}
}

// TestDeadLettersMarks checks the RabbitMQ form of a mark: a record in
// the marks stream, so that a driver on other connections does not list
// the entry, marking it again is harmless, and an entry of another topic
// marks nothing.
func TestDeadLettersMarks(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, time.Minute)
	dlqTopic := dlqtest.WriteEntries(t, ctx, d, drivertest.Name(t, "t"), "a", "b", "c", "d")
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
	fresh := sameNames(t, d).DeadLetters()
	if left, _ := dlqtest.Pages(t, ctx, fresh, dlqTopic, 10); !slices.Equal(dlqtest.IDs(left), []string{"a", "c"}) {
		t.Errorf("a driver on other connections lists %v, want [a c]", dlqtest.IDs(left))
	}
	for _, key := range []string{entries[1].Position, "b"} {
		if _, err := fresh.Get(ctx, dlqTopic, key); !errors.Is(err, dlq.ErrNotFound) {
			t.Errorf("Get(%q) of a redriven entry: %v, want ErrNotFound", key, err)
		}
	}
	if err := fresh.MarkRedriven(ctx, dlqTopic, entries[1:2]); err != nil {
		t.Errorf("marking a redriven entry again: %v", err)
	}
	xs, _ := dlqtest.Pages(t, ctx, s, otherTopic, 10)
	if err := s.MarkRedriven(ctx, dlqTopic, []dlq.Entry{entries[2], xs[0]}); !errors.Is(err, amqpdriver.ErrForeignEntry) {
		t.Errorf("an entry of another topic: %v, want ErrForeignEntry", err)
	}
	if left, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 10); !slices.Equal(dlqtest.IDs(left), []string{"a", "c"}) {
		t.Errorf("after the refused mark: %v, want [a c]", dlqtest.IDs(left))
	}
	// A position alone (an entry without its message) is marked.
	if err := s.MarkRedriven(ctx, dlqTopic, []dlq.Entry{{Position: entries[0].Position}}); err != nil {
		t.Fatal(err)
	}
	if left, _ := dlqtest.Pages(t, ctx, s, dlqTopic, 10); !slices.Equal(dlqtest.IDs(left), []string{"c"}) {
		t.Errorf("after marking a's position: %v, want [c]", dlqtest.IDs(left))
	}
	if left, _ := dlqtest.Pages(t, ctx, fresh, dlqTopic, 10); !slices.Equal(dlqtest.IDs(left), []string{"c"}) {
		t.Errorf("the other driver, after marking a's position: %v, want [c]", dlqtest.IDs(left))
	}
}

// sameNames returns a second driver, on connections of its own, that
// names exchanges and streams as d does.
func sameNames(t *testing.T, d *recorder) *amqpdriver.Driver {
	t.Helper()
	other, err := amqpdriver.New(brokerURL(t), amqpdriver.WithNamePrefix(d.StreamName("")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close() })
	return other
}

// TestDeadLettersBadInputIsTyped checks what the store refuses, with the
// errors a caller can test for, and that reading a topic without a
// stream creates none.
func TestDeadLettersBadInputIsTyped(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, time.Minute)
	s := d.DeadLetters()
	dlqTopic := dlqtest.WriteEntries(t, ctx, d, drivertest.Name(t, "t"), "a")
	drivertest.CheckDriverError(t, func() error { _, _, err := s.List(ctx, dlqTopic, "x", 1); return err }(),
		"amqpdriver", "list dead letters", dlqTopic, "")
	if page, next, err := s.List(ctx, dlqTopic, "999999999", 10); err != nil || len(page) != 0 || next != "" {
		t.Errorf("List after the end of the stream: %d entries, next %q, %v", len(page), next, err)
	}

	missing := herald.DeadLetterTopic(drivertest.Name(t, "none"))
	if _, err := s.Get(ctx, missing, "0"); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Get on a topic without a stream: %v, want ErrNotFound", err)
	}
	if page, _, err := s.List(ctx, missing, "", 10); err != nil || len(page) != 0 {
		t.Errorf("List on a topic without a stream: %d entries, %v", len(page), err)
	}
	if exists(t, d.StreamName(missing)) {
		t.Errorf("the store created a stream for %s", missing)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.List(ctx, dlqTopic, "", 1); !errors.Is(err, herald.ErrClosed) {
		t.Errorf("List after Close: %v, want ErrClosed", err)
	}
}

// exists reports whether the broker has a queue (or stream) name.
func exists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := amqp.Dial(brokerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	err = withChannel(conn, func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		return err
	})
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestRetainedStreamKeepsItsFirstRetention writes one dead-letter topic
// through drivers with different retentions: the first declares the
// stream, the others use it as it is (the broker refuses to declare it
// again with other arguments), and every entry is kept.
func TestRetainedStreamKeepsItsFirstRetention(t *testing.T) {
	first := newDriver(t, amqpdriver.WithRetention(time.Hour, 1<<20))
	ctx := drivertest.Context(t, time.Minute)
	topic := drivertest.Name(t, "t")
	dlqTopic := dlqtest.WriteEntries(t, ctx, first, topic, "a")
	for i, opts := range [][]amqpdriver.Option{nil, {amqpdriver.WithRetention(0, 0)}} {
		other, err := amqpdriver.New(brokerURL(t), append(opts, amqpdriver.WithNamePrefix(first.StreamName("")))...)
		if err != nil {
			t.Fatal(err)
		}
		dlqtest.WriteEntries(t, ctx, other, topic, string(rune('b'+i)))
		if err := other.DeadLetters().MarkRedriven(ctx, dlqTopic, []dlq.Entry{{Position: "0"}}); err != nil {
			t.Errorf("driver %d: MarkRedriven: %v", i, err)
		}
		if err := other.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if all, _ := dlqtest.Pages(t, ctx, first.DeadLetters(), dlqTopic, 10); !slices.Equal(dlqtest.IDs(all), []string{"b", "c"}) {
		t.Errorf("listed %v, want [b c] (a marked redriven)", dlqtest.IDs(all))
	}
}
