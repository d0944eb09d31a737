// Package optcheck collects what is wrong with a configuration, each
// problem an error that wraps herald.ErrInvalidOption, so that a
// constructor reports every problem at once: the one way herald's drivers
// and the outbox validate their options. (The root package, which
// optcheck builds on, has herald.OptionError for its own.)
package optcheck

import (
	"errors"
	"fmt"
	"time"

	"github.com/heraldbus/herald"
)

// Problems is the list of problems found so far. The zero value is not
// usable; New makes one.
type Problems struct {
	prefix string
	errs   []error
}

// New returns an empty list whose errors start with prefix ("kafkadriver",
// "outbox: relay").
func New(prefix string) *Problems { return &Problems{prefix: prefix} }

// Addf records a problem described by format and args.
func (p *Problems) Addf(format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf(p.prefix+": "+format+": %w", append(args, herald.ErrInvalidOption)...))
}

// If records the problem when bad holds.
func (p *Problems) If(bad bool, format string, args ...any) {
	if bad {
		p.Addf(format, args...)
	}
}

// Add records err as it is (nil is ignored): for a problem found earlier,
// already wrapping herald.ErrInvalidOption.
func (p *Problems) Add(err error) {
	if err != nil {
		p.errs = append(p.errs, err)
	}
}

// Positive records that the setting name must be above 0 unless it is.
func Positive[T int | int64 | time.Duration](p *Problems, name string, v T) {
	p.If(v <= 0, "%s must be positive, got %v", name, v)
}

// Shorter records that a must be shorter than b, when both are set.
func Shorter(p *Problems, aName string, a time.Duration, bName string, b time.Duration) {
	p.If(a > 0 && b > 0 && a >= b, "%s (%v) must be shorter than the %s (%v)", aName, a, bName, b)
}

// Err returns every problem joined, or nil when there is none.
func (p *Problems) Err() error { return errors.Join(p.errs...) }
