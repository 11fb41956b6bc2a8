package cow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cdp"
)

// ReadBlocksSums reads what ReadAt reads and gives each block's checksum:
// for blocks in the tail's memory, blocks read back from the journal file,
// unwritten, trimmed and zeroed blocks, and at a point in time; it refuses
// unaligned ranges and a sums buffer of the wrong size.
func TestReadBlocksSums(t *testing.T) {
	p, err := Open(Options{Dir: "data", FS: vfs.NewMem(), SegmentSize: 1 << 20, CheckpointInterval: -1, CacheSize: 4 << 20, TailCache: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v := mustVol(t, p, "vol", 64<<20)
	defer v.Close()
	for i := int64(0); i < 64; i++ { // 256 KiB, one block each
		if _, err := v.WriteAt(fill(byte(i+1), bs), i*bs); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Trim(8*bs, 4*bs); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteZeroes(20*bs, 2*bs, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateSnapshot("vol", "s", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(fill('x', 8*bs), 0); err != nil {
		t.Fatal(err)
	}
	check := func(h *Volume, what string, off, n int64) {
		t.Helper()
		want := mustRead(t, h, off, n)
		got := make([]byte, n)
		sums := make([]byte, 4*(n/bs))
		if err := h.ReadBlocksSums(got, off, sums); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: data differs from ReadAt", what)
		}
		for k := range n / bs {
			if s, w := binary.LittleEndian.Uint32(sums[4*k:]), cdp.Checksum(got[k*bs:(k+1)*bs]); s != w {
				t.Fatalf("%s: block %d: sum %08x, its data's %08x", what, off/bs+k, s, w)
			}
		}
	}
	check(v, "recent writes", 0, 128*bs) // past the written range too
	pt, err := p.OpenVolumeAt("vol", "s")
	if err != nil {
		t.Fatal(err)
	}
	check(pt, "point in time", 0, 64*bs)
	pt.Close()
	// The tail (2 MiB) turns over: the first writes are read from the file.
	for i := int64(0); i < 8; i++ {
		if _, err := v.WriteAt(fill('z', 1<<20), (16<<20)+i<<20); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := v.TryReadAt(make([]byte, bs), 40*bs); ok {
		t.Fatal("the first writes are still in memory: the test reads nothing from the file")
	}
	check(v, "from the journal file", 0, 64*bs)
	check(v, "large", 16<<20, 8<<20)

	for _, tc := range []struct {
		off, n, sums int64
	}{{100, bs, 4}, {0, 100, 4}, {0, 2 * bs, 4}, {0, bs, 8}} {
		if err := v.ReadBlocksSums(make([]byte, tc.n), tc.off, make([]byte, tc.sums)); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("ReadBlocksSums(%d bytes at %d, %d bytes of sums): %v, want ErrOutOfRange", tc.n, tc.off, tc.sums, err)
		}
	}
}
