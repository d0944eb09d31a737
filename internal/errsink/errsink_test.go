package errsink

import (
	"errors"
	"testing"
)

func TestSinkReportsToTheSetFunctionElseTheFallback(t *testing.T) {
	var s Sink
	var fell, set []error
	fallback := func(err error) { fell = append(fell, err) }
	first, second := errors.New("first"), errors.New("second")
	s.Report(first, fallback)
	s.Set(func(err error) { set = append(set, err) })
	s.Report(second, fallback)
	if len(fell) != 1 || fell[0] != first || len(set) != 1 || set[0] != second {
		t.Errorf("fallback got %v, set function %v; want [first] and [second]", fell, set)
	}
}
