package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestKafkaExampleEmbedded(t *testing.T) {
	var out strings.Builder
	if err := run(&out, "", true); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{
		"shop: published 12 orders",
		"order 3: payment provider timed out, retrying",
		"charged order  3 of customer-0: 40",
		"operations: dead letter from examples.orders (group billing): ",
		"order 7: negative amount -5",
		"done: 11 orders charged, 1 dead-lettered",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestKafkaExampleNeedsBrokers(t *testing.T) {
	if err := run(&strings.Builder{}, "", false); err == nil || !strings.Contains(err.Error(), "-embedded") {
		t.Fatalf("run without brokers = %v, want an error that names the flags", err)
	}
}
