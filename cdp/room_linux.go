package cdp

import (
	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// releaseRoom gives back the room reserved past a segment file's end (by
// reserveLocked, allocated with the file size kept): a segment that stops
// taking records before it is full (a clean close, a restart after a
// crash) then holds no more than its records. It truncates the file to
// its own size, which on ext4 frees the blocks allocated past the end
// (punching a hole does not reach past it). Best effort: a filesystem that
// keeps them keeps them until the segment is removed.
func releaseRoom(f vfs.File) {
	fd := f.Fd()
	if fd == vfs.InvalidFd {
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(fd), &st); err != nil {
		return
	}
	if st.Blocks*512 <= (st.Size+ioAlign-1)&^(ioAlign-1) {
		// Nothing allocated past the end: spare the filesystem a
		// truncate (open does this for every segment).
		return
	}
	_ = unix.Ftruncate(int(fd), st.Size)
}
