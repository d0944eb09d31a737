package telemetry

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

type codeError struct{}

func (codeError) Error() string { return "code" }

func TestErrorType(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{codeError{}, "telemetry.codeError"},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", codeError{})), "telemetry.codeError"},
		{fmt.Errorf("a: %w", context.DeadlineExceeded), "timeout"},
		{context.Canceled, "canceled"},
		{errors.New("plain"), "*errors.errorString"},
	} {
		if got := ErrorType(c.err); got != c.want {
			t.Errorf("ErrorType(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestInjectExtractRoundTrip(t *testing.T) {
	p := Config{}.Resolve()
	if h := p.Inject(context.Background(), nil); h != nil {
		t.Errorf("headers %v from a context without a span", h)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{9}, SpanID: trace.SpanID{8}, TraceFlags: trace.FlagsSampled})
	h := p.Inject(trace.ContextWithSpanContext(context.Background(), sc), nil)
	_, got := p.Extract(context.Background(), h)
	if got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || !got.IsRemote() {
		t.Errorf("extracted %v from %v, want %v", got, h, sc)
	}
	if p.Tracer() != nil {
		t.Error("a tracer with no provider installed")
	}
}
