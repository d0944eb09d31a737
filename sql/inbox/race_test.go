//go:build race

package inbox_test

// raceDetector reports whether the tests run under -race.
const raceDetector = true
