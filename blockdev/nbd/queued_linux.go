package nbd

import "golang.org/x/sys/unix"

// queuedBytes is how many bytes the socket fd holds unread (0 when that
// cannot be told).
func queuedBytes(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}
