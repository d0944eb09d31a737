//go:build !linux

package privatepg

import "syscall"

// dieWithTest does nothing: only Linux can kill a child when its parent
// dies.
func dieWithTest(*syscall.SysProcAttr) {}

// childProcesses returns nil: without /proc, Kill signals the postmaster
// alone, and its children exit when they notice it is gone.
func childProcesses(int) []int { return nil }

func processGone(int) bool { return true }
