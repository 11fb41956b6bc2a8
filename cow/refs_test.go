package cow

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ReadRefs serves the head from the journal's memory without a copy:
// written blocks as slices of the tail, unwritten ones as zeros; it
// declines (holding nothing) what the tail no longer has, points in time,
// unaligned ranges, and ranges in more pieces than maxRefPieces.
func TestReadRefs(t *testing.T) {
	fs := vfs.NewMem()
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, CheckpointInterval: -1, CacheSize: 4 << 20, TailCache: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v := mustVol(t, p, "vol", 64<<20)
	defer v.Close()
	if _, err := v.WriteAt(fill('a', 256<<10), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(fill('b', 8192), 512<<10); err != nil {
		t.Fatal(err)
	}
	want := mustRead(t, v, 0, 1<<20)
	bufs, release, ok, err := v.ReadRefs(0, 1<<20)
	if err != nil || !ok {
		t.Fatalf("ReadRefs of recent writes: ok %v, err %v", ok, err)
	}
	if got := bytes.Join(bufs, nil); !bytes.Equal(got, want) {
		t.Fatal("ReadRefs differs from ReadAt")
	}
	release()

	if _, _, ok, _ := v.ReadRefs(100, 4096); ok {
		t.Error("served an unaligned range")
	}
	if _, err := p.CreateSnapshot("vol", "s", ""); err != nil {
		t.Fatal(err)
	}
	pt, err := p.OpenVolumeAt("vol", "s")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := pt.ReadRefs(0, 4096); ok {
		t.Error("served a point in time")
	}
	pt.Close()
	// 100 scattered 4 KiB writes: more pieces than maxRefPieces.
	for i := int64(0); i < 100; i++ {
		if _, err := v.WriteAt(fill(byte(i), 4096), (2<<20)+i*8192); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, ok, _ := v.ReadRefs(2<<20, 800<<10); ok {
		t.Error("served a range of more than maxRefPieces pieces")
	}
	// The tail (2 MiB) turns over: the first writes are no longer in it.
	for i := int64(0); i < 8; i++ {
		if _, err := v.WriteAt(fill('z', 1<<20), (16<<20)+i<<20); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := v.ReadRefs(0, 256<<10); ok {
		t.Error("served writes the tail no longer holds")
	}
	mustRead(t, v, 48<<20, 1<<20)                      // the head map learns the range
	bufs, release, ok, err = v.ReadRefs(48<<20, 1<<20) // never written
	if err != nil || !ok || !bytes.Equal(bytes.Join(bufs, nil), make([]byte, 1<<20)) {
		t.Fatalf("unwritten range: ok %v, err %v", ok, err)
	}
	release()
}
