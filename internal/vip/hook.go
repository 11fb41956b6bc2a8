package vip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Hook error classes.
var (
	// ErrHookFailed: the hook could not start or exited non-zero.
	ErrHookFailed = errors.New("vip: hook failed")
	// ErrHookTimeout: the hook ran past its timeout and was killed.
	ErrHookTimeout = errors.New("vip: hook timed out")
)

// hookWaitDelay is how long RunHook waits, after the hook exits or is
// killed, for its output pipes to close: a hook that left a background
// child holding them must not hang the caller.
const hookWaitDelay = 2 * time.Second

// stderrTail is how much of a failing hook's stderr its error carries.
const stderrTail = 1024

// RunHook runs cmd with sh -c, with the environment plus env (e.g.
// STRATA_VOLUME, STRATA_ROLE=primary|secondary, STRATA_EPOCH), a timeout, its
// output logged; a non-zero exit is an error that includes the tail of its
// stderr.
//
// Each line the hook writes is logged at Info (stdout) or Warn (stderr) as
// it comes. The hook runs in its own process group, and on timeout or
// cancellation of ctx the whole group is killed, so a hook's children do not
// outlive it. A timeout <= 0 means none beyond ctx. A nil log is
// slog.Default().
func RunHook(ctx context.Context, cmd string, env map[string]string, timeout time.Duration, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	environ := os.Environ()
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(env[k], "\x00") {
			return fmt.Errorf("%w: bad environment variable %q for %q", ErrHookFailed, k, cmd)
		}
		environ = append(environ, k+"="+env[k])
	}

	runCtx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c := exec.CommandContext(runCtx, "/bin/sh", "-c", cmd)
	c.Env = environ
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	c.WaitDelay = hookWaitDelay
	hl := log.With("hook", cmd)
	stdout := &lineLogger{log: hl, level: slog.LevelInfo, stream: "stdout"}
	stderr := &lineLogger{log: hl, level: slog.LevelWarn, stream: "stderr", keep: stderrTail}
	c.Stdout, c.Stderr = stdout, stderr

	start := time.Now()
	err := c.Run()
	stdout.flush()
	stderr.flush()
	elapsed := time.Since(start).Round(time.Millisecond)
	tail := strings.TrimSpace(stderr.tail())
	switch {
	case err == nil:
		hl.Info("hook done", "elapsed", elapsed)
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("vip: hook %q stopped after %v: %w", cmd, elapsed, ctx.Err())
	case runCtx.Err() != nil:
		return fmt.Errorf("%w: %q killed after %v%s", ErrHookTimeout, cmd, timeout, tailSuffix(tail))
	}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return fmt.Errorf("%w: %q: %v%s", ErrHookFailed, cmd, ee.ProcessState, tailSuffix(tail))
	}
	return fmt.Errorf("%w: %q: %w%s", ErrHookFailed, cmd, err, tailSuffix(tail))
}

func tailSuffix(tail string) string {
	if tail == "" {
		return " (no stderr)"
	}
	return "; stderr: " + tail
}

// lineLogger logs what is written to it one line at a time, and keeps the
// last keep bytes for the error message.
type lineLogger struct {
	log    *slog.Logger
	level  slog.Level
	stream string
	keep   int

	mu struct {
		sync.Mutex
		partial []byte
		last    []byte
	}
}

// maxLine bounds a line held back waiting for its newline.
const maxLine = 4096

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keep > 0 {
		l.mu.last = append(l.mu.last, p...)
		if over := len(l.mu.last) - l.keep; over > 0 {
			l.mu.last = append(l.mu.last[:0], l.mu.last[over:]...)
		}
	}
	l.mu.partial = append(l.mu.partial, p...)
	for {
		i := bytes.IndexByte(l.mu.partial, '\n')
		if i < 0 {
			break
		}
		l.emitLocked(l.mu.partial[:i])
		l.mu.partial = l.mu.partial[i+1:]
	}
	if len(l.mu.partial) > maxLine {
		l.emitLocked(l.mu.partial)
		l.mu.partial = nil
	}
	return len(p), nil
}

func (l *lineLogger) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.mu.partial) > 0 {
		l.emitLocked(l.mu.partial)
		l.mu.partial = nil
	}
}

func (l *lineLogger) emitLocked(line []byte) {
	l.log.Log(context.Background(), l.level, "hook output", "stream", l.stream, "line", string(line))
}

func (l *lineLogger) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.mu.last)
}
