package amqpdriver_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
	"github.com/heraldbus/herald/internal/testenv"
)

// Acknowledgments in and out of order, coalesced or sent one by one,
// leave nothing behind: after Close the group receives none of the
// acknowledged messages again (a multiple ack on a tag that was already
// acknowledged would close the channel, and every ack after it would be
// lost), and the ones never acknowledged come back. A member that keeps
// its deliveries without fetching again gets its prefix acknowledged
// within the ack delay.
func TestCoalescedAcksLoseNothingAndRepeatNothing(t *testing.T) {
	d := newDriver(t)
	ctx := drivertest.Context(t, time.Minute)
	topic, group := drivertest.Name(t, "t"), drivertest.Name(t, "g")
	sub := subscribe(t, ctx, d, topic, group)
	const n = 200
	write(t, ctx, d, topic, n, "m")
	got := drivertest.FetchExactly(t, sub, n)
	var order []herald.Delivery
	for i := 0; i+1 < 150; i += 2 { // pairs swapped: 1 0 3 2 ... then 150..199 in order
		order = append(order, got[i+1], got[i])
	}
	order = append(order, got[150:190]...) // 190..199 stay unacknowledged
	drivertest.Ack(t, sub, order...)
	// The member does not fetch again: the ack delay sends the prefix,
	// and the broker holds only the 10 never acknowledged.
	queue := d.QueueName(topic, group)
	drivertest.Eventually(t, 30*time.Second, "the broker to hold 10 unacknowledged", func() bool {
		return unacknowledged(t, queue) == n-190
	})
	drivertest.CloseSub(t, sub)

	again := subscribe(t, ctx, d, topic, group)
	defer drivertest.CloseSub(t, again)
	back := drivertest.FetchExactly(t, again, n-190)
	for i, dl := range back {
		if want := got[190+i].Message.ID; dl.Message.ID != want {
			t.Errorf("redelivery %d is %s, want %s (only the unacknowledged come back)", i, dl.Message.ID, want)
		}
	}
	drivertest.Ack(t, again, back...)
	fctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if k, _ := again.Fetch(fctx, make([]herald.Delivery, 8)); k > 0 {
		t.Errorf("%d acknowledged messages delivered again", k)
	}
}

// unacknowledged asks rabbitmqctl how many messages of queue the broker
// has delivered and not had acknowledged.
func unacknowledged(t *testing.T, queue string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "list_queues", "-q", "name", "messages_unacknowledged").CombinedOutput()
	if err != nil {
		testenv.Unavailable(t, fmt.Sprintf("rabbitmqctl list_queues: %v: %s", err, out))
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, count, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if ok && name == queue {
			n, err := strconv.Atoi(strings.TrimSpace(count))
			if err != nil {
				t.Fatalf("rabbitmqctl list_queues line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("queue %s not in rabbitmqctl list_queues", queue)
	return 0
}
