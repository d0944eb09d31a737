package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/examples/internal/tally"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// ParcelRequested asks the packing group to pack an order's parcel. It
// has no key: any free worker may run it, so a copy the server delivered
// again would run beside the first.
type ParcelRequested struct {
	Order int `json:"order"`
}

const (
	parcelsTopic = "parcels"
	// ackWait is the packing consumer's AckWait: short, so that packing
	// outlasts it.
	ackWait = time.Second
	// packTime is how long a parcel takes to pack.
	packTime = 3 * ackWait
)

// packingStep is step 2: a handler that runs longer than the consumer's
// AckWait, and a graceful shutdown while it runs.
func packingStep(ctx context.Context, w io.Writer, s *shop) error {
	d, err := s.driver(natsdriver.WithAckWait(ackWait))
	if err != nil {
		return err
	}
	defer d.Close()
	s.add(parcelsTopic, "packing")

	bus, err := newBus(d)
	if err != nil {
		return err
	}
	if err := herald.Register[ParcelRequested](bus, parcelsTopic); err != nil {
		return err
	}
	p := &packing{Tally: tally.New()}
	if err := herald.Subscribe(bus, "packing", p.pack, herald.WithConcurrency(2)); err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}
	if err := bus.Publish(ctx, ParcelRequested{Order: 0}); err != nil {
		return err
	}
	fmt.Fprintf(w, "packing: the parcel of order 0 takes %v to pack, the consumer's AckWait is %v\n", packTime, ackWait)
	return p.shutdownWhilePacking(ctx, w, bus, s)
}

// shutdownWhilePacking lets the parcel be packed for two thirds of its
// time, then shuts bus down and reports what the server did meanwhile.
func (p *packing) shutdownWhilePacking(ctx context.Context, w io.Writer, bus *herald.Bus, s *shop) error {
	if err := p.Wait(ctx, func() bool { return p.runs > 0 }); err != nil {
		return fmt.Errorf("waiting for the parcel: %w", err)
	}
	time.Sleep(packTime * 2 / 3)
	fmt.Fprintf(w, "packing: shutting down %v into packing, the parcel still in the handler\n", time.Since(p.start).Round(100*time.Millisecond))
	if err := shutdown(bus); err != nil {
		return err
	}
	p.Lock()
	runs, most, took := p.runs, p.most, p.took
	p.Unlock()
	fmt.Fprintf(w, "packing: shutdown waited for the handler: packed in %v, %d run(s), at most %d at once\n", took.Round(100*time.Millisecond), runs, most)
	info, err := s.consumer(ctx, group{parcelsTopic, "packing"})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "packing: consumer %s delivered the parcel %d time(s), %d unacknowledged now: the driver signalled it in progress once held past half the AckWait\n",
		info.Name, info.Delivered.Consumer, info.NumAckPending)
	return nil
}

// packing is what the packing handler did; the Tally's lock guards it.
type packing struct {
	*tally.Tally
	start   time.Time     // of the first run
	took    time.Duration // of the last run to finish
	runs    int           // handler runs started
	running int
	most    int // runs at once
}

// pack is the packing group's handler: it takes packTime, whatever the
// shutdown.
func (p *packing) pack(ctx context.Context, e ParcelRequested, m *herald.Message) error {
	began := time.Now()
	p.Note(func() {
		if p.runs == 0 {
			p.start = began
		}
		p.runs++
		p.running++
		p.most = max(p.most, p.running)
	})
	time.Sleep(packTime)
	p.Note(func() { p.running--; p.took = time.Since(began) })
	return nil
}
