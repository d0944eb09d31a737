package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/heraldbus/herald/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRedisExample(t *testing.T) {
	addr := testenv.RedisAddr(t)
	var out strings.Builder
	if err := run(&out, addr); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"published 20 orders, then 5 of them again",
		"charged 20 orders, 20 of them exactly once",
		"skipped 5 duplicate deliveries",
		`group "billing": 0 pending, 0 unread`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
