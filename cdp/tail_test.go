package cdp

import (
	"bytes"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestTailDirectIO: on a real filesystem the tail writes segments with
// O_DIRECT. Records of every size read back while they are only in memory,
// after they were written, after the kept chunks were recycled, across
// rotations and syncs, and after reopening; a reopen after a sync that
// left zero padding is quiet and exact.
func TestTailDirectIO(t *testing.T) {
	for _, tc := range []struct {
		name      string
		direct    bool
		tailCache int64
	}{
		{"direct", true, 0},
		{"direct-no-cache", true, -1},
		{"buffered", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 7))
			dir := t.TempDir()
			var logs bytes.Buffer
			opts := Options{FS: vfs.Default, Dir: dir, SegmentSize: 4 << 20, DirectIO: tc.direct, TailCache: tc.tailCache,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))}
			j, err := Open(opts, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := j.mu.cur.dio != nil; got != tc.direct {
				t.Fatalf("direct descriptor open: %v, want %v", got, tc.direct)
			}
			type rec struct {
				loc  Location
				data []byte
			}
			var recs []rec
			check := func(r rec) {
				t.Helper()
				got := make([]byte, len(r.data))
				if err := j.ReadAt(r.loc.Segment, r.loc.DataOffset(4*len(r.data)/BlockSize), got); err != nil {
					t.Fatalf("read record at %+v: %v", r.loc, err)
				}
				if !bytes.Equal(got, r.data) {
					t.Fatalf("record at %+v reads back wrong", r.loc)
				}
			}
			for i := 0; i < 400; i++ {
				blocks := 1 + rng.IntN(4)
				if rng.IntN(10) == 0 {
					blocks = 1 + rng.IntN(300) // up to 1.2 MiB: spans chunks
				}
				data := make([]byte, blocks*BlockSize)
				for k := range data {
					data[k] = byte(rng.Uint32())
				}
				r := &Record{Kind: KindWrite, Volume: 1, Offset: uint64(i) * BlockSize, Length: uint64(len(data)), Data: data, Meta: BlockChecksums(data)}
				loc, err := j.Append(r)
				if err != nil {
					t.Fatal(err)
				}
				recs = append(recs, rec{loc, data})
				check(recs[len(recs)-1])
				if rng.IntN(8) == 0 {
					if err := j.Sync(); err != nil {
						t.Fatal(err)
					}
				}
				check(recs[rng.IntN(len(recs))])
			}
			if len(j.Segments()) < 3 {
				t.Fatalf("only %d segments: rotation not exercised", len(j.Segments()))
			}
			if err := j.Sync(); err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				check(r)
			}
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			n := 0
			j, err = Open(opts, 0, func(r *Record, loc Location) error {
				if loc != recs[n].loc || !bytes.Equal(r.Data, recs[n].data) {
					t.Fatalf("record %d differs after reopening", n)
				}
				n++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			if n != len(recs) {
				t.Fatalf("replayed %d records, want %d", n, len(recs))
			}
			// Recycled chunks hold old records; the padding after the last
			// record must still read as padding, not as a torn tail.
			if logs.Len() > 0 {
				t.Fatalf("reopening after a clean close logged:\n%s", logs.String())
			}
			for _, r := range recs {
				check(r)
			}
		})
	}
}

// TestTailConcurrentReads: readers copy recent records from the tail while
// appends fill, seal and recycle its chunks (run with -race).
func TestTailConcurrentReads(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Options{FS: vfs.Default, Dir: dir, SegmentSize: 8 << 20, DirectIO: true, TailCache: 2 << 20}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	type rec struct {
		loc  Location
		fill byte
	}
	var mu sync.Mutex
	var recs []rec
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			buf := make([]byte, BlockSize)
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				if len(recs) == 0 {
					mu.Unlock()
					continue
				}
				x := recs[len(recs)-1-rng.IntN(min(len(recs), 600))]
				mu.Unlock()
				if err := j.ReadAt(x.loc.Segment, x.loc.DataOffset(4), buf); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, bytes.Repeat([]byte{x.fill}, BlockSize)) {
					errs <- os.ErrInvalid
					return
				}
			}
		}(uint64(r))
	}
	for i := 0; i < 3000; i++ {
		fill := byte(i)
		loc, err := j.Append(writeRec(1, 0, fill, 1))
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		recs = append(recs, rec{loc, fill})
		mu.Unlock()
		if i%97 == 0 {
			if err := j.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent read: %v", err)
	}
}

// writeFailFile fails writes once armed (after the segment header).
type writeFailFS struct {
	vfs.FS
	armed *atomic.Bool
}

type writeFailFile struct {
	vfs.File
	armed *atomic.Bool
}

func (f writeFailFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.OpenReadWrite(name, c, o...)
	return writeFailFile{file, f.armed}, err
}

func (f writeFailFile) WriteAt(p []byte, off int64) (int, error) {
	if f.armed.Load() {
		return 0, errors.New("injected EIO")
	}
	return f.File.WriteAt(p, off)
}

// TestTailWriteFailureIsFatal: when the tail's writer cannot write, the
// records it held were never durable: Sync fails with ErrFailed, so do later
// appends, and the journal still closes (the writer stops, it does not spin).
func TestTailWriteFailureIsFatal(t *testing.T) {
	var armed atomic.Bool
	j, err := Open(Options{FS: writeFailFS{vfs.NewMem(), &armed}, Dir: "j", SegmentSize: 1 << 20}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(writeRec(1, 0, 1, 1)); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	if _, err := j.Append(writeRec(1, 0, 2, 1)); err != nil {
		t.Fatal(err) // in memory: the writer has not tried yet
	}
	if err := j.Sync(); !errors.Is(err, ErrFailed) {
		t.Fatalf("sync after a failed write: %v, want ErrFailed", err)
	}
	armed.Store(false) // the disk "recovers": the journal does not
	if _, err := j.Append(writeRec(1, 0, 3, 1)); !errors.Is(err, ErrFailed) {
		t.Fatalf("append after a failed write: %v, want ErrFailed", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- j.Close() }()
	select {
	case err := <-closed:
		if !errors.Is(err, ErrFailed) {
			t.Fatalf("close: %v, want ErrFailed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs after a failed write")
	}
}

// TestPinMemory: pinned tail memory keeps its bytes while appends fill,
// seal and recycle the tail's chunks many times over (a pinned chunk is
// dropped, not reused); released, the tail reuses chunks again. Memory the
// tail no longer holds is not pinned.
func TestPinMemory(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(Options{FS: vfs.Default, Dir: dir, SegmentSize: 8 << 20, DirectIO: true, TailCache: 2 << 20}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	first, err := j.Append(writeRec(1, 0, 0xa1, 64)) // 256 KiB of 0xa1
	if err != nil {
		t.Fatal(err)
	}
	bufs, pins, ok := j.PinMemory(first.Segment, first.DataOffset(4*64), 64*BlockSize, nil, nil)
	if !ok || len(bufs) == 0 || len(bufs) != len(pins) {
		t.Fatalf("pin a fresh record: ok %v, %d slices, %d pins", ok, len(bufs), len(pins))
	}
	for i := 0; i < 200; i++ { // 50 MiB: the 2 MiB tail turns over many times
		if _, err := j.Append(writeRec(1, 0, byte(i), 64)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	got := bytes.Join(bufs, nil)
	if !bytes.Equal(got, bytes.Repeat([]byte{0xa1}, 64*BlockSize)) {
		t.Fatal("pinned memory changed while the tail turned over")
	}
	if inChunkPool(bufs[0]) {
		t.Fatal("a pinned chunk's buffer is in the pool while a reader holds it")
	}
	for _, p := range pins {
		p.Release()
	}
	if !inChunkPool(bufs[0]) {
		t.Fatal("the last release of an orphaned chunk did not return its buffer to the pool")
	}
	if _, _, ok := j.PinMemory(first.Segment, first.DataOffset(4*64), 64*BlockSize, nil, nil); ok {
		t.Fatal("pinned a record the tail no longer holds")
	}
	last, err := j.Append(writeRec(1, 0, 0xb2, 4))
	if err != nil {
		t.Fatal(err)
	}
	bufs, pins, ok = j.PinMemory(last.Segment, last.DataOffset(4*4), 4*BlockSize, bufs[:0], pins[:0])
	if !ok || !bytes.Equal(bytes.Join(bufs, nil), bytes.Repeat([]byte{0xb2}, 4*BlockSize)) {
		t.Fatalf("pin the newest record: ok %v", ok)
	}
	for _, p := range pins {
		p.Release()
	}
}

// inChunkPool says whether the pool's free buffers hold the memory p
// starts in.
func inChunkPool(p []byte) bool {
	chunkMem.Lock()
	defer chunkMem.Unlock()
	a := uintptrOf(p)
	for _, b := range chunkMem.free {
		if base := uintptrOf(b); a >= base && a < base+chunkSize {
			return true
		}
	}
	return false
}

// TestTailMemoryReused: a closed journal hands its tail's buffers back to
// the process-wide pool, and the next journal takes them from there: pools
// opened one after another do not add up their tails.
func TestTailMemoryReused(t *testing.T) {
	fill := func() (allocated int) {
		j, err := Open(Options{FS: vfs.Default, Dir: t.TempDir(), SegmentSize: 8 << 20, DirectIO: true, TailCache: 4 << 20}, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 64; i++ { // 16 MiB through a 4 MiB tail
			if _, err := j.Append(writeRec(1, 0, byte(i), 64)); err != nil {
				t.Fatal(err)
			}
		}
		if err := j.Sync(); err != nil {
			t.Fatal(err)
		}
		j.t.Lock()
		allocated = j.t.allocated
		j.t.Unlock()
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		return allocated
	}
	fill()
	idle := func() (free, slabs, waits int) {
		chunkMem.Lock()
		defer chunkMem.Unlock()
		for chunkMem.mapping {
			chunkMem.ready.Wait()
		}
		return len(chunkMem.free), chunkMem.slabs, chunkMem.waits
	}
	before, slabs, waits := idle()
	allocated := fill()
	after, slabs2, waits2 := idle()
	if before < allocated {
		t.Fatalf("pool holds %d free buffers after a journal that used %d closed", before, allocated)
	}
	// The second journal took its buffers from the pool: nothing waited
	// for new memory, and at most the one slab mapped ahead was added.
	if allocated == 0 || waits2 != waits || slabs2 > slabs+1 || after != before+(slabs2-slabs)*slabChunks {
		t.Fatalf("second journal: %d chunks allocated; pool %d free before, %d after its close; slabs %d -> %d, waits %d -> %d",
			allocated, before, after, slabs, slabs2, waits, waits2)
	}
}

// TestChunkPoolMapsAhead: taking buffers until fewer than aheadChunks are
// free maps the next slab in the background, so a journal that keeps
// growing does not wait for new memory.
func TestChunkPoolMapsAhead(t *testing.T) {
	var taken [][]byte
	defer func() {
		for _, b := range taken {
			putChunkBuf(b)
		}
	}()
	// Take one so the pool has mapped memory (a fresh process has none),
	// and let any mapping it started finish.
	taken = append(taken, getChunkBuf())
	chunkMem.Lock()
	for chunkMem.mapping {
		chunkMem.ready.Wait()
	}
	free, slabs, waits := len(chunkMem.free), chunkMem.slabs, chunkMem.waits
	chunkMem.Unlock()
	if free <= aheadChunks {
		t.Fatalf("%d buffers free after a take, want more than %d (a slab mapped ahead)", free, aheadChunks)
	}
	// Drain the pool to aheadChunks, then take one more: that take starts
	// the mapping.
	for i := 0; i < free-aheadChunks+1; i++ {
		taken = append(taken, getChunkBuf())
	}
	chunkMem.Lock()
	for chunkMem.mapping {
		chunkMem.ready.Wait()
	}
	gotFree, gotSlabs, gotWaits := len(chunkMem.free), chunkMem.slabs, chunkMem.waits
	chunkMem.Unlock()
	if gotWaits != waits || gotSlabs != slabs+1 || gotFree < aheadChunks {
		t.Fatalf("after taking %d of %d free buffers: slabs %d -> %d, waits %d -> %d, %d free (want one slab mapped ahead, no wait)",
			len(taken), free, slabs, gotSlabs, waits, gotWaits, gotFree)
	}
	for i := range taken {
		if len(taken[i]) != chunkSize || uintptrOf(taken[i])%ioAlign != 0 {
			t.Fatalf("buffer %d: %d bytes at %#x", i, len(taken[i]), uintptrOf(taken[i]))
		}
	}
}

// TestPrefetchSkipsTail: read-ahead asks the OS only for the parts of a
// range the tail does not hold (it once read a stream's recent writes from
// the disk while serving them from memory).
func TestPrefetchSkipsTail(t *testing.T) {
	j, err := Open(Options{FS: vfs.Default, Dir: t.TempDir(), SegmentSize: 64 << 20, DirectIO: true, TailCache: 4 << 20}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var last Location
	for i := 0; i < 48; i++ { // 12 MiB through a 4 MiB tail
		if last, err = j.Append(writeRec(1, 0, byte(i), 64)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.segMu.RLock()
	s := j.segs[last.Segment]
	j.segMu.RUnlock()
	end := s.written.Load()
	got := j.notInTail(s, 0, end)
	if len(got) != 1 || got[0][0] != 0 {
		t.Fatalf("ranges not in the tail: %v, want one from 0", got)
	}
	held := end - got[0][1]
	if held < 3<<20 || held > 6<<20 {
		t.Fatalf("the tail holds %d bytes of the segment's end, want about its 4 MiB", held)
	}
	if r := j.notInTail(s, got[0][1], end); len(r) != 0 {
		t.Fatalf("ranges the tail holds reported as missing: %v", r)
	}
}

// TestNextWrite: one write covers the chunks that wait in a row in one
// segment file, each but the last written to its end, at most maxWrite of
// them; a segment's first chunk, a gap, or a chunk with nothing to write
// ends it. Chunks another writer writes, or with nothing to write, are
// skipped before the write starts and end it after.
func TestNextWrite(t *testing.T) {
	s1, s2 := &segment{id: 1}, &segment{id: 2}
	mk := func(s *segment, idx int64, flushed, want int) *chunk {
		return &chunk{seg: s, off: idx * chunkSize, flushed: flushed, want: want}
	}
	full := func(s *segment, idx int64) *chunk { return mk(s, idx, 0, chunkSize) }
	busy := func(c *chunk) *chunk { c.busy = true; return c }
	var many []*chunk
	for i := range int64(maxWrite + 3) {
		many = append(many, full(s1, i))
	}
	for _, tc := range []struct {
		name    string
		pending []*chunk
		want    int // pieces in the write
		first   int // index in pending of the first piece's chunk
	}{
		{"one partial", []*chunk{mk(s1, 0, 4096, 9000)}, 1, 0},
		{"rest of a chunk, then whole ones, then a partial", []*chunk{mk(s1, 0, 8192, chunkSize), full(s1, 1), mk(s1, 2, 0, 5000)}, 3, 0},
		{"a partial chunk ends the write", []*chunk{mk(s1, 0, 0, 5000), full(s1, 1)}, 1, 0},
		{"at most maxWrite", many, maxWrite, 0},
		{"the next segment starts its own write", []*chunk{full(s1, 0), mk(s2, 0, 512, chunkSize)}, 1, 0},
		{"a gap in the file", []*chunk{full(s1, 0), full(s1, 2)}, 1, 0},
		{"the next chunk has nothing to write yet", []*chunk{full(s1, 0), mk(s1, 1, 0, 0)}, 1, 0},
		{"nothing to write", []*chunk{mk(s1, 0, 4096, 4096)}, 0, 0},
		{"nothing to write in the first: the next starts the write", []*chunk{mk(s1, 0, 4096, 4096), full(s1, 1), full(s1, 2)}, 2, 1},
		{"a chunk being written is skipped", []*chunk{busy(full(s1, 0)), full(s1, 1), full(s1, 2)}, 2, 1},
		{"a chunk being written ends the write", []*chunk{full(s1, 0), busy(full(s1, 1)), full(s1, 2)}, 1, 0},
		{"every chunk being written", []*chunk{busy(full(s1, 0)), busy(mk(s1, 1, 0, 5000))}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := nextWrite(tc.pending, nil)
			if len(ps) != tc.want {
				t.Fatalf("%d pieces, want %d", len(ps), tc.want)
			}
			for i, p := range ps {
				if c := tc.pending[tc.first+i]; p.c != c || p.from != c.flushed || p.to != c.want {
					t.Errorf("piece %d: %+v, want chunk %d [%d, %d)", i, p, tc.first+i, c.flushed, c.want)
				}
			}
		})
	}
}

// TestWritePiecesDirect: chunks that follow each other go to an O_DIRECT
// file with one write, the first from the block its unwritten bytes start
// in, the last to the end of the block its bytes end in, and the file
// holds exactly their bytes there.
func TestWritePiecesDirect(t *testing.T) {
	path := t.TempDir() + "/seg"
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dio := openDirect(path)
	if dio == nil {
		t.Skip("the temp dir's filesystem has no O_DIRECT")
	}
	defer dio.Close()
	seg := &segment{id: 1, name: "seg", dio: dio}
	const base = 5 // file offset of the first chunk, in chunks
	var ps []piece
	for i := range 3 {
		c := &chunk{seg: seg, off: (base + int64(i)) * chunkSize, buf: getChunkBuf()} // aligned, as O_DIRECT needs
		for k := range c.buf {
			c.buf[k] = byte(i*31 + k%251)
		}
		ps = append(ps, piece{c: c, to: chunkSize})
	}
	ps[0].from = 3*ioAlign + 100 // written up to there before
	ps[2].to = 7*ioAlign + 1     // appended up to there
	j := &Journal{}
	if err := j.writePieces(ps, make([][]byte, 0, maxWrite)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start, end := int64(base*chunkSize+3*ioAlign), int64((base+2)*chunkSize+8*ioAlign)
	if int64(len(got)) != end {
		t.Fatalf("file is %d bytes, want %d", len(got), end)
	}
	if !bytes.Equal(got[:start], make([]byte, start)) {
		t.Errorf("bytes before the write are not zero")
	}
	for i, p := range ps {
		from, to := 0, chunkSize
		if i == 0 {
			from = 3 * ioAlign
		}
		if i == 2 {
			to = 8 * ioAlign
		}
		at := p.c.off + int64(from)
		if !bytes.Equal(got[at:at+int64(to-from)], p.c.buf[from:to]) {
			t.Errorf("chunk %d's bytes [%d, %d) differ in the file", i, from, to)
		}
	}
}

// TestAdvanceOutOfOrder: writes of the tail finish in any order; a
// segment's written mark covers only the bytes in its file without a gap,
// and a chunk leaves pending only once it and every chunk before it are
// all written.
func TestAdvanceOutOfOrder(t *testing.T) {
	s := &segment{id: 1}
	j := &Journal{}
	j.opts.TailCache = 8 * chunkSize
	j.t.index = map[chunkKey]*chunk{}
	var cs []*chunk
	for i := range int64(4) {
		c := &chunk{seg: s, off: i * chunkSize, want: chunkSize}
		cs = append(cs, c)
		j.t.pending = append(j.t.pending, c)
		j.t.index[chunkKey{s.id, i}] = c
	}
	cs[3].want = 5000 // the open chunk, asked for by a Sync
	step := func(name string, done func(), written int64, pending int) {
		t.Helper()
		done()
		j.advanceLocked()
		if w := s.written.Load(); w != written {
			t.Errorf("%s: written %d, want %d", name, w, written)
		}
		if len(j.t.pending) != pending {
			t.Errorf("%s: %d chunks pending, want %d", name, len(j.t.pending), pending)
		}
	}
	cs[0].busy = true
	step("chunks 1 and 3 written while 0 is being written", func() { cs[1].flushed = chunkSize; cs[3].flushed = 5000 }, 0, 4)
	step("chunk 0 half written, still busy", func() { cs[0].flushed = 4096 }, 4096, 4)
	step("chunk 0 written", func() { cs[0].busy = false; cs[0].flushed = chunkSize }, 2*chunkSize, 2)
	step("chunk 2 written", func() { cs[2].flushed = chunkSize }, 3*chunkSize+5000, 1)
	if len(j.t.recent) != 3 || j.t.recent[0] != cs[0] || j.t.recent[2] != cs[2] {
		t.Errorf("kept for reads: %v, want chunks 0-2 in order", j.t.recent)
	}
}

// TestBackgroundSync: appends that run syncAhead past the current
// segment's last fsync get it synced without any Sync call, and only then:
// a few records stay unsynced.
func TestBackgroundSync(t *testing.T) {
	j, err := Open(Options{FS: vfs.NewMem(), Dir: "j", SegmentSize: 4 * syncAhead}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	rec := writeRec(1, 0, 0xab, 256) // 1 MiB
	if _, err := j.Append(rec); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if st := j.Stats(); st.SyncedSeq != 0 || st.Fsyncs != 0 {
		t.Fatalf("1 MiB appended: synced to %d with %d fsyncs, want none", st.SyncedSeq, st.Fsyncs)
	}
	n := uint64(syncAhead>>20 + 1)
	for range n {
		if _, err := j.Append(rec); err != nil {
			t.Fatal(err)
		}
	}
	// Record syncAhead>>20 is the first to end past syncAhead.
	want := uint64(syncAhead >> 20)
	deadline := time.Now().Add(10 * time.Second)
	for j.Stats().SyncedSeq < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d MiB appended: synced to %d, want at least %d", n+1, j.Stats().SyncedSeq, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wrapFS hands out the files it opens read-write wrapped by wrap.
type wrapFS struct {
	vfs.FS
	wrap func(vfs.File) vfs.File
}

func (w wrapFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	file, err := w.FS.OpenReadWrite(name, c, o...)
	if err != nil {
		return nil, err
	}
	return w.wrap(file), nil
}

// gateSyncFile holds every SyncData until release is closed, telling
// started when one begins.
type gateSyncFile struct {
	vfs.File
	started, release chan struct{}
}

func (f gateSyncFile) SyncData() error {
	select {
	case f.started <- struct{}{}:
	default:
	}
	<-f.release
	return f.File.SyncData()
}

// TestBackgroundSyncOncePerSyncAhead: appends made while a background
// sync runs (their segment's synced mark not yet moved) do not queue
// another sync right behind it; the next comes syncAhead later.
func TestBackgroundSyncOncePerSyncAhead(t *testing.T) {
	started, release := make(chan struct{}, 1), make(chan struct{})
	fs := wrapFS{vfs.NewMem(), func(f vfs.File) vfs.File { return gateSyncFile{f, started, release} }}
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 4 * syncAhead}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	rec := writeRec(1, 0, 0xab, 256) // 1 MiB
	appendMiB := func(n int) {
		for range n {
			if _, err := j.Append(rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendMiB(syncAhead>>20 + 1)
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("no background sync started")
	}
	appendMiB(syncAhead >> 21) // half of syncAhead more, while it runs
	if n := len(j.bg.kick); n != 0 {
		t.Errorf("appends made while the background sync ran asked for %d more", n)
	}
	close(release)
	time.Sleep(200 * time.Millisecond) // a sync queued behind it would run now
	if st := j.Stats(); st.Fsyncs != 1 {
		t.Fatalf("%d MiB appended: %d fsyncs, want 1", syncAhead>>20+1+syncAhead>>21, st.Fsyncs)
	}
}
