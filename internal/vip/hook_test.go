package vip

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the log handler and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger() (*slog.Logger, *syncBuffer) {
	var b syncBuffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

func TestRunHookEnvAndOutput(t *testing.T) {
	log, out := testLogger()
	t.Setenv("SVIP_INHERITED", "kept")
	env := map[string]string{"STRATA_VOLUME": "vol0", "STRATA_ROLE": "primary", "STRATA_EPOCH": "7"}
	cmd := `echo "$STRATA_VOLUME $STRATA_ROLE $STRATA_EPOCH $SVIP_INHERITED"; printf 'to stderr' >&2`
	if err := RunHook(context.Background(), cmd, env, 5*time.Second, log); err != nil {
		t.Fatalf("RunHook: %v", err)
	}
	logged := out.String()
	for _, want := range []string{
		`level=INFO msg="hook output"`, `stream=stdout line="vol0 primary 7 kept"`,
		`level=WARN msg="hook output"`, `stream=stderr line="to stderr"`, // no newline: flushed at exit
		`msg="hook done"`,
	} {
		if !strings.Contains(logged, want) {
			t.Errorf("log lacks %s:\n%s", want, logged)
		}
	}
}

func TestRunHookFailure(t *testing.T) {
	log, _ := testLogger()
	cmd := `echo step one >&2; echo "$STRATA_ROLE refused" >&2; exit 3`
	err := RunHook(context.Background(), cmd, map[string]string{"STRATA_ROLE": "primary"}, 5*time.Second, log)
	if !errors.Is(err, ErrHookFailed) || errors.Is(err, ErrHookTimeout) {
		t.Fatalf("RunHook: %v, want ErrHookFailed", err)
	}
	for _, want := range []string{"exit status 3", "step one", "primary refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	// Only the tail of a long stderr.
	err = RunHook(context.Background(), `for i in $(seq 1000); do echo "line $i" >&2; done; exit 1`, nil, 5*time.Second, log)
	if !errors.Is(err, ErrHookFailed) || !strings.Contains(err.Error(), "line 1000") || len(err.Error()) > stderrTail+200 {
		t.Errorf("long stderr: %d-byte error %q", len(err.Error()), err)
	}

	if err := RunHook(context.Background(), "true", map[string]string{"A=B": "x"}, time.Second, log); !errors.Is(err, ErrHookFailed) {
		t.Errorf("bad variable name: %v", err)
	}
}

func TestRunHookTimeout(t *testing.T) {
	log, _ := testLogger()
	start := time.Now()
	// The background sleep holds the output pipe: RunHook must kill the
	// whole group, not only sh, or it would wait for it.
	err := RunHook(context.Background(), `echo waiting >&2; sleep 30 & sleep 30`, nil, 300*time.Millisecond, log)
	elapsed := time.Since(start)
	if !errors.Is(err, ErrHookTimeout) || !strings.Contains(err.Error(), "waiting") {
		t.Fatalf("RunHook: %v, want ErrHookTimeout with the stderr tail", err)
	}
	if elapsed > hookWaitDelay {
		t.Errorf("RunHook returned after %v; the timeout was 300ms", elapsed)
	}

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	err = RunHook(ctx, "sleep 30", nil, time.Minute, log)
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrHookTimeout) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
}
