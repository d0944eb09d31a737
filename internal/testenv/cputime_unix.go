//go:build unix

package testenv

import (
	"syscall"
	"time"
)

// ProcessCPU is the user and system CPU time this process has used so
// far: benchmarks report it per message beside rates, since it is
// steadier than wall time on a shared machine. It is 0 where the system
// does not say.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
