package main

import (
	"context"
	"errors"

	"github.com/heraldbus/herald"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// otelScenario measures what tracing and metrics cost on the memory
// driver's hot path, where herald's own cost is largest relative to the
// broker's: the same Bus with telemetry off (WithoutTelemetry), with the
// defaults and no provider installed (the global providers, no-ops until
// the application installs one), with explicit no-op providers, and with
// the OpenTelemetry SDK recording every span and measurement.
func otelScenario() scenario {
	return scenario{
		name:  "otel",
		about: "telemetry cost on the memory driver: off, no provider installed, no-op providers, SDK recording everything",
		cases: otelCases,
	}
}

func otelCases(config) []benchCase {
	none := func(context.Context) error { return nil }
	off := func() ([]herald.Option, func(context.Context) error) {
		return []herald.Option{herald.WithoutTelemetry()}, none
	}
	noop := func() ([]herald.Option, func(context.Context) error) {
		return []herald.Option{
			herald.WithTracerProvider(tracenoop.NewTracerProvider()),
			herald.WithMeterProvider(metricnoop.NewMeterProvider()),
		}, none
	}
	var cases []benchCase
	for _, typed := range []bool{false, true} {
		kind, what := "raw", "raw messages"
		if typed {
			kind, what = "typed", "typed event (JSON)"
		}
		cases = append(cases,
			heraldCase("herald-"+kind+"-off", what+", 1 per call, telemetry off (WithoutTelemetry)",
				memoryDriver, heraldVariant{typed: typed, telemetry: off}),
			heraldCase("herald-"+kind+"-global", what+", 1 per call, default: global providers, none installed",
				memoryDriver, heraldVariant{typed: typed}),
			heraldCase("herald-"+kind+"-noop", what+", 1 per call, no-op tracer and meter providers",
				memoryDriver, heraldVariant{typed: typed, telemetry: noop}),
			heraldCase("herald-"+kind+"-sdk", what+", 1 per call, SDK: every span sampled and exported, metrics aggregated",
				memoryDriver, heraldVariant{typed: typed, telemetry: sdkOptions}),
		)
	}
	return cases
}

// sdkOptions sets up the OpenTelemetry SDK with every span sampled and
// handed to a batch span processor whose exporter discards them, and a
// meter provider with a manual reader (every measurement is aggregated;
// nothing collects during the run).
func sdkOptions() ([]herald.Option, func(context.Context) error) {
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		sdktrace.WithBatcher(tracetest.NewNoopExporter()),
	)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	stop := func(ctx context.Context) error { return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx)) }
	return []herald.Option{herald.WithTracerProvider(tp), herald.WithMeterProvider(mp)}, stop
}
