// Package privatepg runs a private PostgreSQL server for one test: its own
// data directory, loopback port and processes, which the test can kill and
// restart to see what its code does when the database goes away mid-stream
// and comes back after crash recovery. Tests that only need a database use
// the shared server from internal/testenv instead; it is cheaper.
//
// Start needs the PostgreSQL server binaries: initdb from PATH, or else
// from the newest /usr/lib/postgresql/<version>/bin, and postgres from the
// same directory, so the two are always one version. Without them the
// test skips with a one-line reason, or fails under CI (testenv.CI). Under
// root the server runs as the postgres OS user, because initdb and postgres
// refuse to run as root.
package privatepg

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heraldbus/herald/internal/backoff"
	"github.com/heraldbus/herald/internal/testenv"
)

// Bounds on waits for the server; they catch a hung server, they are not
// performance targets (a start takes about a second).
const (
	readyTimeout = 30 * time.Second // postgres accepting connections, crash recovery included
	stopTimeout  = 30 * time.Second // a fast shutdown, before Stop kills instead
	exitTimeout  = 10 * time.Second // processes gone after SIGKILL
)

// Server is one private PostgreSQL server. Its methods are for the test
// goroutine that started it; they are not safe for concurrent use.
type Server struct {
	bin  binaries
	cred *syscall.Credential // whom initdb and postgres run as; nil for the test's own user
	root string              // owned by the server's user: data/, the Unix socket, postgres.log
	port int
	log  *os.File
	proc *process // nil while the server is down
}

// process is one run of the postmaster, from start to exit.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait has returned
	err    error         // cmd.Wait's result; read it only after exited is closed
}

// Start initializes a fresh data directory, starts a server on a free
// loopback port, waits until it accepts connections and creates the
// database test, which DSN names. The superuser is postgres, with trust
// authentication. fsync is off: that loses nothing when processes are
// killed, only when the machine crashes.
//
// Cleanups registered on t kill the server, unless it is already down, and
// remove the data directory; they leave no process or goroutine behind.
// When the test has failed, they log the tail of the server's log first.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findBinaries()
	if err != nil {
		testenv.Unavailable(t, "privatepg: "+err.Error())
		return nil
	}
	cred, err := serverUser()
	if err != nil {
		testenv.Unavailable(t, "privatepg: "+err.Error())
		return nil
	}
	s := &Server{bin: bin, cred: cred}
	if err := s.checkRunnable(); err != nil {
		testenv.Unavailable(t, "privatepg: "+err.Error())
		return nil
	}
	err = s.makeRoot()
	if s.root != "" {
		t.Cleanup(func() { s.removeRoot(t) })
	}
	if err != nil {
		t.Fatalf("privatepg: %v", err)
	}
	if err := s.initdb(); err != nil {
		t.Fatalf("privatepg: %v", err)
	}
	if err := s.launchOnFreePort(); err != nil {
		t.Fatalf("privatepg: %v", err)
	}
	t.Cleanup(func() {
		if err := s.kill(); err != nil {
			t.Errorf("privatepg: cleanup: %v", err)
		}
	})
	if err := s.createTestDatabase(); err != nil {
		t.Fatalf("privatepg: %v", err)
	}
	return s
}

// DSN returns the URL of the database test, for pgx (database/sql driver
// "pgx") or any libpq-style client. It stays the same across Kill, Stop
// and Restart.
func (s *Server) DSN() string { return s.dsn("test") }

// Kill kills the server the way a crash would: SIGKILL to the postmaster
// and, on Linux, to every backend and auxiliary process (elsewhere they
// exit when they notice the postmaster is gone), with no shutdown
// checkpoint. It returns once they are all gone, so Restart can start at
// once. Client
// connections break; committed transactions survive (Restart's crash
// recovery replays them), open ones are lost. Kill fails the test when the
// server is not running.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if s.proc == nil {
		t.Fatal("privatepg: Kill of a server that is not running")
	}
	if err := s.kill(); err != nil {
		t.Fatalf("privatepg: %v", err)
	}
}

// Stop shuts the server down cleanly, the way an administrator would (a
// fast shutdown: open transactions roll back, clients are disconnected, a
// checkpoint is written), and returns once it has exited. When it has not
// exited within 30s, Stop kills it and fails the test, as it does when the
// server is not running.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	p := s.proc
	if p == nil {
		t.Fatal("privatepg: Stop of a server that is not running")
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("privatepg: stop: %v", err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
		s.proc = nil
		if p.err != nil {
			t.Fatalf("privatepg: postgres exited with %v on shutdown; its log ends:\n%s", p.err, s.logTail())
		}
	case <-timer.C:
		err := s.kill()
		t.Fatalf("privatepg: postgres did not shut down within %v; killed it (%v); its log ends:\n%s",
			stopTimeout, err, s.logTail())
	}
}

// Restart starts a killed or stopped server again, on the same port and
// data directory, and returns once it accepts connections: after Kill that
// includes crash recovery. Restart fails the test when the server is
// running.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.proc != nil {
		t.Fatal("privatepg: Restart of a running server; Kill or Stop it first")
	}
	if err := s.launch(); err != nil {
		t.Fatalf("privatepg: restart: %v", err)
	}
}

func (s *Server) dsn(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, database)
}

func (s *Server) dataDir() string { return filepath.Join(s.root, "data") }

// makeRoot creates the server's directory. Not t.TempDir: its parent is
// private to the test's user, and the postgres user could not reach in.
func (s *Server) makeRoot() error {
	root, err := os.MkdirTemp("", "privatepg-")
	if err != nil {
		return err
	}
	s.root = root
	if s.cred != nil {
		if err := os.Chown(root, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return err
		}
	}
	// Opened by the test process and handed to every run of postgres, so
	// the log file needs no permission for the server's user.
	s.log, err = os.OpenFile(filepath.Join(root, "postgres.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	return err
}

func (s *Server) removeRoot(t testing.TB) {
	if s.log != nil {
		if t.Failed() {
			t.Logf("privatepg: postgres on port %d, its log ends:\n%s", s.port, s.logTail())
		}
		_ = s.log.Close()
	}
	if err := os.RemoveAll(s.root); err != nil {
		t.Errorf("privatepg: %v", err)
	}
}

// command returns cmd for one of the server binaries, run as the server's
// user in its directory, in its own process group.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.root
	cmd.Env = append(os.Environ(), "LC_ALL=C") // log messages in English, whatever the machine's locale
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	return cmd
}

// checkRunnable runs both binaries once, as the server's user.
func (s *Server) checkRunnable() error {
	for _, bin := range []string{s.bin.initdb, s.bin.postgres} {
		cmd := s.command(bin, "--version")
		cmd.Dir = "/" // the server's directory does not exist yet
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s --version as %s: %v %s", bin, s.userName(), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func (s *Server) userName() string {
	if s.cred == nil {
		return "the test's user"
	}
	return "the postgres user"
}

func (s *Server) initdb() error {
	cmd := s.command(s.bin.initdb, "-D", s.dataDir(), "-A", "trust", "-U", "postgres",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return nil
}

// launchOnFreePort picks a port and launches the server on it, with a new
// port when another process took the first between the pick and the bind.
func (s *Server) launchOnFreePort() error {
	var err error
	for range 3 {
		if s.port, err = freePort(); err != nil {
			return err
		}
		var logStart int64
		if fi, statErr := s.log.Stat(); statErr == nil {
			logStart = fi.Size()
		}
		if err = s.launch(); err == nil || !strings.Contains(s.logSince(logStart), "could not create any TCP/IP sockets") {
			return err
		}
	}
	return err
}

// launch starts the postmaster and waits until it accepts connections;
// when it does not, launch kills it.
func (s *Server) launch() error {
	cmd := s.command(s.bin.postgres, "-D", s.dataDir(), "-p", strconv.Itoa(s.port), "-k", s.root,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
	cmd.Stdout, cmd.Stderr = s.log, s.log // files, not pipes: os/exec starts no copying goroutine
	dieWithTest(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	s.proc = p
	if err := s.waitReady(); err != nil {
		return errors.Join(err, s.kill())
	}
	return nil
}

func (s *Server) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	wait := backoff.New(5*time.Millisecond, 100*time.Millisecond)
	for {
		select {
		case <-s.proc.exited:
			return fmt.Errorf("postgres exited while starting on port %d (%v); its log ends:\n%s",
				s.port, s.proc.err, s.logTail())
		default:
		}
		err := ping(ctx, s.dsn("postgres"))
		if err == nil {
			return nil
		}
		if !backoff.Sleep(ctx, wait.Next()) {
			return fmt.Errorf("postgres on port %d not ready within %v: %w; its log ends:\n%s",
				s.port, readyTimeout, err, s.logTail())
		}
	}
}

func ping(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func (s *Server) createTestDatabase() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn("postgres"))
	if err != nil {
		return fmt.Errorf("create database test: %w", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	if _, err := conn.Exec(ctx, "CREATE DATABASE test"); err != nil {
		return fmt.Errorf("create database test: %w", err)
	}
	return nil
}

// kill SIGKILLs the postmaster and its children and waits until they are
// gone; it does nothing when the server is down.
func (s *Server) kill() error {
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	// Stop the postmaster first, so it forks nothing between the listing
	// of its children and the kill. Every child is in a session of its
	// own (PostgreSQL makes each one a group leader), so the group kill
	// reaches only the postmaster and a child that has not got that far.
	var children []int
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err == nil {
		pid := p.cmd.Process.Pid
		children = childProcesses(pid)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		for _, c := range children {
			_ = syscall.Kill(c, syscall.SIGKILL)
		}
	}
	timer := time.NewTimer(exitTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		return fmt.Errorf("postmaster %d still running %v after SIGKILL", p.cmd.Process.Pid, exitTimeout)
	}
	return waitGone(children, exitTimeout)
}

// waitGone waits until none of pids runs; a zombie counts as gone, since it
// holds no memory PostgreSQL's next start would find in use.
func waitGone(pids []int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for _, pid := range pids {
		for !processGone(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("postgres child %d still running %v after SIGKILL", pid, limit)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return nil
}

// logTail returns the end of the server's log, for error messages.
func (s *Server) logTail() string {
	const tailSize = 4 << 10
	b, err := os.ReadFile(s.log.Name())
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > tailSize {
		b = b[len(b)-tailSize:]
	}
	return string(b)
}

// logSince returns what the server logged after the log was size bytes.
func (s *Server) logSince(size int64) string {
	b, err := os.ReadFile(s.log.Name())
	if err != nil || int64(len(b)) < size {
		return ""
	}
	return string(b[size:])
}

// freePort returns a loopback port nothing listens on, below Linux's
// ephemeral range (32768 up): a port from there could become some client
// connection's local port while the server is killed, and Restart needs
// the same port back.
func freePort() (int, error) {
	for range 100 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		if err := l.Close(); err != nil {
			return 0, err
		}
		return port, nil
	}
	return 0, errors.New("no free loopback port between 20000 and 32000")
}

// binaries are the server binaries of one PostgreSQL installation.
type binaries struct{ initdb, postgres string }

func findBinaries() (binaries, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		// Through the symlink, to where postgres of the same version is.
		if p, err = filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	installed, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(installed, func(a, b string) int { return majorVersion(b) - majorVersion(a) })
	for _, dir := range append(dirs, installed...) {
		bin := binaries{initdb: filepath.Join(dir, "initdb"), postgres: filepath.Join(dir, "postgres")}
		if executable(bin.initdb) && executable(bin.postgres) {
			return bin, nil
		}
	}
	return binaries{}, errors.New("no PostgreSQL server binaries (initdb and postgres) on PATH or in /usr/lib/postgresql/*/bin")
}

// majorVersion returns 15 for /usr/lib/postgresql/15/bin, 0 when the
// directory names no version.
func majorVersion(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// serverUser returns whom to run initdb and postgres as: nil, the test's
// own user, unless that is root, which both refuse; then the postgres OS
// user.
func serverUser() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and no postgres OS user to run the server as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres OS user: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres OS user: gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}
