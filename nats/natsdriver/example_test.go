package natsdriver_test

import (
	"context"
	"log"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/nats/natsdriver"
)

// A driver on a connection the program owns: the Bus shuts down first,
// then the driver, then the connection.
func Example() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	d, err := natsdriver.New(js, natsdriver.WithStreamPrefix("SHOP_"), natsdriver.WithSubjectPrefix("shop"))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	bus, err := herald.NewBus(d)
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Shutdown(context.Background())
}
