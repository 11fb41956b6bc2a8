package cdp

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// TestClosedSegmentGivesBackRoom: the whole segment's room is reserved at
// its first append, and a segment that stops taking records before it is
// full (here a clean close) gives the room past its records back, so
// restarts do not each leave a segment's worth of allocated blocks.
func TestClosedSegmentGivesBackRoom(t *testing.T) {
	dir := t.TempDir()
	const seg = 64 << 20
	j, err := Open(Options{FS: vfs.Default, Dir: dir, SegmentSize: seg, DirectIO: true}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(writeRec(1, 0, 3, 256)); err != nil { // 1 MiB
		t.Fatal(err)
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	first := j.Segments()[0]
	path := filepath.Join(dir, segmentName(first.ID))
	allocated := func() int64 { return allocatedBytes(t, path) }
	if a := allocated(); a < seg/2 {
		t.Skipf("the filesystem under %s does not reserve room (%d bytes allocated)", dir, a)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if a := allocated(); a > 2<<20 {
		t.Fatalf("a closed segment holding 1 MiB of records keeps %d bytes allocated", a)
	}
	// The records are all there.
	n := 0
	j, err = Open(Options{FS: vfs.Default, Dir: dir, SegmentSize: seg}, 0, func(r *Record, _ Location) error { n++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if n != 1 {
		t.Fatalf("%d records replayed, want 1", n)
	}
}

// TestOpenGivesBackLeftRoom: a crash right after a rotation can leave the
// older segment's reserved room allocated (the ftruncate that gave it back
// was not durable yet); the next open gives it back, keeping the records.
func TestOpenGivesBackLeftRoom(t *testing.T) {
	dir := t.TempDir()
	const seg = 4 << 20
	j, err := Open(Options{FS: vfs.Default, Dir: dir, SegmentSize: seg, DirectIO: true}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 { // 5 MiB: the second segment starts
		if _, err := j.Append(writeRec(1, uint64(i)<<20, 3, 256)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	segs := j.Segments()
	if len(segs) < 2 {
		t.Fatalf("%d segments, want a rotation", len(segs))
	}
	if err := j.close(false); err != nil { // a crash: no clean-end mark
		t.Fatal(err)
	}
	// The crash lost the ftruncate: 32 MiB stay reserved past the end.
	path := filepath.Join(dir, segmentName(segs[0].ID))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, 32<<20)
	f.Close()
	if err != nil {
		t.Skipf("the filesystem under %s does not reserve room: %v", dir, err)
	}
	allocated := func() int64 { return allocatedBytes(t, path) }
	if a := allocated(); a < 32<<20 {
		t.Skipf("the filesystem under %s keeps no room past the end (%d bytes allocated)", dir, a)
	}
	n := 0
	j, err = Open(Options{FS: vfs.Default, Dir: dir, SegmentSize: seg}, 0, func(r *Record, _ Location) error { n++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if a := allocated(); a > seg+1<<20 {
		t.Fatalf("after open the older segment keeps %d bytes allocated, want its records (< %d)", a, seg+1<<20)
	}
	if n != 5 {
		t.Fatalf("%d records replayed, want 5", n)
	}
}

// allocatedBytes is how much of the disk the file at path holds.
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}
