package privatepg

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

// dieWithTest has the kernel kill the postmaster when the test binary dies
// without running its cleanups (a test timeout's panic, a SIGKILL); the
// backends then notice the postmaster's death and exit by themselves.
// Strictly the signal comes when the OS thread that started the server
// exits, which a Go thread does only under runtime.LockOSThread.
func dieWithTest(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }

// childProcesses returns the processes whose parent is pid.
func childProcesses(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var children []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(child); ok && ppid == pid {
			children = append(children, child)
		}
	}
	return children
}

// processGone reports whether pid has exited (a zombie has).
func processGone(pid int) bool {
	state, _, ok := procStat(pid)
	return !ok || state == 'Z'
}

// procStat reads the state and parent of pid from /proc/<pid>/stat:
// "pid (comm) state ppid ...", where comm may hold spaces and parentheses.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := bytes.Fields(b[i+1:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(fields[1]))
	return fields[0][0], ppid, err == nil
}
