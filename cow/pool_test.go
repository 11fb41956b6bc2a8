package cow

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
)

func openPool(t testing.TB, fs vfs.FS) *Pool {
	t.Helper()
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, IndexMemTableSize: 256 << 10, CheckpointInterval: -1, CacheSize: 1 << 20})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	return p
}

func mustVol(t testing.TB, p *Pool, name string, size int64) *Volume {
	t.Helper()
	if _, err := p.CreateVolume(name, size); err != nil {
		t.Fatal(err)
	}
	v, err := p.OpenVolume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func readAll(t testing.TB, v *Volume) []byte {
	t.Helper()
	b := make([]byte, v.Size())
	if _, err := v.ReadAt(b, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

func TestThinReadsZeros(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 1<<20)
	b := bytes.Repeat([]byte{0xff}, 3000)
	if _, err := v.ReadAt(b, 5000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, make([]byte, 3000)) {
		t.Fatal("unwritten range does not read as zeros")
	}
	if info, _ := p.VolumeInfo("a"); info.Written != 0 {
		t.Fatalf("written %d on a fresh volume", info.Written)
	}
	ext, err := v.BlockStatus(0, 1<<20)
	if err != nil || len(ext) != 1 || ext[0].Length != 1<<20 || ext[0].Flags != blockdev.ExtentHole|blockdev.ExtentZero {
		t.Fatalf("block status of a fresh volume: %+v %v", ext, err)
	}
}

func TestBounds(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 1<<20)
	for _, tc := range []struct{ off, n int64 }{{1 << 20, 1}, {-1, 1}, {(1 << 20) - 10, 11}, {1 << 62, 1 << 62}} {
		if _, err := v.ReadAt(make([]byte, tc.n%4096+1), tc.off); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("read %d@%d: want ErrOutOfRange, got %v", tc.n, tc.off, err)
		}
		if err := v.Trim(tc.off, tc.n); !errors.Is(err, blockdev.ErrOutOfRange) {
			t.Errorf("trim %d@%d: want ErrOutOfRange, got %v", tc.n, tc.off, err)
		}
	}
}

func TestNamesAndSizes(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	for _, bad := range []string{"", ".hidden", "a/b", "a b", "ü", string(make([]byte, 65)), "x\x00"} {
		if _, err := p.CreateVolume(bad, 1<<20); !errors.Is(err, ErrInvalidName) {
			t.Errorf("name %q: want ErrInvalidName, got %v", bad, err)
		}
	}
	for _, good := range []string{"a", "vol-0_1.x", "A9", string(bytes.Repeat([]byte{'z'}, 64))} {
		if _, err := p.CreateVolume(good, 1<<20); err != nil {
			t.Errorf("name %q: %v", good, err)
		}
	}
	if _, err := p.CreateVolume("a", 1<<20); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate: want ErrExists, got %v", err)
	}
	for _, size := range []int64{0, -4096, 1000, 1 << 61} {
		if _, err := p.CreateVolume("s", size); !errors.Is(err, ErrInvalidSize) {
			t.Errorf("size %d: want ErrInvalidSize, got %v", size, err)
		}
	}
}

func TestResizeAndDelete(t *testing.T) {
	fs := vfs.NewMem()
	p := openPool(t, fs)
	v := mustVol(t, p, "a", 1<<20)
	if _, err := v.WriteAt(bytes.Repeat([]byte{7}, 4096), 900<<10); err != nil {
		t.Fatal(err)
	}
	if err := p.ResizeVolume("a", 512<<10, false); !errors.Is(err, ErrShrinkData) {
		t.Fatalf("shrink over data: want ErrShrinkData, got %v", err)
	}
	if err := p.ResizeVolume("a", 900<<10, false); !errors.Is(err, ErrShrinkData) {
		t.Fatalf("shrink over data: want ErrShrinkData, got %v", err)
	}
	if err := p.ResizeVolume("a", 2<<20, false); err != nil {
		t.Fatal(err)
	}
	if v.Size() != 2<<20 {
		t.Fatalf("size %d after grow", v.Size())
	}
	if err := p.ResizeVolume("a", 512<<10, true); err != nil {
		t.Fatal(err)
	}
	if err := p.ResizeVolume("a", 1<<20, false); err != nil {
		t.Fatal(err)
	}
	// Forced shrink discarded the block: growing back shows zeros.
	if !bytes.Equal(readAll(t, v), make([]byte, 1<<20)) {
		t.Fatal("data past a forced shrink came back after growing")
	}
	if err := p.DeleteVolume("a", false); !errors.Is(err, ErrBusy) {
		t.Fatalf("delete while open: want ErrBusy, got %v", err)
	}
	v.Close()
	if err := p.DeleteVolume("a", false); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(make([]byte, 10), 0); !errors.Is(err, blockdev.ErrGone) {
		t.Fatalf("read of deleted volume: want ErrGone, got %v", err)
	}
	// A new volume with the old name starts empty.
	w := mustVol(t, p, "a", 1<<20)
	if !bytes.Equal(readAll(t, w), make([]byte, 1<<20)) {
		t.Fatal("a recreated volume shows the deleted volume's data")
	}
	p.Close()
	p = openPool(t, fs)
	defer p.Close()
	vols := p.Volumes()
	if len(vols) != 1 || vols[0].Size != 1<<20 || vols[0].Written != 0 {
		t.Fatalf("after reopen: %+v", vols)
	}
}

// model is the expected content of each volume.
type model map[string][]byte

// TestRandomOpsAgainstModel drives random writes, zeroes, trims, resizes,
// flushes and reopens and checks every volume against a byte model after
// each step. The seed is printed; set it in the source to replay.
func TestRandomOpsAgainstModel(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	fs := vfs.NewMem()
	p := openPool(t, fs)
	defer func() { p.Close() }()
	m := model{}
	handles := map[string]*Volume{}
	names := []string{"a", "b", "c"}
	for _, n := range names {
		size := int64(64+rng.IntN(64)) * 4096
		handles[n] = mustVol(t, p, n, size)
		m[n] = make([]byte, size)
	}
	for step := 0; step < 1500; step++ {
		n := names[rng.IntN(len(names))]
		v := handles[n]
		size := int64(len(m[n]))
		off := rng.Int64N(size)
		length := 1 + rng.Int64N(min(size-off, 40000))
		if rng.IntN(3) == 0 { // aligned, as most clients send
			off &^= 4095
			length = (length + 4095) &^ 4095
			length = min(length, size-off)
		}
		var op string
		switch r := rng.IntN(100); {
		case r < 55:
			op = "write"
			data := make([]byte, length)
			for i := range data {
				data[i] = byte(rng.IntN(256))
			}
			if _, err := v.WriteAt(data, off); err != nil {
				t.Fatalf("step %d write: %v", step, err)
			}
			copy(m[n][off:], data)
		case r < 65:
			op = "zero"
			if err := v.WriteZeroes(off, length, rng.IntN(2) == 0); err != nil {
				t.Fatalf("step %d zero: %v", step, err)
			}
			clear(m[n][off : off+length])
		case r < 75:
			op = "trim"
			if err := v.Trim(off, length); err != nil {
				t.Fatalf("step %d trim: %v", step, err)
			}
			first, end := (off+4095)&^4095, (off+length)&^4095
			if end > first {
				clear(m[n][first:end])
			}
		case r < 78:
			op = "resize"
			newSize := int64(32+rng.IntN(128)) * 4096
			if err := p.ResizeVolume(n, newSize, true); err != nil {
				t.Fatalf("step %d resize: %v", step, err)
			}
			nm := make([]byte, newSize)
			copy(nm, m[n])
			m[n] = nm
		case r < 83:
			op = "flush"
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
		case r < 85:
			op = "reopen"
			for _, h := range handles {
				h.Close()
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			p = openPool(t, fs)
			for _, nn := range names {
				h, err := p.OpenVolume(nn)
				if err != nil {
					t.Fatal(err)
				}
				handles[nn] = h
			}
		default:
			op = "read"
			b := make([]byte, length)
			if _, err := v.ReadAt(b, off); err != nil {
				t.Fatalf("step %d read: %v", step, err)
			}
			if !bytes.Equal(b, m[n][off:off+length]) {
				t.Fatalf("step %d (seed %d): read %d@%d of %s differs from model", step, seed, length, off, n)
			}
		}
		if step%50 == 0 || op == "reopen" || op == "resize" {
			checkModel(t, p, handles, m, fmt.Sprintf("step %d (%s, seed %d)", step, op, seed))
		}
	}
	checkModel(t, p, handles, m, "end")
}

func checkModel(t *testing.T, p *Pool, handles map[string]*Volume, m model, when string) {
	t.Helper()
	for n, want := range m {
		h := handles[n]
		if h.Size() != int64(len(want)) {
			t.Fatalf("%s: %s size %d, want %d", when, n, h.Size(), len(want))
		}
		got := readAll(t, h)
		if !bytes.Equal(got, want) {
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s: volume %s differs from model at byte %d (block %d)", when, n, i, i/4096)
				}
			}
		}
		// Written accounting matches the data blocks' count (once a
		// background recount, after a replay, is done), and block status
		// never calls a block with non-zero bytes a zero/hole.
		info, _ := p.VolumeInfo(n)
		for deadline := time.Now().Add(10 * time.Second); info.Recounting && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
			info, _ = p.VolumeInfo(n)
		}
		ext, err := h.BlockStatus(0, h.Size())
		if err != nil {
			t.Fatal(err)
		}
		var pos, data int64
		for _, e := range ext {
			if e.Flags == 0 {
				data += e.Length
			} else if !bytes.Equal(want[pos:pos+e.Length], make([]byte, e.Length)) {
				t.Fatalf("%s: %s block status says zero at %d+%d but data is there", when, n, pos, e.Length)
			}
			pos += e.Length
		}
		if pos != h.Size() {
			t.Fatalf("%s: block status covers %d of %d bytes", when, pos, h.Size())
		}
		if data != info.Written {
			t.Fatalf("%s: %s written %d but block status shows %d data bytes", when, n, info.Written, data)
		}
	}
}

// TestUnalignedConcurrentWrites: writes to different bytes of the same block
// from many goroutines never lose each other (read-modify-write is atomic).
func TestUnalignedConcurrentWrites(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 1<<20)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 64; i++ {
				// Goroutine g owns bytes [g*512, g*512+512) of blocks 0..63.
				if _, err := v.WriteAt(bytes.Repeat([]byte{byte(g + 1)}, 512), int64(i)*4096+int64(g)*512); err != nil {
					t.Error(err)
				}
			}
		}(g)
	}
	wg.Wait()
	b := make([]byte, 64*4096)
	v.ReadAt(b, 0)
	for i := range b {
		if want := byte((i%4096)/512 + 1); b[i] != want {
			t.Fatalf("byte %d is %d, want %d: a concurrent partial write was lost", i, b[i], want)
		}
	}
}

// TestCrashKeepsFlushedWrites: on a filesystem that drops everything not
// fsynced, every write completed before a Flush survives a crash, with the
// index and journal recovered together; writes after the flush are either
// whole or absent per block, never garbage.
func TestCrashKeepsFlushedWrites(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for round := 0; round < 8; round++ {
		fs := vfs.NewCrashableMem()
		p := openPool(t, fs)
		v := mustVol(t, p, "a", 256*4096)
		flushed := make([]byte, 256*4096)
		cur := make([]byte, 256*4096)
		// Each write fills whole blocks with one byte value, so after a
		// crash each block holds either a flushed or a later value.
		later := make([]map[byte]bool, 256)
		for i := range later {
			later[i] = map[byte]bool{}
		}
		steps := 100 + rng.IntN(300)
		for s := 0; s < steps; s++ {
			blk := rng.IntN(250)
			nb := 1 + rng.IntN(6)
			val := byte(1 + rng.IntN(255))
			if _, err := v.WriteAt(bytes.Repeat([]byte{val}, nb*4096), int64(blk)*4096); err != nil {
				t.Fatal(err)
			}
			for b := blk; b < blk+nb; b++ {
				later[b][val] = true
			}
			copy(cur[blk*4096:], bytes.Repeat([]byte{val}, nb*4096))
			if rng.IntN(8) == 0 {
				if err := v.Flush(); err != nil {
					t.Fatal(err)
				}
				copy(flushed, cur)
				for i := range later {
					later[i] = map[byte]bool{}
				}
			}
			if rng.IntN(40) == 0 {
				if err := p.Checkpoint(); err != nil {
					t.Fatal(err)
				}
			}
		}
		pct := rng.IntN(101)
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(seed, uint64(round)))})
		v.Close()
		p.Close()
		p2, err := Open(Options{Dir: "data", FS: crashed, SegmentSize: 1 << 20, CheckpointInterval: -1})
		if err != nil {
			t.Fatalf("round %d (kept %d%% unsynced): reopen after crash: %v", round, pct, err)
		}
		v2, err := p2.OpenVolume("a")
		if err != nil {
			t.Fatalf("round %d: volume lost: %v", round, err)
		}
		got := readAll(t, v2)
		for b := 0; b < 256; b++ {
			g := got[b*4096 : (b+1)*4096]
			if !bytes.Equal(g, bytes.Repeat([]byte{g[0]}, 4096)) {
				t.Fatalf("round %d: block %d is torn after crash", round, b)
			}
			if g[0] != flushed[b*4096] && !later[b][g[0]] {
				t.Fatalf("round %d (seed %d): block %d holds %d; flushed value was %d", round, seed, b, g[0], flushed[b*4096])
			}
		}
		v2.Close()
		p2.Close()
	}
}

func TestBlockStatusKinds(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 64*4096)
	v.WriteAt(bytes.Repeat([]byte{1}, 4*4096), 0)
	v.WriteZeroes(8*4096, 4*4096, true)
	v.WriteAt(bytes.Repeat([]byte{1}, 4*4096), 16*4096)
	v.Trim(16*4096, 2*4096)
	ext, err := v.BlockStatus(0, 64*4096)
	if err != nil {
		t.Fatal(err)
	}
	H, Z := blockdev.ExtentHole, blockdev.ExtentZero
	// Adjacent equal extents merge (the gap at 12..16 and the trim at 16..18).
	x := func(blocks int64, flags uint32) blockdev.Extent {
		return blockdev.Extent{Length: blocks * 4096, Flags: flags}
	}
	want := []blockdev.Extent{x(4, 0), x(4, H|Z), x(4, Z), x(6, H|Z), x(2, 0), x(44, H|Z)}
	if fmt.Sprint(ext) != fmt.Sprint(want) {
		t.Fatalf("block status\n got %v\nwant %v", ext, want)
	}
	// Unaligned start and length, across the data/hole boundary at 16 KiB.
	ext, _ = v.BlockStatus(4*4096-100, 4096)
	if len(ext) != 2 || ext[0].Length != 100 || ext[0].Flags != 0 || ext[1].Length != 4096-100 || ext[1].Flags != H|Z {
		t.Fatalf("unaligned block status: %v", ext)
	}
}

func TestChecksumMismatchIsEIO(t *testing.T) {
	fs := vfs.NewMem()
	// Reads must come from the file, not from the journal tail's memory.
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, CheckpointInterval: -1, CacheSize: 1 << 20, TailCache: -1})
	if err != nil {
		t.Fatal(err)
	}
	v := mustVol(t, p, "a", 4<<20)
	v.WriteAt(bytes.Repeat([]byte{9}, 4096), 0)
	// Later writes move the journal on, so the block's chunk leaves memory.
	v.WriteAt(bytes.Repeat([]byte{7}, 3<<20), 1<<20)
	v.Flush()
	// Corrupt the block's bytes in the journal behind the pool's back.
	var e entry
	visit(p.db, v.v.id, 0, 0, Head, func(_ uint64, x entry) bool { e = x; return false })
	f, err := fs.OpenReadWrite(p.j.Load().SegmentPath(e.seg), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0}, e.off+100)
	f.Close()
	if _, err := v.ReadAt(make([]byte, 4096), 0); !errors.Is(err, blockdev.ErrIO) {
		t.Fatalf("want ErrIO on a checksum mismatch, got %v", err)
	}
	v.ReadAt(make([]byte, 4096), 0)
	if n := p.Stats().ReadDamaged; n != 2 {
		t.Fatalf("stats count %d damaged reads, want 2", n)
	}
	p.Close()
}

var _ blockdev.Device = (*Volume)(nil)
var _ blockdev.Trimmer = (*Volume)(nil)
var _ blockdev.Zeroer = (*Volume)(nil)
var _ blockdev.BlockStatuser = (*Volume)(nil)

// Operations racing a delete or a close fail cleanly ("gone"): nothing for
// a deleted volume reaches the journal, and the pool reopens.
func TestRacesWithDeleteAndClose(t *testing.T) {
	fs := vfs.NewMem()
	p := openPool(t, fs)
	v := mustVol(t, p, "a", 1<<20)
	if err := p.DeleteVolume("a", true); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"trim":  v.Trim(0, 8192),
		"zero":  v.WriteZeroes(0, 8192, false),
		"write": func() error { _, err := v.WriteAt(make([]byte, 4096), 0); return err }(),
	} {
		if !errors.Is(err, blockdev.ErrGone) {
			t.Errorf("%s on a deleted volume: want ErrGone, got %v", name, err)
		}
	}
	w := mustVol(t, p, "b", 1<<20)
	p.Close()
	if _, err := w.ReadAt(make([]byte, 4096), 0); !errors.Is(err, blockdev.ErrGone) {
		t.Errorf("read after close: want ErrGone, got %v", err)
	}
	if _, err := w.BlockStatus(0, 4096); !errors.Is(err, blockdev.ErrGone) {
		t.Errorf("block status after close: want ErrGone, got %v", err)
	}
	if _, err := w.WriteAt(make([]byte, 4096), 0); !errors.Is(err, blockdev.ErrGone) {
		t.Errorf("write after close: want ErrGone, got %v", err)
	}
	p = openPool(t, fs)
	defer p.Close()
	if vols := p.Volumes(); len(vols) != 1 || vols[0].Name != "b" {
		t.Fatalf("after reopen: %+v", vols)
	}
}

// Small reads are served from the cache once read: a block corrupted in the
// journal behind the pool's back still reads from the checked copy. Large
// (streaming) reads leave the cache alone, and a stream of sequential reads
// makes read-ahead hint the journal ranges that hold what comes next.
func TestReadCacheAndReadAhead(t *testing.T) {
	fs := vfs.NewMem()
	// The journal keeps none of its recent writes in memory: reads go to
	// the file and the block cache.
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 16 << 20, CheckpointInterval: -1, CacheSize: 32 << 20, TailCache: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v := mustVol(t, p, "a", 16<<20)
	defer v.Close()
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i / 4096)
	}
	v.WriteAt(data, 0)
	// The journal's writer is done with the data: reads go to the file.
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	// Stream the first 256 KiB: read-ahead hints the next MiBs.
	chunk := make([]byte, 64<<10)
	for off := int64(0); off < 256<<10; off += int64(len(chunk)) {
		if _, err := v.ReadAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.prefetched.Load() < 2<<20 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := p.prefetched.Load(); n < 2<<20 {
		t.Fatalf("read-ahead hinted %d bytes after a stream, want the next MiBs", n)
	}
	// A large read does not fill the cache.
	p.cache.Wait()
	before := p.cache.Stats().Bytes
	big := make([]byte, 1<<20)
	if _, err := v.ReadAt(big, 2<<20); err != nil || !bytes.Equal(big, data[2<<20:3<<20]) {
		t.Fatalf("large read: %v", err)
	}
	p.cache.Wait()
	if after := p.cache.Stats().Bytes; after-before > 64<<10 {
		t.Fatalf("a 1 MiB read put %d bytes in the cache", after-before)
	}
	// A small read is cached; the journal is then corrupted under it.
	blk := make([]byte, 4096)
	if _, err := v.ReadAt(blk, 300*4096); err != nil {
		t.Fatal(err)
	}
	p.cache.Wait()
	var e entry
	visit(p.db, v.v.id, 300, 300, Head, func(_ uint64, x entry) bool { e = x; return false })
	f, _ := fs.OpenReadWrite(p.j.Load().SegmentPath(e.seg), vfs.WriteCategoryUnspecified)
	f.WriteAt([]byte{0xff}, e.off+7)
	f.Close()
	if _, err := v.ReadAt(blk, 300*4096); err != nil || blk[7] != byte(300%256) {
		t.Fatalf("cached block: %v, byte %d", err, blk[7])
	}
	if st := p.cache.Stats(); st.Hits == 0 {
		t.Fatalf("no cache hit: %+v", st)
	}
}

// A read that starts after a write completed sees that write or a newer one:
// the location cache never serves a superseded version, whatever the
// interleaving of readers and writers.
func TestReadsNeverGoBack(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 64*4096)
	defer v.Close()
	const blocks = 8
	var acked [blocks]atomic.Uint32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // writer: block b gets values 1, 2, 3, ...
		defer wg.Done()
		for i := uint32(1); i < 2000; i++ {
			b := int(i % blocks)
			if _, err := v.WriteAt(bytes.Repeat([]byte{byte(i / blocks % 250)}, 4096), int64(b)*4096); err != nil {
				t.Error(err)
				return
			}
			acked[b].Store(i / blocks % 250)
		}
		close(stop)
	}()
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				b := k % blocks
				min := byte(acked[b].Load())
				if _, err := v.ReadAt(buf, int64(b)*4096); err != nil {
					t.Error(err)
					return
				}
				if buf[0] < min {
					t.Errorf("block %d read %d after %d was acknowledged", b, buf[0], min)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A read-only volume opens read-only (writes refused) until set back, and
// the setting survives a reopen.
func TestReadOnlyVolume(t *testing.T) {
	fs := vfs.NewMem()
	p := openPool(t, fs)
	if _, err := p.CreateVolume("g", 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := p.SetReadOnly("g", true); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p = openPool(t, fs)
	defer p.Close()
	h, _ := p.OpenVolume("g")
	if _, err := h.WriteAt(make([]byte, 4096), 0); !errors.Is(err, blockdev.ErrReadOnly) || !h.ReadOnly() {
		t.Fatalf("write to a read-only volume: %v", err)
	}
	h.Close()
	// A read-only handle does not count as attached read-write.
	if _, err := p.Rollback("g", "seq:"+strconv.FormatUint(p.wmu.applied, 10), false); err != nil {
		t.Fatalf("rollback with only read-only handles: %v", err)
	}
	p.SetReadOnly("g", false)
	h, _ = p.OpenVolume("g")
	defer h.Close()
	if _, err := h.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// TestTryReadAt: a read served from memory only (blockdev.FastReader) gives
// the data ReadAt gives, and declines, touching nothing, what would need
// the index or a file.
func TestTryReadAt(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cache     int64
		tail      int64
		wantFirst bool // the first read, right after the write, is in memory
		disk      bool // a real file system: the page cache serves reads
	}{
		{"tail", 8 << 20, 0, true, false},
		{"no-memory", 0, -1, false, false},
		// Direct writes leave nothing in the page cache (unless the file
		// system has no O_DIRECT): the first read may go either way, but
		// once a read has been through the page cache, memory-only reads
		// find the data there, with no cache of our own.
		{"page-cache", 0, -1, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fs vfs.FS = vfs.NewMem()
			dir := "data"
			if tc.disk {
				fs, dir = vfs.Default, t.TempDir()
			}
			p, err := Open(Options{Dir: dir, FS: fs, SegmentSize: 4 << 20, CheckpointInterval: -1, CacheSize: tc.cache, TailCache: tc.tail})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			v := mustVol(t, p, "a", 64<<20)
			defer v.Close()
			want := bytes.Repeat([]byte{0x5a}, 16<<10)
			if _, err := v.WriteAt(want, 1<<20); err != nil {
				t.Fatal(err)
			}
			// Later writes fill more than a chunk: the first one's chunk
			// is written and, without a tail cache, leaves memory.
			if _, err := v.WriteAt(bytes.Repeat([]byte{1}, 3<<20), 8<<20); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(); err != nil { // the writer is done with them
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			ok, err := v.TryReadAt(got, 1<<20)
			if err != nil || (ok != tc.wantFirst && !tc.disk) {
				t.Fatalf("TryReadAt: %v, %v; want %v", ok, err, tc.wantFirst)
			}
			if ok && !bytes.Equal(got, want) {
				t.Fatal("TryReadAt returned wrong data")
			}
			if _, err := v.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("ReadAt: %v", err)
			}
			if tc.disk {
				clear(got)
				if ok, err := v.TryReadAt(got, 1<<20); err != nil || !ok || !bytes.Equal(got, want) {
					t.Fatalf("TryReadAt of data in the page cache: %v, %v", ok, err)
				}
			}
			// Unwritten blocks are known zeros once their page is loaded.
			if ok, _ := v.TryReadAt(got, 2<<20); ok {
				t.Fatal("TryReadAt before the blocks' page was loaded")
			}
			if _, err := v.ReadAt(got, 2<<20); err != nil {
				t.Fatal(err)
			}
			got[0] = 1
			if ok, err := v.TryReadAt(got, 2<<20); err != nil || !ok || !bytes.Equal(got, make([]byte, len(got))) {
				t.Fatalf("TryReadAt of unwritten blocks: %v, %v", ok, err)
			}
			// Any size (the frontend bounds it): 1 MiB holding the data
			// and unwritten blocks, once its pages are loaded.
			big := make([]byte, 1<<20)
			if _, err := v.ReadAt(big, 1<<20); err != nil {
				t.Fatal(err)
			}
			big2 := make([]byte, 1<<20)
			ok, err = v.TryReadAt(big2, 1<<20)
			if err != nil || ok != (tc.wantFirst || tc.disk) || (ok && !bytes.Equal(big, big2)) {
				t.Fatalf("1 MiB TryReadAt: %v, %v (same data: %v)", ok, err, bytes.Equal(big, big2))
			}
			// Unaligned or out of range: declined or refused.
			if ok, err := v.TryReadAt(got[:100], 1<<20); ok || err != nil {
				t.Fatalf("unaligned TryReadAt: %v, %v", ok, err)
			}
			if _, err := v.TryReadAt(got, 64<<20); !errors.Is(err, blockdev.ErrOutOfRange) {
				t.Fatalf("TryReadAt past the end: %v", err)
			}
		})
	}
}

// TestHeadMapUnderChurn: with a head map far smaller than the volume,
// pages are evicted and loaded all the time while a writer changes them;
// a read never returns a version older than one acknowledged before it
// started (a load that raced a commit must not be kept).
func TestHeadMapUnderChurn(t *testing.T) {
	// The smallest head map: 4 pages a shard, 256 pages of 64 blocks.
	p, err := Open(Options{Dir: "data", FS: vfs.NewMem(), SegmentSize: 4 << 20, IndexMemTableSize: 1 << 20, CheckpointInterval: -1, IndexCacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.head == nil {
		t.Fatal("no head map")
	}
	const pages = 4096
	v := mustVol(t, p, "a", pages*headPageBlocks*4096)
	defer v.Close()
	const hot = 64 // written blocks, each in its own page
	blockOf := func(i int) int64 { return int64(i) * 61 * headPageBlocks * 4096 }
	var acked [hot]atomic.Uint32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(stop)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 1; i < 3000; i++ {
			b := rng.IntN(hot)
			val := byte(i%250 + 1)
			if acked[b].Load() >= uint32(val) {
				continue // values only grow per block
			}
			var err error
			if i%7 == 0 {
				err = v.WriteZeroes(blockOf(b)+4096, 4096, i%2 == 0) // a neighbour: other entry kinds in the page
			}
			if err == nil {
				_, err = v.WriteAt(bytes.Repeat([]byte{val}, 4096), blockOf(b))
			}
			if err != nil {
				t.Error(err)
				return
			}
			acked[b].Store(uint32(val))
		}
	}()
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 9))
			buf := make([]byte, 4096)
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Load some other page (evicting), then read a hot block.
				if _, err := v.ReadAt(buf, int64(rng.IntN(pages*headPageBlocks))*4096); err != nil {
					t.Error(err)
					return
				}
				b := rng.IntN(hot)
				min := byte(acked[b].Load())
				if _, err := v.ReadAt(buf, blockOf(b)); err != nil {
					t.Error(err)
					return
				}
				if buf[0] < min {
					t.Errorf("block %d read %d after %d was acknowledged", b, buf[0], min)
					return
				}
			}
		}(uint64(r))
	}
	wg.Wait()
}

var _ blockdev.FastReader = (*Volume)(nil)

// TestDamagedBlockCostsOnlyItself (P8): one byte flipped in a flushed block
// in the middle of the journal, in the part recovery replays. The pool
// opens, that block reads as an I/O error at the head and at a snapshot
// that sees it, every other block reads back, and the damage is reported.
func TestDamagedBlockCostsOnlyItself(t *testing.T) {
	fs := vfs.NewCrashableMem()
	opts := Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, CheckpointInterval: -1, CacheSize: 1 << 20, TailCache: -1}
	p, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVol(t, p, "a", 1<<20)
	// Each write flushed: the records after the damaged one prove it was.
	for b := 0; b < 8; b++ {
		if _, err := v.WriteAt(bytes.Repeat([]byte{byte(b + 1)}, 4096), int64(b)*4096); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.CreateSnapshot("a", "s", ""); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	var e entry
	visit(p.db, v.v.id, 3, 3, Head, func(_ uint64, x entry) bool { e = x; return false })
	seg := p.j.Load().SegmentPath(e.seg)
	// The index was never persisted: recovery replays every record.
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	v.Close()
	p.Close()
	f, err := crashed.OpenReadWrite(seg, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xee}, e.off+100)
	f.Close()
	opts.FS = crashed
	p, err = Open(opts)
	if err != nil {
		t.Fatalf("one damaged block keeps the pool from opening: %v", err)
	}
	defer p.Close()
	if st := p.Stats(); st.Journal.DamagedBlocks != 1 {
		t.Fatalf("damage not reported: %+v", st.Journal)
	}
	for _, at := range []string{"", "s"} {
		name := "a@" + at
		h, err := p.OpenVolume("a")
		if at != "" {
			h.Close()
			h, err = p.OpenVolumeAt("a", at)
		}
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		for b := 0; b < 8; b++ {
			_, err := h.ReadAt(buf, int64(b)*4096)
			if b == 3 {
				if !errors.Is(err, blockdev.ErrIO) {
					t.Fatalf("%s: damaged block read: %v, want an I/O error", name, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{byte(b + 1)}, 4096)) {
				t.Fatalf("%s: block %d: %v", name, b, err)
			}
		}
		h.Close()
	}
	// Rewriting the block heals the head (the snapshot keeps the damage).
	h, _ := p.OpenVolume("a")
	defer h.Close()
	if _, err := h.WriteAt(bytes.Repeat([]byte{9}, 4096), 3*4096); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := h.ReadAt(buf, 3*4096); err != nil || buf[0] != 9 {
		t.Fatalf("rewritten block: %v", err)
	}
}

// Stats report the index's memory: head map pages appear as volumes are
// written and stay within the head map's share of IndexCacheSize.
func TestIndexMemoryStats(t *testing.T) {
	p, err := Open(Options{Dir: "data", FS: vfs.NewMem(), SegmentSize: 4 << 20, CheckpointInterval: -1, IndexCacheSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v := mustVol(t, p, "a", 256<<20)
	defer v.Close()
	if n := p.Stats().IndexMemory.HeadMapBytes; n != 0 {
		t.Fatalf("head map holds %d bytes before any write", n)
	}
	for off := int64(0); off < 256<<20; off += 64 << 10 {
		if _, err := v.WriteAt(make([]byte, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	im := p.Stats().IndexMemory
	t.Logf("%+v", im)
	if im.HeadMapBytes == 0 || im.HeadMapBytes > 4<<20 || im.MemTableBytes == 0 {
		t.Fatalf("index memory %+v: want head map pages within the 3 MiB share and a memtable", im)
	}
}
