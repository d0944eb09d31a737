package herald

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/internal/telemetry"
)

// AsyncConfig configures an AsyncPublisher. The zero value of a field means
// its default.
type AsyncConfig struct {
	// MaxBatch is the most messages one Write carries (default 500).
	MaxBatch int
	// Linger is how long a batch waits for more messages once it has one
	// (default 5 ms).
	Linger time.Duration
	// MaxBuffered bounds the messages accepted and not yet written
	// (default 10000). Publish blocks while the buffer is full: memory
	// stays bounded and a slow broker slows publishers down.
	MaxBuffered int
	// WriteAttempts is how many times a failed batch is written before it
	// is reported (default 3), with a doubling backoff from 100 ms.
	WriteAttempts int
	// OnError receives each batch that could not be written, with the
	// error. It must not block. Flush also returns these errors.
	OnError func(msgs []*Message, err error)
}

// AsyncPublisher batches published events in the background, for
// high-rate publishers that do not need to wait for each write. Publish
// encodes at once (so bad events fail at the call) and returns when the
// messages are buffered; Flush waits until they are written. Messages with
// one key are written in publish order. Safe for concurrent use.
type AsyncPublisher struct {
	p     *Publisher
	cfg   AsyncConfig
	queue chan *Message

	mu       sync.Mutex
	closed   bool
	senders  sync.WaitGroup
	accepted uint64        // messages queued so far
	written  uint64        // messages the loop finished (written or failed)
	progress chan struct{} // closed and replaced whenever written grows
	errs     []error       // batch failures since the last Flush

	writeCtx     context.Context // cancelled when Close runs out of time
	cancelWrites context.CancelFunc
	done         chan struct{}
}

func (c AsyncConfig) validate() error {
	return errors.Join(
		badIf(c.MaxBatch < 0, "AsyncConfig.MaxBatch", c.MaxBatch, "want 0 (default) or more"),
		badIf(c.Linger < 0, "AsyncConfig.Linger", c.Linger, "want 0 (default) or more"),
		badIf(c.MaxBuffered < 0, "AsyncConfig.MaxBuffered", c.MaxBuffered, "want 0 (default) or more"),
		badIf(c.WriteAttempts < 0, "AsyncConfig.WriteAttempts", c.WriteAttempts, "want 0 (default) or more"))
}

// NewAsyncPublisher starts a batching publisher on p (a Bus's:
// bus.Publisher()). Close it to stop its goroutine. Bad settings are an
// error (ErrInvalidOption), reported all at once.
func NewAsyncPublisher(p *Publisher, cfg AsyncConfig) (*AsyncPublisher, error) {
	if p == nil {
		return nil, fmt.Errorf("herald: NewAsyncPublisher: nil publisher: %w", ErrNilDriver)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = 500
	}
	if cfg.Linger == 0 {
		cfg.Linger = 5 * time.Millisecond
	}
	if cfg.MaxBuffered == 0 {
		cfg.MaxBuffered = 10000
	}
	if cfg.WriteAttempts == 0 {
		cfg.WriteAttempts = 3
	}
	a := &AsyncPublisher{
		p:        p,
		cfg:      cfg,
		queue:    make(chan *Message, cfg.MaxBuffered),
		progress: make(chan struct{}),
		done:     make(chan struct{}),
	}
	a.writeCtx, a.cancelWrites = context.WithCancel(context.Background())
	go a.loop()
	return a, nil
}

// Publish encodes events and queues them. It returns encoding errors at
// once, blocks while the buffer is full, and returns ctx.Err() if ctx ends
// first (events queued before that stay queued) or ErrClosed after Close.
func (a *AsyncPublisher) Publish(ctx context.Context, events ...any) error {
	msgs, err := a.p.Encode(ctx, events...)
	if err != nil || len(msgs) == 0 {
		return err
	}
	if t := a.p.tel; t != nil {
		_, span := t.start(ctx, t.create, msgs)
		telemetry.EndSpan(span, nil)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	a.senders.Add(1)
	a.mu.Unlock()
	defer a.senders.Done()
	for _, m := range msgs {
		select {
		case a.queue <- m:
			a.mu.Lock()
			a.accepted++
			a.mu.Unlock()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Flush waits until every message queued before the call has been written
// or has failed, and returns the batch errors seen since the previous
// Flush.
func (a *AsyncPublisher) Flush(ctx context.Context) error {
	a.mu.Lock()
	target := a.accepted
	for a.written < target {
		progress := a.progress
		a.mu.Unlock()
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		}
		a.mu.Lock()
	}
	err := errors.Join(a.errs...)
	a.errs = nil
	a.mu.Unlock()
	return err
}

// Close stops accepting events, writes what is queued (bounded by ctx) and
// stops the background goroutine. It returns the errors Flush would. If ctx
// ends first, writes in progress are cancelled and what is left is reported
// to OnError; the goroutine has stopped when Close returns either way.
func (a *AsyncPublisher) Close(ctx context.Context) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		<-a.done
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.senders.Wait()
	close(a.queue)
	err := a.Flush(ctx)
	if ctx.Err() != nil {
		a.cancelWrites()
	}
	<-a.done
	a.cancelWrites()
	return err
}

func (a *AsyncPublisher) loop() {
	defer close(a.done)
	batch := make([]*Message, 0, a.cfg.MaxBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		m, ok := <-a.queue
		if !ok {
			return
		}
		batch = append(batch, m)
		timer.Reset(a.cfg.Linger)
		open := true
	fill:
		for len(batch) < a.cfg.MaxBatch {
			select {
			case m, ok := <-a.queue:
				if !ok {
					open = false
					break fill
				}
				batch = append(batch, m)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		a.write(batch)
		clear(batch)
		batch = batch[:0]
		if !open {
			return
		}
	}
}

func (a *AsyncPublisher) write(batch []*Message) {
	b := backoff.New(100*time.Millisecond, 2*time.Second)
	var err error
	for attempt := 1; attempt <= a.cfg.WriteAttempts; attempt++ {
		if err = a.p.w.Write(a.writeCtx, batch); err == nil {
			break
		}
		if attempt < a.cfg.WriteAttempts && !backoff.Sleep(a.writeCtx, b.Next()) {
			break
		}
	}
	if t := a.p.tel; t != nil {
		t.count(a.writeCtx, batch, err)
	}
	if err != nil && a.cfg.OnError != nil {
		a.cfg.OnError(append([]*Message(nil), batch...), err)
	}
	a.mu.Lock()
	if err != nil {
		a.errs = append(a.errs, err)
	}
	a.written += uint64(len(batch))
	close(a.progress)
	a.progress = make(chan struct{})
	a.mu.Unlock()
}
