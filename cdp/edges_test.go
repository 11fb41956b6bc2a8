package cdp

import (
	"errors"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestTornFirstRecordNotReadAgain: a crash can leave the newest segment
// with its first record torn and later ones on the disk (the tail's
// writers finish out of order). Recovery cuts all of them and reuses the
// segment; the records it cut carry the sequence numbers new appends
// take, so once new records end where an old one starts, a later
// recovery must not read on into the old ones. 1264 records of 4 KiB
// end on a 4 KiB boundary after the 64-byte header.
func TestTornFirstRecordNotReadAgain(t *testing.T) {
	fs := vfs.NewMem()
	opts := Options{FS: fs, Dir: "j", SegmentSize: 16 << 20}
	j, err := Open(opts, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1400 {
		if _, err := j.Append(writeRec(1, uint64(i)*BlockSize, 0xaa, 1)); err != nil {
			t.Fatal(err)
		}
	}
	j.close(false) // a crash: nothing synced
	segs := segmentsOf(t, fs)
	corrupt(t, fs, segs[0], 0, func(b []byte) []byte { clear(b[segmentHeaderSize:chunkSize]); return b })

	j, err = Open(opts, 0, func(*Record, Location) error { t.Fatal("replayed a record of a torn tail"); return nil })
	if err != nil {
		t.Fatal(err)
	}
	const k = 1264
	var end int64
	for i := range k {
		loc, err := j.Append(writeRec(1, uint64(i)*BlockSize, 0xbb, 1))
		if err != nil {
			t.Fatal(err)
		}
		end = loc.Offset + int64(writeRec(1, 0, 0, 1).EncodedSize())
	}
	if end%ioAlign != 0 {
		t.Fatalf("the new records end at %d, not on a %d-byte boundary: the test no longer lines them up", end, ioAlign)
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.close(false)

	var n, old int
	j, err = Open(opts, 0, func(r *Record, _ Location) error {
		n++
		if r.Data[0] == 0xaa {
			old++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	j.close(false)
	if n != k || old != 0 {
		t.Fatalf("replayed %d records, want %d; %d of them were cut as a torn tail before", n, k, old)
	}
}

// TestAppendDuringCloseRefused: an append made while Close waits for its
// final sync is refused; Close succeeds and the journal opens again with
// what was appended before.
func TestAppendDuringCloseRefused(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	mem := vfs.NewMem()
	fs := wrapFS{mem, func(f vfs.File) vfs.File { return gateSyncFile{f, started, release} }}
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(writeRec(1, 0, 1, 1)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- j.Close() }()
	<-started // Close's sync is in SyncData
	if _, err := j.Append(writeRec(1, 0, 2, 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("append while Close syncs: %v, want ErrClosed", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("close: %v", err)
	}
	got, err := collect(t, mem)
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	if len(got) != 1 || got[0].Data[0] != 1 {
		t.Fatalf("open after Close: %d records, want the 1 appended before it", len(got))
	}
}

// noSpaceFS fails creating files with ENOSPC while full is set.
type noSpaceFS struct {
	vfs.FS
	full *bool
}

func (f noSpaceFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	if *f.full {
		return nil, syscall.ENOSPC
	}
	return f.FS.Create(name, c)
}

// TestRotationNoSpaceKeepsSegment: a rotation whose new segment cannot be
// created (a full disk) refuses that append with ErrNoSpace and leaves
// the journal as it was: appends that fit the current segment go on, a
// later rotation succeeds, and every accepted record is there after a
// reopen.
func TestRotationNoSpaceKeepsSegment(t *testing.T) {
	full := false
	mem := vfs.NewMem()
	j, err := Open(Options{FS: noSpaceFS{mem, &full}, Dir: "j", SegmentSize: 1 << 20}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte // the fill byte of each accepted record
	add := func(fill byte, blocks int) error {
		_, err := j.Append(writeRec(1, 0, fill, blocks))
		if err == nil {
			want = append(want, fill)
		}
		return err
	}
	for i := range 3 { // 3 x 256 KiB
		if err := add(byte(i+1), 64); err != nil {
			t.Fatal(err)
		}
	}
	full = true
	if err := add(4, 64); !errors.Is(err, ErrNoSpace) { // needs the next segment
		t.Fatalf("append needing a new segment on a full disk: %v, want ErrNoSpace", err)
	}
	full = false
	for i := range 8 { // 8 x 4 KiB still fit
		if err := add(byte(5+i), 1); err != nil {
			t.Fatalf("small append %d after a refused rotation: %v (journal: %v)", i, err, j.Err())
		}
	}
	if err := add(13, 64); err != nil {
		t.Fatalf("append after the disk has room again: %v", err)
	}
	if n := len(segmentsOf(t, mem)); n != 2 {
		t.Errorf("%d segments, want 2", n)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := collect(t, mem)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("reopened: %d records, want %d", len(got), len(want))
	}
	for i, r := range got {
		if r.Data[0] != want[i] || r.Data[len(r.Data)-1] != want[i] {
			t.Fatalf("record %d holds %#x, want %#x", i, r.Data[0], want[i])
		}
	}
}
