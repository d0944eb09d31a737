//go:build unix

package main

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time this process has used so far, user plus
// system, from getrusage(RUSAGE_SELF): every thread of the process, the Go
// runtime's (garbage collector, scheduler, the memory sampler) included,
// and nothing of another process (a Redis or PostgreSQL server, the parent
// of a -child run and the kfake broker it runs). ok is false if the call
// failed, which RUSAGE_SELF does not in practice.
func processCPU() (cpu time.Duration, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
