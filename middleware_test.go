package herald_test

import (
	"context"
	"strings"
	"testing"

	"github.com/heraldbus/herald"
)

func msg(id string) *herald.Message {
	return &herald.Message{ID: id, Topic: "orders", Key: "k", Headers: herald.Headers{"h": "v"}, Data: []byte("{}")}
}

func TestChainOrder(t *testing.T) {
	var trace []string
	mark := func(name string) herald.Middleware {
		return func(next herald.HandlerFunc) herald.HandlerFunc {
			return func(ctx context.Context, m *herald.Message) error {
				trace = append(trace, name+">")
				err := next(ctx, m)
				trace = append(trace, "<"+name)
				return err
			}
		}
	}
	h := herald.Chain(func(context.Context, *herald.Message) error { trace = append(trace, "h"); return nil },
		mark("a"), nil, mark("b"))
	_ = h(context.Background(), msg("1"))
	if got := strings.Join(trace, " "); got != "a> b> h <b <a" {
		t.Fatalf("got %q", got)
	}
}
