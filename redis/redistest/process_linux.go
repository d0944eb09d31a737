//go:build linux

package redistest

import (
	"os"
	"os/exec"
	"syscall"
)

// detach puts the server in a process group of its own, so that a signal
// meant for the test's group does not reach it and it is stopped only by
// its pid, and has the kernel kill it if the test binary dies first.
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// pause stops p (SIGSTOP) until resume: a node that hangs, as under a long
// stall of its host, without losing its connections.
func pause(p *os.Process) error { return p.Signal(syscall.SIGSTOP) }

// resume continues a paused p (SIGCONT).
func resume(p *os.Process) error { return p.Signal(syscall.SIGCONT) }
