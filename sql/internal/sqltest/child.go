package sqltest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Child is a process that runs this test binary again, for crash tests
// that kill a consumer with SIGKILL: its standard input is a pipe the
// parent holds (closing it tells the child to shut down), its standard
// output and error go to a file, so the parent runs no goroutine copying
// them; one goroutine waits for its exit.
type Child struct {
	Name   string
	Cmd    *exec.Cmd
	Stdin  *os.File // the parent's end of the child's standard input
	Log    string   // the child's standard output and error
	Exited chan struct{}
}

// StartChild starts the test binary with -test.run=run (a pattern naming
// the test whose body turns into the child when it finds its variable in
// env), with env added to the environment and its output in dir/name.log.
// When t ends the child is killed, and if t failed the end of its log is
// logged.
func StartChild(t testing.TB, dir, name, run string, env ...string) *Child {
	t.Helper()
	c := &Child{Name: name, Log: filepath.Join(dir, name+".log"), Exited: make(chan struct{})}
	logFile, err := os.Create(c.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	in, out, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	c.Stdin = out
	c.Cmd = exec.Command(os.Args[0], "-test.run="+run, "-test.timeout=5m")
	c.Cmd.Env = append(os.Environ(), env...)
	c.Cmd.Stdin, c.Cmd.Stdout, c.Cmd.Stderr = in, logFile, logFile
	if err := c.Cmd.Start(); err != nil {
		_ = out.Close()
		t.Fatal(err)
	}
	go func() {
		_ = c.Cmd.Wait()
		close(c.Exited)
	}()
	t.Cleanup(func() {
		c.Kill()
		_ = c.Stdin.Close()
		if t.Failed() {
			b, _ := os.ReadFile(c.Log)
			if len(b) > 4<<10 {
				b = b[len(b)-4<<10:]
			}
			t.Logf("%s's log ends:\n%s", c.Name, b)
		}
	})
	return c
}

// Kill ends the child with SIGKILL and waits until it is gone.
func (c *Child) Kill() {
	select {
	case <-c.Exited:
		return
	default:
	}
	_ = c.Cmd.Process.Kill()
	<-c.Exited
}

// Killed reports whether the child has exited by a signal.
func (c *Child) Killed() bool {
	select {
	case <-c.Exited:
		return c.Cmd.ProcessState.ExitCode() == -1
	default:
		return false
	}
}

// Stop closes the child's input, which shuts a well-behaved child down
// gracefully, and checks that it exits with 0 within the given time.
func (c *Child) Stop(t testing.TB, within time.Duration) {
	t.Helper()
	_ = c.Stdin.Close()
	select {
	case <-c.Exited:
	case <-time.After(within):
		t.Fatalf("%s did not shut down within %v", c.Name, within)
	}
	if code := c.Cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("%s exited with %d after its input closed, want 0", c.Name, code)
	}
}

// KillSelf sends this process SIGKILL and waits for it to arrive: what a
// child calls to die at a chosen point of its work.
func KillSelf() {
	if p, err := os.FindProcess(os.Getpid()); err == nil {
		_ = p.Kill()
	}
	time.Sleep(time.Minute)
}
