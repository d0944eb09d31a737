package natsdriver_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/nats/natsdriver"
)

func TestNewReportsEveryInvalidOption(t *testing.T) {
	nc := &nats.Conn{} // never dialled: New does not contact the server
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = natsdriver.New(js,
		natsdriver.WithStreamPrefix("has.dot"),
		natsdriver.WithSubjectPrefix("a..b"),
		natsdriver.WithStorage(jetstream.StorageType(9)),
		natsdriver.WithReplicas(0),
		natsdriver.WithMaxAge(-time.Second),
		natsdriver.WithMaxMessageBytes(-1),
		natsdriver.WithAckWait(time.Millisecond),
		natsdriver.WithFetchWait(0),
		natsdriver.WithStartPosition(herald.StartPosition(7)),
	)
	if err == nil {
		t.Fatal("New accepted invalid options")
	}
	if !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("error does not wrap herald.ErrInvalidOption: %v", err)
	}
	for _, want := range []string{`stream prefix "has.dot"`, `subject prefix "a..b"`, "storage type 9", "replicas 0",
		"max age -1s", "max message bytes -1", "ack wait 1ms", "fetch wait 0s", "start position 7"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := natsdriver.New(js, natsdriver.WithMaxAge(time.Second), natsdriver.WithDuplicateWindow(time.Minute)); err == nil || !strings.Contains(err.Error(), "exceeds the max age") {
		t.Errorf("duplicate window above the max age: %v", err)
	}
	if _, err := natsdriver.New(nil); !errors.Is(err, herald.ErrInvalidOption) {
		t.Errorf("New(nil) = %v, want ErrInvalidOption", err)
	}
	d, err := natsdriver.New(js)
	if err != nil {
		t.Fatalf("defaults rejected: %v", err)
	}
	if got, want := d.StreamName("orders.placed:v1/eu-west_2"), "HERALD_orders_placed_v1_eu-west_2"; got != want {
		t.Errorf("StreamName = %q, want %q", got, want)
	}
	if got, want := d.Subject("orders.placed"), "herald.orders_placed"; got != want {
		t.Errorf("Subject = %q, want %q", got, want)
	}
	if d.MessagingSystem() != "nats" {
		t.Errorf("MessagingSystem = %q", d.MessagingSystem())
	}
}

// TestGroupSurvivesAbsence acknowledges part of a backlog, leaves, stays
// away, and comes back: the group's consumer kept its place, so nothing
// acknowledged comes again and nothing unacknowledged is lost.
func TestGroupSurvivesAbsence(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t, natsdriver.WithAckWait(time.Second))
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	const n, acked = 20, 12
	var msgs []*herald.Message
	for i := range n {
		msgs = append(msgs, message(topic, fmt.Sprintf("m%02d", i), "k"))
	}
	if err := d.Write(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	got := drivertest.FetchExactly(t, sub, acked)
	drivertest.Ack(t, sub, got...)
	drivertest.CloseSub(t, sub)

	// Longer than the AckWait and than any inactivity threshold a consumer
	// without one might have been given: a durable consumer has none.
	time.Sleep(3 * time.Second)
	info, err := e.js.Consumer(ctx, d.StreamName(topic), natsdriver.Token(group))
	if err != nil {
		t.Fatalf("the group's consumer is gone after its members left: %v", err)
	}
	if th := info.CachedInfo().Config.InactiveThreshold; th != 0 {
		t.Errorf("consumer has an inactivity threshold of %v", th)
	}

	sub, err = d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	rest := drivertest.FetchExactly(t, sub, n-acked)
	for i, dl := range rest {
		if want := fmt.Sprintf("m%02d", acked+i); dl.Message.ID != want {
			t.Errorf("after rejoining, delivery %d is %s, want %s", i, dl.Message.ID, want)
		}
	}
	drivertest.Ack(t, sub, rest...)
	if extra := fetchFor(t, sub, 2*time.Second); len(extra) > 0 {
		t.Errorf("after rejoining, %d acknowledged messages came again (first %s)", len(extra), extra[0].Message.ID)
	}
}

// TestLongHandlerKeepsItsDelivery holds a delivery for several AckWaits:
// the in-progress signals keep the server from giving it to another
// member, and the late acknowledgment is taken.
func TestLongHandlerKeepsItsDelivery(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t, natsdriver.WithAckWait(400*time.Millisecond))
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	a, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, a)
	b, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, b)
	if err := d.Write(ctx, []*herald.Message{message(topic, "slow", "k")}); err != nil {
		t.Fatal(err)
	}
	held := drivertest.FetchExactly(t, a, 1)
	if got := fetchFor(t, b, 2*time.Second); len(got) > 0 {
		t.Fatalf("member b received %s while a worked on it", got[0].Message.ID)
	}
	drivertest.Ack(t, a, held...)
	if got := fetchFor(t, b, time.Second); len(got) > 0 {
		t.Errorf("member b received %s after a acknowledged it", got[0].Message.ID)
	}
	if c := natsdriver.NumDelivered(held[0]); c != 1 {
		t.Errorf("NumDelivered = %d, want 1", c)
	}
}

// TestRetriedWriteIsStoredOnce writes one batch twice: the server's
// duplicate window drops the second copy by Nats-Msg-Id.
func TestRetriedWriteIsStoredOnce(t *testing.T) {
	d := newEnv(t).driver(t)
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	batch := []*herald.Message{message(topic, "a", "k"), message(topic, "b", "k")}
	for range 2 {
		if err := d.Write(ctx, []*herald.Message{batch[0].Clone(), batch[1].Clone()}); err != nil {
			t.Fatal(err)
		}
	}
	got := drivertest.FetchExactly(t, sub, 2)
	drivertest.Ack(t, sub, got...)
	if extra := fetchFor(t, sub, time.Second); len(extra) > 0 {
		t.Errorf("a retried publish was stored twice: %s came again", extra[0].Message.ID)
	}
}

// TestNamesThatMapTogetherAreRefused checks the collision rule: two
// topics, or two groups, with one token.
func TestNamesThatMapTogetherAreRefused(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	ctx := drivertest.Context(t, time.Minute)
	base := drivertest.Name(t, "t")
	if err := d.Write(ctx, []*herald.Message{message(base+".x", "1", "")}); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*herald.Message{message(base+"_x", "2", "")}); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Write to a topic whose stream name is taken = %v, want ErrInvalidName", err)
	}
	// Another driver, which has not seen the first topic, reads the
	// stream's description.
	other := e.driver(t)
	if _, err := other.Subscribe(ctx, base+"/x", "g"); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Subscribe to a topic whose stream name is taken = %v, want ErrInvalidName", err)
	}
	sub, err := d.Subscribe(ctx, base+".x", "g.1")
	if err != nil {
		t.Fatal(err)
	}
	drivertest.CloseSub(t, sub)
	if _, err := d.Subscribe(ctx, base+".x", "g:1"); !errors.Is(err, herald.ErrInvalidName) {
		t.Errorf("Subscribe of a group whose consumer name is taken = %v, want ErrInvalidName", err)
	}
}

// TestExistingStreams maps topics onto a stream the application made,
// and checks that a message whose subject no stream takes fails alone, in
// a *herald.WriteError.
func TestExistingStreams(t *testing.T) {
	e := newEnv(t)
	ctx := drivertest.Context(t, time.Minute)
	name := e.streamPrefix + "APP"
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{e.subjectPrefix + ".app.>"}}); err != nil {
		t.Fatal(err)
	}
	d := e.driver(t, natsdriver.WithSubjects(func(topic string) string {
		if strings.HasPrefix(topic, "nowhere") {
			return e.subjectPrefix + ".nowhere." + natsdriver.Token(topic)
		}
		return e.subjectPrefix + ".app." + natsdriver.Token(topic)
	}))
	orders, payments := drivertest.Name(t, "orders"), drivertest.Name(t, "payments")
	so, err := d.Subscribe(ctx, orders, "g")
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, so)
	sp, err := d.Subscribe(ctx, payments, "g")
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sp)
	batch := []*herald.Message{message(orders, "o1", "k"), message("nowhere", "x1", "k"), message(payments, "p1", "k")}
	err = d.Write(ctx, batch)
	var we *herald.WriteError
	if !errors.As(err, &we) || len(we.Failed) != 1 || we.Failed[0].Index != 1 || !we.Written(0) || !we.Written(2) {
		t.Fatalf("Write with one message no stream takes = %v, want a WriteError listing only it", err)
	}
	for sub, want := range map[herald.Subscription]string{so: "o1", sp: "p1"} {
		got := drivertest.FetchExactly(t, sub, 1)
		if got[0].Message.ID != want {
			t.Errorf("got %s, want %s", got[0].Message.ID, want)
		}
		drivertest.Ack(t, sub, got...)
	}
	info, err := e.js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.CachedInfo().State.Consumers; c != 2 {
		t.Errorf("the application's stream has %d consumers, want 2 (one per topic and group)", c)
	}
	if _, err := e.js.Stream(ctx, d.StreamName(orders)); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the driver created a stream of its own with WithSubjects: %v", err)
	}
}

// TestReleaseRecordsOutliveTheDriver hands a delivery back unstarted from
// one driver and connection and receives it on another, as a restarted
// process would: the hand-back does not count, and the acknowledgment
// deletes its record.
func TestReleaseRecordsOutliveTheDriver(t *testing.T) {
	e := newEnv(t)
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	first := e.driver(t)
	sub, err := first.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Write(ctx, []*herald.Message{message(topic, "m", "k")}); err != nil {
		t.Fatal(err)
	}
	got := drivertest.FetchExactly(t, sub, 1)
	sub.(herald.Releaser).Release(got)
	drivertest.CloseSub(t, sub)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	other := envOn(t, e.url, connect(t, e.url))
	other.streamPrefix, other.subjectPrefix = e.streamPrefix, e.subjectPrefix
	second := other.driver(t)
	sub, err = second.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	again := drivertest.FetchExactly(t, sub, 1)
	if c, n := again[0].Count, natsdriver.NumDelivered(again[0]); c != 1 || n != 2 {
		t.Errorf("after a released hand-back: Count %d, NumDelivered %d; want 1 and 2", c, n)
	}
	drivertest.Ack(t, sub, again...)
	// The record is deleted when the server confirms the acknowledgment,
	// which Close waits for; Ack only sends it.
	drivertest.CloseSub(t, sub)
	kv, err := e.js.KeyValue(ctx, e.streamPrefix+"RELEASES")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		t.Errorf("release record %s left after the acknowledgment", k)
	}
}

// TestLateHandBackOfARedeliveryDoesNotCount hands a message back
// unstarted twice: once through Release, then as Close hands back what
// its last pull request brought late, on a delivery the server counts as
// the second. Neither hand-back counts. (Close cancels the subscription's
// context before it records the late ones; the record of a redelivery
// was read under that context, so the read failed, the record stayed at
// one hand-back and the third delivery counted 2.)
func TestLateHandBackOfARedeliveryDoesNotCount(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t, natsdriver.WithErrorHandler(func(err error) { t.Errorf("background error: %v", err) }))
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	if err := d.Write(ctx, []*herald.Message{message(topic, "m", "k")}); err != nil {
		t.Fatal(err)
	}
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	got := drivertest.FetchExactly(t, sub, 1)
	sub.(herald.Releaser).Release(got)
	drivertest.CloseSub(t, sub)

	if sub, err = d.Subscribe(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	n, err := natsdriver.HandBackLate(ctx, sub)
	if err != nil || n != 2 {
		t.Fatalf("late hand-back: NumDelivered %d, %v; want 2", n, err)
	}
	drivertest.CloseSub(t, sub)

	if sub, err = d.Subscribe(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	again := drivertest.FetchExactly(t, sub, 1)
	if c, n := again[0].Count, natsdriver.NumDelivered(again[0]); c != 1 || n != 3 {
		t.Errorf("after two hand-backs, the second late: Count %d, NumDelivered %d; want 1 and 3", c, n)
	}
	drivertest.Ack(t, sub, again...)
}

// TestBackgroundErrorsReachTheScheduler makes a release record
// unwritable (its bucket deleted under the subscription): Release has no
// caller to return to, so the error goes to the function ReportErrorsTo
// gave, as a *herald.DriverError.
func TestBackgroundErrorsReachTheScheduler(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t, natsdriver.WithErrorHandler(func(err error) { t.Errorf("fallback handler got %v", err) }))
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	var reported []error
	sub.(herald.ErrorReporter).ReportErrorsTo(func(err error) { reported = append(reported, err) })
	if err := d.Write(ctx, []*herald.Message{message(topic, "m", "k")}); err != nil {
		t.Fatal(err)
	}
	got := drivertest.FetchExactly(t, sub, 1)
	if err := e.js.DeleteKeyValue(ctx, e.streamPrefix+"RELEASES"); err != nil {
		t.Fatal(err)
	}
	sub.(herald.Releaser).Release(got)
	var de *herald.DriverError
	if len(reported) != 1 || !errors.As(reported[0], &de) || de.Op != "release" || de.Topic != topic || de.Group != group {
		t.Fatalf("reported %v, want one release DriverError", reported)
	}
}

// TestDeleteGroup removes a group's consumer: the group starts over from
// the start position, and a topic without a stream is not created.
func TestDeleteGroup(t *testing.T) {
	e := newEnv(t)
	d := e.driver(t)
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub, err := d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, []*herald.Message{message(topic, "m", "k")}); err != nil {
		t.Fatal(err)
	}
	drivertest.Ack(t, sub, drivertest.FetchExactly(t, sub, 1)...)
	drivertest.CloseSub(t, sub)
	if err := d.DeleteGroup(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Consumer(ctx, d.StreamName(topic), natsdriver.Token(group)); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("consumer after DeleteGroup: %v", err)
	}
	sub, err = d.Subscribe(ctx, topic, group)
	if err != nil {
		t.Fatal(err)
	}
	defer drivertest.CloseSub(t, sub)
	if got := drivertest.FetchExactly(t, sub, 1); got[0].Message.ID != "m" {
		t.Errorf("the group made again got %s, want m from the start", got[0].Message.ID)
	}
	if err := d.DeleteGroup(ctx, drivertest.Name(t, "none"), group); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("DeleteGroup on a topic without a stream = %v, want ErrStreamNotFound", err)
	}
}
