package protobuf_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/codec"
	"github.com/heraldbus/herald/codec/protobuf"
	"github.com/heraldbus/herald/memory/memtest"
)

type order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestProtobufRoundTripIntoNilPointer(t *testing.T) {
	c, err := codec.NewRegistry(protobuf.Codec{}).Lookup(protobuf.ContentType)
	if err != nil {
		t.Fatal(err)
	}
	data, err := c.Marshal(wrapperspb.String("hello"))
	if err != nil {
		t.Fatal(err)
	}
	// A generic subscriber for *wrapperspb.StringValue decodes into a
	// pointer to a nil pointer.
	var got *wrapperspb.StringValue
	if err := c.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.GetValue() != "hello" {
		t.Fatalf("got %q", got.GetValue())
	}
	into := &wrapperspb.StringValue{}
	if err := c.Unmarshal(data, into); err != nil || into.GetValue() != "hello" {
		t.Fatalf("direct decode: %v %q", err, into.GetValue())
	}
}

func TestProtobufRejectsNonProto(t *testing.T) {
	var c protobuf.Codec
	if _, err := c.Marshal(order{}); err == nil {
		t.Fatal("want an error encoding a non-proto value")
	}
	var o order
	if err := c.Unmarshal(nil, &o); err == nil {
		t.Fatal("want an error decoding into a non-proto value")
	}
	if err := c.Unmarshal([]byte{0xff, 0xff}, &wrapperspb.StringValue{}); err == nil {
		t.Fatal("want an error for a malformed protobuf payload")
	}
}

func TestBusProtobufAndForeignMessages(t *testing.T) {
	broker := memtest.Broker(t)
	t.Cleanup(func() { _ = broker.Close() })
	bus, err := herald.NewBus(broker, herald.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Shutdown(context.Background()) })
	herald.MustRegister[*wrapperspb.StringValue](bus, "strings", herald.WithCodec(protobuf.Codec{}))
	got := make(chan string, 2)
	mustOK(t, herald.Subscribe(bus, "g", func(_ context.Context, v *wrapperspb.StringValue, _ *herald.Message) error {
		got <- v.GetValue()
		return nil
	}))
	ctx := context.Background()
	mustOK(t, bus.Start(ctx))
	mustOK(t, bus.Publish(ctx, wrapperspb.String("typed")))
	// A producer that sets no event name and no content type: the only
	// handler of the group takes it, decoded by content type... which here
	// is protobuf bytes labelled with the protobuf content type.
	data, _ := protobuf.Codec{}.Marshal(wrapperspb.String("foreign"))
	mustOK(t, bus.PublishMessages(ctx, &herald.Message{Topic: "strings", ContentType: protobuf.ContentType, Data: data}))
	// Unkeyed, the two go to different partitions: either may come first.
	seen := map[string]bool{}
	for range 2 {
		select {
		case v := <-got:
			seen[v] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("got only %v", seen)
		}
	}
	if !seen["typed"] || !seen["foreign"] {
		t.Fatalf("got %v, want typed and foreign", seen)
	}
}
