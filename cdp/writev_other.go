//go:build !linux

package cdp

import (
	"io"
	"syscall"
)

// pwritevAll writes bufs one after another at off of the file fd, with a
// pwrite each (pwritev is used on Linux only).
func pwritevAll(fd uintptr, bufs [][]byte, off int64) error {
	for _, b := range bufs {
		for len(b) > 0 {
			n, err := syscall.Pwrite(int(fd), b, off)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrShortWrite
			}
			b, off = b[n:], off+int64(n)
		}
	}
	return nil
}
