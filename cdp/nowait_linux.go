package cdp

import "golang.org/x/sys/unix"

// preadNoWait reads at off of the file fd only as far as the page cache
// holds it (preadv2 with RWF_NOWAIT): it never waits for the disk, and
// fails with EAGAIN when it would.
func preadNoWait(fd uintptr, p []byte, off int64) (int, error) {
	return unix.Preadv2(int(fd), [][]byte{p}, off, unix.RWF_NOWAIT)
}
