package main

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/tally"
	"github.com/heraldbus/herald/rabbitmq/amqpdriver"
)

// ledgerStep is step 2: two instances of the ledger service in one group
// on a single-active-consumer queue; the active one leaves half-way.
func ledgerStep(ctx context.Context, w io.Writer, url, prefix string, t *topology) error {
	d, err := amqpdriver.New(url,
		amqpdriver.WithNamePrefix(prefix),
		amqpdriver.WithSingleActiveConsumer(),
		amqpdriver.WithConnectionName("herald example ledger"),
	)
	if err != nil {
		return err
	}
	defer d.Close()
	t.add(d, ledgerTopic, "ledger")

	l := &ledger{Tally: tally.New(), booked: map[string][]int{}, by: map[string]string{}}
	instances := map[string]*herald.Bus{}
	for _, name := range []string{"a", "b"} {
		bus, err := l.startInstance(ctx, d, name)
		if err != nil {
			return err
		}
		instances[name] = bus
	}
	defer func() {
		for _, bus := range instances {
			_ = shutdown(bus)
		}
	}()
	producer, err := newBus(d)
	if err != nil {
		return err
	}
	if err := herald.Register[EntryBooked](producer, ledgerTopic); err != nil {
		return err
	}
	fmt.Fprintf(w, "ledger: instances a and b share queue %s, one active at a time\n", d.QueueName(ledgerTopic, "ledger"))

	first, err := l.half(ctx, w, producer, 1)
	if err != nil {
		return err
	}
	if err := shutdown(instances[first]); err != nil {
		return err
	}
	delete(instances, first)
	fmt.Fprintf(w, "ledger: instance %s shut down\n", first)
	second, err := l.half(ctx, w, producer, entries+1)
	if err != nil {
		return err
	}
	if second != first {
		fmt.Fprintf(w, "ledger: instance %s took over\n", second)
	}
	return l.checkOrder(w)
}

// half publishes entries from..from+entries-1 of every account, waits
// until they are booked and reports which instance booked them.
func (l *ledger) half(ctx context.Context, w io.Writer, producer *herald.Bus, from int) (string, error) {
	last := from + entries - 1
	for seq := from; seq <= last; seq++ {
		for a := range accounts {
			if err := producer.Publish(ctx, EntryBooked{Account: account(a), Seq: seq}); err != nil {
				return "", fmt.Errorf("publish entry %d of %s: %w", seq, account(a), err)
			}
		}
	}
	if err := l.Wait(ctx, func() bool { return l.total() == last*accounts }); err != nil {
		return "", fmt.Errorf("waiting for entries %d-%d: %w", from, last, err)
	}
	l.Lock()
	defer l.Unlock()
	names := map[string]bool{}
	for a := range accounts {
		for seq := from; seq <= last; seq++ {
			names[l.by[entryID(account(a), seq)]] = true
		}
	}
	if len(names) != 1 {
		return "", fmt.Errorf("entries %d-%d were booked by %d instances, want 1", from, last, len(names))
	}
	var name string
	for n := range names {
		name = n
	}
	fmt.Fprintf(w, "ledger: entries %d-%d of %d accounts booked by instance %s alone\n", from, last, accounts, name)
	return name, nil
}

func account(i int) string { return fmt.Sprintf("acct-%d", i+1) }

func entryID(account string, seq int) string { return fmt.Sprintf("%s/%d", account, seq) }

// ledger is what the ledger instances booked; the Tally's lock guards it.
type ledger struct {
	*tally.Tally
	booked map[string][]int  // account -> sequence numbers, as booked
	by     map[string]string // entry -> instance that booked it
}

// startInstance starts instance name of the ledger service: 4 handlers
// at a time, each account's entries in order (herald's scheduler keeps
// per-key order; the single active consumer keeps it across instances).
func (l *ledger) startInstance(ctx context.Context, d *amqpdriver.Driver, name string) (*herald.Bus, error) {
	bus, err := newBus(d)
	if err != nil {
		return nil, err
	}
	if err := herald.Register[EntryBooked](bus, ledgerTopic); err != nil {
		return nil, err
	}
	err = herald.Subscribe(bus, "ledger", func(ctx context.Context, e EntryBooked, m *herald.Message) error {
		l.Note(func() {
			l.booked[e.Account] = append(l.booked[e.Account], e.Seq)
			l.by[entryID(e.Account, e.Seq)] = name
		})
		return nil
	}, herald.WithConcurrency(4))
	if err != nil {
		return nil, err
	}
	return bus, bus.Start(ctx)
}

// total is how many entries were booked; call it under the lock.
func (l *ledger) total() int {
	n := 0
	for _, seqs := range l.booked {
		n += len(seqs)
	}
	return n
}

// checkOrder reports whether every account's entries were booked once
// each, in order.
func (l *ledger) checkOrder(w io.Writer) error {
	l.Lock()
	defer l.Unlock()
	for a := range accounts {
		got := l.booked[account(a)]
		want := make([]int, 2*entries)
		for i := range want {
			want[i] = i + 1
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s: booked %v, want %v", account(a), got, want)
		}
	}
	fmt.Fprintf(w, "ledger: every account's %d entries booked once each, in order\n", 2*entries)
	return nil
}
