package herald_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
)

type UserSignedUp struct {
	Email string `json:"email"`
}

func Example() {
	ctx := context.Background()
	broker, err := memdriver.New()
	if err != nil {
		panic(err)
	}
	defer broker.Close()
	bus, err := herald.NewBus(broker, herald.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	herald.MustRegister[UserSignedUp](bus, "users.signed-up")

	welcomed := make(chan string)
	err = herald.Subscribe(bus, "mailer", func(ctx context.Context, e UserSignedUp, m *herald.Message) error {
		welcomed <- e.Email
		return nil
	}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 3}), herald.WithDeadLetter())
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	defer bus.Shutdown(ctx)

	if err := bus.Publish(ctx, UserSignedUp{Email: "ada@example.com"}); err != nil {
		panic(err)
	}
	fmt.Println("welcome mail to", <-welcomed)
	// Output: welcome mail to ada@example.com
}

// newExampleBus is the set-up of the examples: a Bus on a memory broker
// that logs nothing.
func newExampleBus() (*herald.Bus, func()) {
	broker, err := memdriver.New()
	if err != nil {
		panic(err)
	}
	bus, err := herald.NewBus(broker, herald.WithLogger(quiet))
	if err != nil {
		panic(err)
	}
	return bus, func() {
		_ = bus.Shutdown(context.Background())
		_ = broker.Close()
	}
}

// Middleware of your own runs inside the built-in ones, once per attempt.
func ExampleWithMiddleware() {
	logged := func(next herald.HandlerFunc) herald.HandlerFunc {
		return func(ctx context.Context, m *herald.Message) error {
			fmt.Println("attempt", herald.Attempt(ctx), "of", m.Event())
			return next(ctx, m)
		}
	}
	bus, stop := newExampleBus()
	defer stop()
	herald.MustRegister[UserSignedUp](bus, "users", herald.WithEventName("UserSignedUp"))
	done := make(chan struct{})
	err := herald.Subscribe(bus, "mailer", func(ctx context.Context, e UserSignedUp, m *herald.Message) error {
		if herald.Attempt(ctx) < 2 {
			return errors.New("mail server busy")
		}
		close(done)
		return nil
	}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: time.Millisecond}),
		herald.WithMiddleware(logged))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	_ = bus.Start(ctx)
	_ = bus.Publish(ctx, UserSignedUp{Email: "ada@example.com"})
	<-done
	// Output:
	// attempt 1 of UserSignedUp
	// attempt 2 of UserSignedUp
}

// A Permanent error is not retried; with WithDeadLetter the message goes
// to "<topic>.dlq" with the reason.
func ExamplePermanent() {
	bus, stop := newExampleBus()
	defer stop()
	herald.MustRegister[UserSignedUp](bus, "users")
	err := herald.Subscribe(bus, "mailer", func(ctx context.Context, e UserSignedUp, m *herald.Message) error {
		return herald.Permanent(fmt.Errorf("%s: no such domain", e.Email))
	}, herald.WithRetry(herald.RetryConfig{MaxAttempts: 5}), herald.WithDeadLetter())
	if err != nil {
		panic(err)
	}
	reasons := make(chan string, 1)
	_ = bus.Handle(herald.DeadLetterTopic("users"), "ops", func(ctx context.Context, m *herald.Message) error {
		r := herald.ReadDeadLetter(m)
		reasons <- fmt.Sprintf("%s, %d attempt, group %s", r.Reason, r.Attempts, r.Group)
		return nil
	})
	ctx := context.Background()
	_ = bus.Start(ctx)
	_ = bus.Publish(ctx, UserSignedUp{Email: "ada@example.invalid"})
	fmt.Println(<-reasons)
	// Output: herald: not retried: permanent: ada@example.invalid: no such domain, 1 attempt, group mailer
}

// Handle subscribes to every message of a topic, whatever its event type
// or producer: for raw payloads, tooling and foreign producers.
func ExampleBus_Handle() {
	bus, stop := newExampleBus()
	defer stop()
	got := make(chan string, 1)
	err := bus.Handle("audit", "archiver", func(ctx context.Context, m *herald.Message) error {
		got <- fmt.Sprintf("%s %s %s", m.Topic, m.ContentType, m.Data)
		return nil
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	_ = bus.Start(ctx)
	_ = bus.PublishMessages(ctx, &herald.Message{Topic: "audit", ContentType: "text/plain", Data: []byte("user 7 logged in")})
	fmt.Println(<-got)
	// Output: audit text/plain user 7 logged in
}

// An AsyncPublisher batches events in the background for publishers that
// need not wait for each write; Flush waits until they are written.
func ExampleNewAsyncPublisher() {
	bus, stop := newExampleBus()
	defer stop()
	herald.MustRegister[UserSignedUp](bus, "users")
	var n atomic.Int32
	_ = bus.Handle("users", "counter", func(context.Context, *herald.Message) error { n.Add(1); return nil })
	ctx := context.Background()
	_ = bus.Start(ctx)

	ap, err := herald.NewAsyncPublisher(bus.Publisher(), herald.AsyncConfig{MaxBatch: 100, Linger: 2 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	for i := range 250 {
		if err := ap.Publish(ctx, UserSignedUp{Email: fmt.Sprintf("user%d@example.com", i)}); err != nil {
			panic(err)
		}
	}
	if err := ap.Close(ctx); err != nil { // flushes, then stops
		panic(err)
	}
	for n.Load() < 250 {
		time.Sleep(time.Millisecond)
	}
	fmt.Println(n.Load(), "handled")
	// Output: 250 handled
}

// SubscribeBatch hands the handler up to WithBatch's size events at once,
// for one bulk write; a BatchError names the items that failed, which are
// retried or dead-lettered on their own while the rest are acknowledged.
func ExampleSubscribeBatch() {
	bus, done := newExampleBus()
	defer done()
	herald.MustRegister[UserSignedUp](bus, "users.signed-up")
	ctx := context.Background()
	for _, email := range []string{"ada@example.com", "bob@example.com", "cy@example.com"} {
		if err := bus.Publish(ctx, UserSignedUp{Email: email}); err != nil {
			panic(err)
		}
	}
	stored := make(chan []string)
	err := herald.SubscribeBatch(bus, "crm", func(ctx context.Context, batch []herald.Item[UserSignedUp]) error {
		var rows []string
		var failures herald.BatchError
		for i, it := range batch {
			if it.Event.Email == "" {
				failures.Fail(i, herald.Permanent(errors.New("no email")))
				continue
			}
			rows = append(rows, it.Event.Email) // one multi-row INSERT in a real handler
		}
		stored <- rows
		return failures.Err()
	}, herald.WithBatch(3, time.Second), herald.WithDeadLetter())
	if err != nil {
		panic(err)
	}
	if err := bus.Start(ctx); err != nil {
		panic(err)
	}
	fmt.Println("one write of", len(<-stored), "rows")
	// Output: one write of 3 rows
}
