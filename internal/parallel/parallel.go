// Package parallel runs one function over many items at once and joins
// the errors: how the bus shuts its subscriptions down and how the drivers
// close the subscriptions still open when they close.
package parallel

import (
	"errors"
	"sync"
)

// Each calls f for every item, all at once, waits for every call to
// return, and joins their errors in the items' order (nil when all
// succeeded).
func Each[T any](items []T, f func(T) error) error {
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() { errs[i] = f(it) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
