package cdp

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
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
	allocated := func() int64 {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Blocks * 512
	}
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
