package cdp

import (
	"context"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Verify finds a damaged data block (and which version it is) and a record
// whose framing is damaged, in a journal that is open and in use.
func TestVerify(t *testing.T) {
	fs := vfs.NewMem()
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20, TailCache: -1}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var locs []Location
	for i := 0; i < 4; i++ {
		loc, err := j.Append(writeRec(3, uint64(i)*2*BlockSize, byte(i+1), 2))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
	}
	// Fill the segment so that it rotates: its records are then read from
	// the file, where the damage is.
	for j.Segments()[0].Current {
		if _, err := j.Append(writeRec(4, 0, 9, 64)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenReadWrite(j.SegmentPath(locs[0].Segment), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	meta := int64(4 * 2)
	// Invert the bytes: writing a fixed value changed nothing when the
	// byte already held it (record 4's header carries the time).
	flip := func(off int64) {
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	flip(locs[1].DataOffset(int(meta)) + BlockSize + 7) // record 2, its second block
	flip(locs[3].Offset + 40)                           // record 4's header
	f.Close()

	var bad []BadBlock
	var badRec []BadRecord
	var paced int64
	st, err := j.Verify(context.Background(), func(n int64) error { paced += n; return nil },
		func(b BadBlock) { bad = append(bad, b) }, func(b BadRecord) { badRec = append(badRec, b) })
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) != 1 || bad[0].Seq != 2 || bad[0].Volume != 3 || bad[0].Block != 3 || bad[0].Version != 2 ||
		bad[0].Offset != locs[1].DataOffset(int(meta))+BlockSize || bad[0].Kind != "write" {
		t.Fatalf("damaged blocks: %+v", bad)
	}
	if len(badRec) != 1 || badRec[0].Offset != locs[3].Offset || badRec[0].Segment != locs[3].Segment {
		t.Fatalf("damaged records: %+v", badRec)
	}
	if st.Segments != 2 || paced != st.Bytes || st.Records < 4 {
		t.Fatalf("stats %+v, paced %d", st, paced)
	}
}
