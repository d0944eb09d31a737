//go:build !unix

package main

import "time"

// processCPU has no getrusage to read on this platform: the CPU column
// shows "-" rather than a figure measured differently from the unix one.
func processCPU() (cpu time.Duration, ok bool) { return 0, false }
