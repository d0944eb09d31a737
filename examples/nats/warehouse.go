package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/tally"
	"github.com/heraldbus/herald/nats/natsdriver"
)

const (
	// poisonOrder hangs the warehouse's handler until its instance stops.
	poisonOrder = 5
	// maxDeliveries is how many deliveries of one message the warehouse
	// takes; the next goes to the dead-letter topic.
	maxDeliveries = 2
)

// warehouseStep is step 3: a new group on the orders stream whose handler
// hangs on one order; instances stopped without waiting for it, delivery
// counts, and the dead-letter topic after maxDeliveries.
func warehouseStep(ctx context.Context, w io.Writer, s *shop) error {
	d, err := s.driver()
	if err != nil {
		return err
	}
	defer d.Close()
	s.add(ordersTopic, "warehouse")

	h := &warehouse{Tally: tally.New(), w: w, packed: map[int]int{}, byCustomer: map[string][]int{}}
	ops, err := h.startOperations(ctx, d)
	if err != nil {
		return err
	}
	defer func() { _ = shutdown(ops) }()
	fmt.Fprintf(w, "warehouse: a new group reads stream %s from the start, one instance at a time\n", d.StreamName(ordersTopic))
	for instance := 1; instance <= maxDeliveries+1; instance++ {
		finished, err := h.runInstance(ctx, d, instance)
		if err != nil {
			return err
		}
		if finished {
			return h.report(ctx, s)
		}
	}
	return errors.New("warehouse: order 5 never reached the dead-letter topic")
}

// warehouse is what the warehouse instances and operations did; the
// Tally's lock guards it and w.
type warehouse struct {
	*tally.Tally
	w          io.Writer
	hangs      int              // deliveries of the poison order that hung
	packed     map[int]int      // order -> delivery count it was packed at
	byCustomer map[string][]int // customer -> orders, as packed
	deadLetter string           // reason of the poison order's dead letter
}

// runInstance starts instance number instance of the warehouse and waits
// until the poison order hangs it (then stops it without waiting) or
// everything is packed or dead-lettered (then shuts it down gracefully and
// reports finished).
func (h *warehouse) runInstance(ctx context.Context, d *natsdriver.Driver, instance int) (finished bool, err error) {
	bus, err := h.startInstance(ctx, d, instance)
	if err != nil {
		return false, err
	}
	err = h.Wait(ctx, func() bool { return h.hangs == instance || h.done() })
	if err != nil {
		_ = shutdown(bus)
		return false, fmt.Errorf("waiting for warehouse instance %d: %w", instance, err)
	}
	h.Lock()
	finished = h.done()
	h.Unlock()
	if finished {
		return true, shutdown(bus)
	}
	h.say("warehouse: instance %d stopped without waiting for its handler: order %d goes back unacknowledged\n", instance, poisonOrder)
	return false, stopAbruptly(bus)
}

// startInstance starts one instance of the warehouse service: 4 handlers
// at a time, each customer's orders in order, a message delivered more
// than maxDeliveries times dead-lettered without running the handler.
func (h *warehouse) startInstance(ctx context.Context, d *natsdriver.Driver, instance int) (*herald.Bus, error) {
	bus, err := newBus(d)
	if err != nil {
		return nil, err
	}
	if err := herald.Register[OrderPlaced](bus, ordersTopic); err != nil {
		return nil, err
	}
	err = herald.Subscribe(bus, "warehouse", func(ctx context.Context, e OrderPlaced, m *herald.Message) error {
		return h.pack(ctx, e, instance)
	},
		herald.WithConcurrency(4),
		herald.WithDeadLetterConfig(herald.DeadLetterConfig{MaxDeliveries: maxDeliveries}),
	)
	if err != nil {
		return nil, err
	}
	return bus, bus.Start(ctx)
}

// stopAbruptly shuts bus down with a context that has ended: the
// handlers' contexts are cancelled at once, and what they did not finish
// goes back to the group unacknowledged.
func stopAbruptly(bus *herald.Bus) error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := bus.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// pack is the warehouse's handler: the poison order hangs it until its
// context ends; the others are packed at once.
func (h *warehouse) pack(ctx context.Context, e OrderPlaced, instance int) error {
	count := herald.DeliveryCount(ctx)
	if e.Order == poisonOrder {
		h.say("warehouse: instance %d: order %d hangs the handler (delivery %d)\n", instance, e.Order, count)
		h.Note(func() { h.hangs++ })
		<-ctx.Done()
		return ctx.Err()
	}
	h.Note(func() {
		h.packed[e.Order] = count
		h.byCustomer[e.Customer] = append(h.byCustomer[e.Customer], e.Order)
	})
	return nil
}

// startOperations starts operations on the dead-letter topic, on a bus
// of its own: the group's consumer from step 1 goes on after what it read
// then.
func (h *warehouse) startOperations(ctx context.Context, d *natsdriver.Driver) (*herald.Bus, error) {
	bus, err := newBus(d)
	if err != nil {
		return nil, err
	}
	err = bus.Handle(herald.DeadLetterTopic(ordersTopic), "operations", func(ctx context.Context, m *herald.Message) error {
		reason := m.Headers.Get(herald.HeaderDeadLetterReason)
		h.say("operations: dead letter from %s (group %s): %s\n",
			m.Headers.Get(herald.HeaderDeadLetterTopic), m.Headers.Get(herald.HeaderDeadLetterGroup), reason)
		h.Note(func() { h.deadLetter = reason })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return bus, bus.Start(ctx)
}

// done reports whether every order was packed or dead-lettered; call it
// under the lock.
func (h *warehouse) done() bool {
	return len(h.packed) == orders-1 && h.deadLetter != ""
}

// report checks and prints the delivery counts the orders were packed
// at, beside the deliveries the server made, and each customer's order.
func (h *warehouse) report(ctx context.Context, s *shop) error {
	info, err := s.consumer(ctx, group{ordersTopic, "warehouse"})
	if err != nil {
		return err
	}
	h.Lock()
	defer h.Unlock()
	for order, count := range h.packed {
		if count != 1 {
			return fmt.Errorf("order %d was packed at delivery %d, want 1", order, count)
		}
	}
	fmt.Fprintf(h.w, "warehouse: the server made %d deliveries of %d orders; the %d packed were each at delivery 1: a delivery handed back before its handler started does not count\n",
		info.Delivered.Consumer, orders, len(h.packed))
	for c := range customers {
		got := h.byCustomer[customer(c)]
		if !slices.IsSorted(got) {
			return fmt.Errorf("%s: orders packed as %v, want in order", customer(c), got)
		}
	}
	fmt.Fprintf(h.w, "warehouse: each customer's orders packed in order; %s: %v\n",
		customer(poisonOrder), h.byCustomer[customer(poisonOrder)])
	return nil
}

// say writes one line of output.
func (h *warehouse) say(format string, args ...any) {
	h.Lock()
	fmt.Fprintf(h.w, format, args...)
	h.Unlock()
}
