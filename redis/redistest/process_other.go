//go:build !unix

package redistest

import (
	"errors"
	"os"
	"os/exec"
)

// detach does nothing where there are no process groups.
func detach(*exec.Cmd) {}

var errNoStop = errors.New("redistest: no SIGSTOP on this system")

func pause(*os.Process) error  { return errNoStop }
func resume(*os.Process) error { return errNoStop }
