package cdp

import (
	"errors"
	"io"

	"golang.org/x/sys/unix"
)

// pwritevAll writes bufs, one after another, at off of the file fd with as
// few pwritev(2) calls as it takes (one, unless the kernel writes short).
// bufs is consumed.
func pwritevAll(fd uintptr, bufs [][]byte, off int64) error {
	for len(bufs) > 0 {
		n, err := unix.Pwritev(int(fd), bufs, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		off += int64(n)
		for n > 0 {
			k := min(n, len(bufs[0]))
			bufs[0] = bufs[0][k:]
			n -= k
			if len(bufs[0]) == 0 {
				bufs = bufs[1:]
			}
		}
	}
	return nil
}
