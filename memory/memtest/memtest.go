// Package memtest gives tests an in-memory broker of their own, closed
// when the test ends: the one helper every herald test suite built on
// memdriver shares, and one a service's own tests can use the same way.
package memtest

import (
	"testing"

	"github.com/heraldbus/herald/memory/memdriver"
)

// Broker returns a new memdriver broker made with opts and closes it
// when t ends. Bad options fail t at once.
func Broker(t testing.TB, opts ...memdriver.Option) *memdriver.Broker {
	t.Helper()
	b, err := memdriver.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}
