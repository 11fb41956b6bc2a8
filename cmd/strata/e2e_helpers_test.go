package main

// Shared harness for the end-to-end tests (*_e2e_test.go): they build the
// strata binary once, run real `strata serve` daemons on short temporary data
// directories and drive them with real clients (nbdinfo, fio, nbdcopy,
// qemu-io, qemu-img, nbdsh, python3-libnbd, nbdfuse + losetup + ext4).
// Every process a test starts is stopped by PID in its cleanup; every mount
// and loop device is undone even when the test fails.

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// strataBin is the binary TestMain builds for this run.
var strataBin string

func TestMain(m *testing.M) {
	os.Exit(e2eMain(m))
}

// e2eTests are this package's end-to-end tests; TestMain skips the build
// when -run selects none of them (the package's unit tests need no binary).
var e2eTests = []string{"TestE2ENbdinfo", "TestE2EFioVerify", "TestE2ENbdcopy", "TestE2EQemu",
	"TestE2EExt4", "TestE2EKill9", "TestE2ECLI", "TestE2ETCP", "TestE2EMemoryBounded", "TestE2EMetrics", "TestE2EMetricsListen", "TestE2EGrafanaDashboard", "TestE2ETLS", "TestE2ETLSClientCerts", "TestE2ETLSFlags", "TestE2EAttach", "TestE2EReadOnlyVolume", "TestE2EAllow", "TestE2EVolumeAccess", "TestE2EUblk", "TestE2EReplication", "TestE2EReplicationS3", "TestE2EReplicationTLS", "TestE2EReplicationTargetFull", "TestE2EDamagedNewestRecordAfterCleanStop", "TestE2ESchedule", "TestE2EAppConsistentFsfreeze", "TestE2ESnapshotQGA", "TestE2EConsole", "TestE2EConsoleReadOnly", "TestE2EConsoleFlags", "TestE2ENBDConformance", "TestE2EListenOffLoopback", "TestE2ENetnsLab", "TestE2ENetnsReplication", "TestE2ENetnsQSDReconnect", "TestE2EHASwitchover", "TestE2EHAKill9", "TestE2EHAPartition", "TestE2EHAMigrate", "TestE2EHAQuickRestart", "TestE2EWitness", "TestE2EPowerCutDir", "TestE2EHAPowerCut", "TestE2EReport", "TestE2EScrub", "TestE2EScrubS3", "TestE2EQoS", "TestE2ES3Retention", "TestE2EHugePages"}

func e2eSelected() bool {
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	top, _, _ := strings.Cut(f.Value.String(), "/")
	re, err := regexp.Compile(top)
	if err != nil {
		return true
	}
	for _, n := range e2eTests {
		if re.MatchString(n) {
			return true
		}
	}
	return false
}

func e2eMain(m *testing.M) int {
	flag.Parse()
	if !e2eSelected() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "strata-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	strataBin = filepath.Join(dir, "strata")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", strataBin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build -o %s .: %v\n%s", strataBin, err, out)
		return 1
	}
	return m.Run()
}

// need skips the test unless every tool is on PATH.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian: fio qemu-utils libnbd-bin nbdkit python3-libnbd fuse3 e2fsprogs util-linux): %v", tool, err)
		}
	}
}

// needPython skips unless the system Python has the libnbd binding.
func needPython(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(python3); err != nil {
		t.Skipf("%s not found: %v", python3, err)
	}
	if out, err := exec.Command(python3, "-c", "import nbd").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import nbd (Debian: python3-libnbd): %v\n%s", python3, err, out)
	}
}

const python3 = "/usr/bin/python3"

// systemPythonEnv puts /usr/bin first on PATH: nbdsh runs `python3 -m nbd`,
// and the binding is installed for the system Python only.
func systemPythonEnv() []string {
	return []string{"PATH=/usr/bin:/bin:" + os.Getenv("PATH")}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices and mount)")
	}
}

// result is what a finished command left.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// cmdSpec describes one external command run.
type cmdSpec struct {
	name    string
	args    []string
	env     []string // added to os.Environ()
	stdin   []byte
	dir     string        // working directory; default the test's
	timeout time.Duration // default 2 minutes
}

// runSpec runs a command to completion (killed at its timeout). A command
// that cannot start, or times out, fails the test.
func runSpec(t *testing.T, s cmdSpec) result {
	t.Helper()
	if s.timeout == 0 {
		s.timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.name, s.args...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Dir = s.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if s.stdin != nil {
		cmd.Stdin = bytes.NewReader(s.stdin)
	}
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s %s: timed out after %s\n%s", s.name, quoteArgs(s.args), s.timeout, r)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %s: %v", s.name, quoteArgs(s.args), err)
	}
	return r
}

// run runs name args with the default timeout and returns what it left.
func run(t *testing.T, name string, args ...string) result {
	t.Helper()
	return runSpec(t, cmdSpec{name: name, args: args})
}

// mustRun runs a command and fails the test, showing its output, unless it
// exits 0.
func mustRun(t *testing.T, name string, args ...string) result {
	t.Helper()
	r := run(t, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: %s", name, quoteArgs(args), r)
	}
	return r
}

// mustRunTimeout is mustRun with a timeout.
func mustRunTimeout(t *testing.T, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	r := runSpec(t, cmdSpec{name: name, args: args, timeout: timeout})
	if r.code != 0 {
		t.Fatalf("%s %s: %s", name, quoteArgs(args), r)
	}
	return r
}

func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$&;|<>()*?") {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

// bgProc is a background process a test started; cleanup stops it by PID.
type bgProc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer // stdout+stderr
	done chan struct{}
	err  error
}

// startBG starts a background process; cleanup sends SIGTERM, then SIGKILL
// after 10 s, and prints its output if the test failed.
func startBG(t *testing.T, name string, args ...string) *bgProc {
	t.Helper()
	return startBGEnv(t, nil, name, args...)
}

// startBGEnv is startBG with variables added to the environment.
func startBGEnv(t *testing.T, env []string, name string, args ...string) *bgProc {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &bgProc{t: t, name: name + " " + quoteArgs(args), cmd: cmd, done: make(chan struct{})}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatalf("start %s: %v", p.name, err)
	}
	pw.Close()
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		b := make([]byte, 4096)
		for {
			n, err := pr.Read(b)
			if n > 0 {
				p.mu.Lock()
				p.out.Write(b[:n])
				p.mu.Unlock()
			}
			if err != nil {
				pr.Close()
				return
			}
		}
	}()
	go func() {
		p.err = cmd.Wait()
		select { // a grandchild may hold the pipe open: do not wait for it
		case <-outDone:
		case <-time.After(time.Second):
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("output of %s (pid %d):\n%s", p.name, cmd.Process.Pid, p.output())
		}
	})
	return p
}

func (p *bgProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits until the process's output contains s.
func (p *bgProc) waitOutput(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), s) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.output(), s) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before printing %q:\n%s", p.name, p.err, s, p.output())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not print %q within %s:\n%s", p.name, s, timeout, p.output())
}

func (p *bgProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILL; it returns the exit
// code (-1 for a signal death).
func (p *bgProc) stop(grace time.Duration) int {
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			p.t.Logf("%s (pid %d) ignored SIGTERM for %s: SIGKILL", p.name, p.cmd.Process.Pid, grace)
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	return p.cmd.ProcessState.ExitCode()
}

// kill sends SIGKILL and waits.
func (p *bgProc) kill() {
	if !p.exited() {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// server is one `strata serve` on a data directory.
type server struct {
	t      *testing.T
	dir    string
	global []string // global flags put before "serve" and every client command
	args   []string // serve flags
	runs   int
	cmd    *exec.Cmd
	done   chan struct{}
	logs   []string // stdout/stderr files of every run
}

// startServer starts `strata --data DIR serve --listen "" ARGS...` on a new
// short temporary DIR (unless ARGS has its own --listen).
func startServer(t *testing.T, serveArgs ...string) *server {
	t.Helper()
	return startServerWith(t, nil, serveArgs...)
}

// startServerWith also passes global flags (e.g. --control-socket), which
// go before the command name.
func startServerWith(t *testing.T, global []string, serveArgs ...string) *server {
	t.Helper()
	return startServerAt(t, shortTempDir(t), global, serveArgs...)
}

// startServerAt starts the daemon on data directory dir.
func startServerAt(t *testing.T, dir string, global []string, serveArgs ...string) *server {
	t.Helper()
	if strataBin == "" {
		t.Fatal("the strata binary was not built: TestMain builds it only when -run selects a TestE2E test")
	}
	s := &server{t: t, dir: dir, global: global}
	listen := false
	for _, a := range serveArgs {
		if a == "--listen" || strings.HasPrefix(a, "--listen=") {
			listen = true
		}
	}
	if !listen {
		s.args = append(s.args, "--listen", "")
	}
	s.args = append(s.args, serveArgs...)
	t.Cleanup(func() {
		if s.running() {
			if code := s.stop(); code != 0 {
				t.Errorf("strata serve exited %d at cleanup", code)
			}
		}
		if t.Failed() {
			s.dumpLogs()
		}
	})
	s.start()
	return s
}

// shortTempDir makes a temp dir with a short path (Unix socket paths must
// stay under 108 bytes) and removes it at cleanup.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "st")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (s *server) dumpLogs() {
	for _, f := range s.logs {
		b, err := os.ReadFile(f)
		if err != nil {
			s.t.Logf("%s: %v", f, err)
			continue
		}
		s.t.Logf("--- %s:\n%s", f, b)
	}
}

func (s *server) running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// start runs the daemon and waits (10 s at most) until `strata status`
// answers.
func (s *server) start() {
	s.t.Helper()
	if err := s.tryStart(); err != nil {
		s.dumpLogs()
		s.t.Fatal(err)
	}
}

func (s *server) tryStart() error {
	s.runs++
	outPath := filepath.Join(s.dir, fmt.Sprintf("serve-%d.out", s.runs))
	errPath := filepath.Join(s.dir, fmt.Sprintf("serve-%d.err", s.runs))
	s.logs = append(s.logs, outPath, errPath)
	of, err := os.Create(outPath)
	if err != nil {
		return err
	}
	ef, err := os.Create(errPath)
	if err != nil {
		of.Close()
		return err
	}
	args := append([]string{"--data", s.dir}, s.global...)
	args = append(args, "serve")
	args = append(args, s.args...)
	cmd := exec.Command(strataBin, args...)
	cmd.Stdout, cmd.Stderr = of, ef
	if err := cmd.Start(); err != nil {
		of.Close()
		ef.Close()
		return fmt.Errorf("start strata %s: %w", quoteArgs(args), err)
	}
	of.Close()
	ef.Close()
	s.cmd = cmd
	s.done = make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		close(done)
	}(s.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if !s.running() {
			return fmt.Errorf("strata %s exited with %v before answering status", quoteArgs(args), cmd.ProcessState)
		}
		c := exec.Command(strataBin, append(append([]string{"--data", s.dir}, s.global...), "status")...)
		if c.Run() == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("strata %s: status did not answer within 10 s", quoteArgs(args))
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits (SIGKILL after 10 s); it returns the exit code.
func (s *server) stop() int {
	if !s.running() {
		return s.cmd.ProcessState.ExitCode()
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Errorf("strata serve (pid %d) still running 10 s after SIGTERM: SIGKILL", s.pid())
		s.cmd.Process.Kill()
		<-s.done
	}
	return s.cmd.ProcessState.ExitCode()
}

// kill9 kills the daemon with SIGKILL and waits for it.
func (s *server) kill9() {
	if s.running() {
		s.cmd.Process.Kill()
		<-s.done
	}
}

// restart stops the daemon cleanly and starts it again on the same DIR.
func (s *server) restart() {
	s.t.Helper()
	if code := s.stop(); code != 0 {
		s.dumpLogs()
		s.t.Fatalf("strata serve exited %d on SIGTERM", code)
	}
	s.start()
}

// cli runs `strata --data DIR GLOBAL... ARGS...`.
func (s *server) cli(args ...string) result {
	s.t.Helper()
	full := append(append([]string{"--data", s.dir}, s.global...), args...)
	return runSpec(s.t, cmdSpec{name: strataBin, args: full, timeout: 30 * time.Second})
}

// mustCLI runs a client command and fails unless it exits 0.
func (s *server) mustCLI(args ...string) string {
	s.t.Helper()
	r := s.cli(args...)
	if r.code != 0 {
		s.t.Fatalf("strata %s: %s", quoteArgs(args), r)
	}
	return r.stdout
}

func (s *server) createVolume(name, size string) {
	s.t.Helper()
	s.mustCLI("volume", "create", name, "--size", size)
}

// on makes the server's helpers report to subtest t (Fatal must be called
// from t's own goroutine) until t ends. Subtests using it run one at a time.
func (s *server) on(t *testing.T) {
	old := s.t
	s.t = t
	t.Cleanup(func() { s.t = old })
}

func (s *server) sock() string { return filepath.Join(s.dir, "nbd.sock") }

// uri is the NBD URI of export name on the Unix socket.
func (s *server) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + s.sock()
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// checkOneLineError checks that a failed strata command exited 1 and printed
// exactly one line "strata: ..." on stderr containing every want string.
func checkOneLineError(t *testing.T, what string, r result, want ...string) {
	t.Helper()
	if r.code != 1 {
		t.Errorf("%s: exit %d, want 1\n%s", what, r.code, r)
		return
	}
	msg := strings.TrimSuffix(r.stderr, "\n")
	if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "strata: ") {
		t.Errorf("%s: stderr is not one line \"strata: ...\":\n%s", what, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: error %q does not contain %q", what, msg, w)
		}
	}
}

// writePy writes a Python script to a temp file and returns its path.
func writePy(t *testing.T, dir, name, src string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
