package herald_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/memory/memdriver"
)

type UserSignedUp struct {
	Email string `json:"email"`
}

func Example() {
	ctx := context.Background()
	broker := memdriver.New()
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

func ExampleChain() {
	logged := func(next herald.HandlerFunc) herald.HandlerFunc {
		return func(ctx context.Context, m *herald.Message) error {
			fmt.Println("handling", m.ID)
			return next(ctx, m)
		}
	}
	h := herald.Chain(func(ctx context.Context, m *herald.Message) error {
		fmt.Println("attempt", herald.Attempt(ctx))
		if herald.Attempt(ctx) < 2 {
			return errors.New("not yet")
		}
		return nil
	}, logged, herald.Retry(herald.RetryConfig{MaxAttempts: 3, InitialBackoff: 1}))
	fmt.Println(h(context.Background(), &herald.Message{ID: "m-1"}))
	// Output:
	// handling m-1
	// attempt 1
	// attempt 2
	// <nil>
}

func ExamplePermanent() {
	h := herald.Retry(herald.RetryConfig{MaxAttempts: 5})(func(ctx context.Context, m *herald.Message) error {
		return herald.Permanent(fmt.Errorf("order %s: unknown currency", m.ID))
	})
	err := h(context.Background(), &herald.Message{ID: "o-9"})
	var re *herald.RetryError
	fmt.Println(errors.As(err, &re), re.Attempts, herald.IsPermanent(err))
	// Output: true 1 true
}
