package dirlock

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLock: a second lock on the same directory is refused and names the
// holder's pid; once the holder closes its file, the lock can be taken
// again. flock locks belong to an open file, so one process can play both
// holders.
func TestLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // Lock creates it
	f, _, err := Lock(dir, "x.lock")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "x.lock"))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q (%v), want our pid", b, err)
	}
	g, holder, err := Lock(dir, "x.lock")
	if !errors.Is(err, ErrLocked) || g != nil {
		t.Fatalf("second lock: %v, %v; want ErrLocked", g, err)
	}
	if holder != strconv.Itoa(os.Getpid()) {
		t.Fatalf("holder %q, want our pid", holder)
	}
	if _, _, err := Lock(dir, "other.lock"); err != nil {
		t.Fatalf("another lock file in the same directory: %v", err)
	}
	f.Close()
	f, _, err = Lock(dir, "x.lock")
	if err != nil {
		t.Fatalf("lock after the holder closed: %v", err)
	}
	f.Close()
}

// TestLockUnknownHolder: a holder that wrote no pid is named "unknown".
func TestLockUnknownHolder(t *testing.T) {
	dir := t.TempDir()
	f, _, err := Lock(dir, "x.lock")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, holder, err := Lock(dir, "x.lock"); !errors.Is(err, ErrLocked) || holder != "unknown" {
		t.Fatalf("got %q, %v; want unknown, ErrLocked", holder, err)
	}
}

// TestLockBadDir: a directory that cannot be made is an error of its own.
func TestLockBadDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Lock(filepath.Join(file, "sub"), "x.lock"); err == nil || errors.Is(err, ErrLocked) {
		t.Fatalf("got %v, want a create error", err)
	}
}
