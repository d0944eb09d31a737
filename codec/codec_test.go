package codec_test

import (
	"errors"
	"testing"

	"github.com/heraldbus/herald/codec"
)

type order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

func TestJSONRoundTrip(t *testing.T) {
	c, err := codec.NewRegistry().Lookup("")
	if err != nil {
		t.Fatal(err)
	}
	if c.ContentType() != codec.JSONContentType {
		t.Fatalf("empty content type resolved to %q, want JSON", c.ContentType())
	}
	data, err := c.Marshal(order{ID: "o-1", Amount: 42})
	if err != nil {
		t.Fatal(err)
	}
	var got order
	if err := c.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got != (order{ID: "o-1", Amount: 42}) {
		t.Fatalf("got %+v", got)
	}
	if err := c.Unmarshal([]byte("{not json"), &got); err == nil {
		t.Fatal("want an error for malformed JSON")
	}
}

type upper struct{ codec.JSON }

func (upper) ContentType() string { return "application/x-upper" }

func TestRegistryLookupAndOverride(t *testing.T) {
	r := codec.NewRegistry(upper{})
	if _, err := r.Lookup("application/x-upper"); err != nil {
		t.Fatal(err)
	}
	_, err := r.Lookup("text/nope")
	if !errors.Is(err, codec.ErrUnknownContentType) {
		t.Fatalf("got %v, want ErrUnknownContentType", err)
	}
	// Registries do not share state.
	if _, err := codec.NewRegistry().Lookup("application/x-upper"); err == nil {
		t.Fatal("a fresh registry must not see another registry's codec")
	}
}
