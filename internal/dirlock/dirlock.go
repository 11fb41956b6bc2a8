// Package dirlock owns the lock file that keeps two processes off one data
// directory (the daemon's, the witness's): an exclusive flock(2) on a file
// in it, with the holder's pid written into the file so that the process
// refused can name it. The kernel drops the lock when the holder exits,
// however it exits, so a crash leaves nothing to clean up.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrLocked: another process holds the directory's lock.
var ErrLocked = errors.New("dirlock: held by another process")

// Lock creates dir if needed, takes an exclusive flock on dir/name without
// waiting, and writes our pid into the file; closing the returned file
// releases the lock. When another process holds it, the error wraps
// ErrLocked and holder is the pid that process wrote ("unknown" if none).
func Lock(dir, name string) (f *os.File, holder string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", fmt.Errorf("create data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, name)
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			// Not another holder (no lock support on this filesystem,
			// say): say what failed, not who holds it.
			return nil, "", fmt.Errorf("lock %s: %w", path, err)
		}
		b, _ := os.ReadFile(path)
		holder = strings.TrimSpace(string(b))
		if holder == "" {
			holder = "unknown"
		}
		return nil, holder, fmt.Errorf("%w: %s (pid %s): %w", ErrLocked, path, holder, err)
	}
	// The pid is only a hint for the message above: a failed write
	// leaves the lock held and the message saying "unknown".
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, "", nil
}
