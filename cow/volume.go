package cow

import (
	"errors"
	"fmt"
	"sync"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cdp"
)

const bs = cdp.BlockSize

// cacheMaxBlocks: reads up to this many blocks (64 KiB) use the read cache.
const cacheMaxBlocks = 16

// maxChunk bounds one write record: larger writes become several records.
const maxChunk = 8 << 20

// Volume is an open handle on a volume: a blockdev.Device (also Trimmer,
// Zeroer and BlockStatuser). It is safe for concurrent use. Close it when
// done; a volume with open handles refuses deletion unless forced.
type Volume struct {
	p         *Pool
	v         *volState
	seq       uint64 // Head, or the point in time this handle reads
	readOnly  bool
	fixedSize int64  // a point's size (0 for the head, whose size can change)
	point     *Point // the point this handle reads, if not the head
	closed    sync.Once
	ra        readAhead
}

// readAhead spots streaming reads on a handle and asks the OS to read the
// journal ranges that hold what comes next into its page cache (readahead
// hints, no copies): bounded to raMax bytes past the read, one at a time.
// Journal data written sequentially is laid out sequentially and the kernel
// reads it ahead on its own; this matters for data written randomly and
// read back as a stream, which is scattered over the journal.
type readAhead struct {
	mu       sync.Mutex
	next     int64 // where a sequential read would start
	streak   int   // sequential reads in a row
	ahead    int64 // hinted up to here
	inflight bool
}

const (
	raStreak = 2       // sequential reads before reading ahead
	raMax    = 4 << 20 // how far ahead
)

// noteRead records a read and, for a stream, starts read-ahead.
func (h *Volume) noteRead(off, n int64) {
	ra := &h.ra
	ra.mu.Lock()
	if off == ra.next {
		ra.streak++
	} else {
		ra.streak, ra.ahead = 0, 0
	}
	end := off + n
	ra.next = end
	if ra.streak < raStreak || ra.inflight || ra.ahead >= end+raMax/2 {
		ra.mu.Unlock()
		return
	}
	from := max(end, ra.ahead)
	to := min(end+raMax, h.Size())
	if to <= from {
		ra.mu.Unlock()
		return
	}
	ra.inflight, ra.ahead = true, to
	ra.mu.Unlock()
	go func() {
		defer func() {
			ra.mu.Lock()
			ra.inflight = false
			ra.mu.Unlock()
		}()
		h.p.readAhead(h.v, uint64(from)/bs, uint64(to-1)/bs, h.seq)
	}()
}

// readAhead hints the journal ranges holding blocks [first, last] of v.
func (p *Pool) readAhead(v *volState, first, last, seq uint64) {
	unlock, err := p.readLock()
	if err != nil {
		return
	}
	defer unlock()
	j := p.j.Load()
	var seg uint64
	var start, end int64
	flush := func() {
		if end > start {
			j.Prefetch(seg, start, end-start)
			p.prefetched.Add(end - start)
		}
	}
	add := func(_ uint64, e entry) bool {
		if e.kind != entryData {
			return true
		}
		if e.seg == seg && e.off == end {
			end += bs
			return true
		}
		flush()
		seg, start, end = e.seg, e.off, e.off+bs
		return true
	}
	_ = p.versions(v, first, last-first+1, seq, false, add) // errors are the real read's business
	flush()
}

// versions calls fn, in block order, for each block of [first, first+n)
// of v that has a version at seq (as resolve does): for the head from the
// head map (with memOnly only if its pages are present, else
// errNotInMemory), for a point in time from the index.
func (p *Pool) versions(v *volState, first, n, seq uint64, memOnly bool, fn func(b uint64, e entry) bool) error {
	if seq != Head || p.head == nil {
		if memOnly {
			return errNotInMemory
		}
		return p.resolve(p.db, v, first, first+n-1, seq, fn)
	}
	hp := entryPool.Get().(*[]entry)
	defer entryPool.Put(hp)
	if uint64(cap(*hp)) < n {
		*hp = make([]entry, n)
	}
	all := (*hp)[:n]
	if memOnly {
		if !p.head.copyRange(v.id, first, all) {
			return errNotInMemory
		}
	} else if err := p.headEntries(v, first, all); err != nil {
		return err
	}
	for i, e := range all {
		if e.kind != entryNone && !fn(first+uint64(i), e) {
			break
		}
	}
	return nil
}

// OpenVolume opens the head of a volume for reading and writing.
func (p *Pool) OpenVolume(name string) (*Volume, error) {
	v := p.lookup(name)
	if v == nil {
		return nil, notFound(name)
	}
	p.wmu.Lock()
	ro := v.meta.ReadOnly
	p.wmu.Unlock()
	v.handles.Add(1)
	if !ro {
		v.rwHandles.Add(1)
	}
	return &Volume{p: p, v: v, seq: Head, readOnly: ro}, nil
}

// Point is the point in time this handle reads (nil for the head).
func (h *Volume) Point() *Point { return h.point }

// Name is the export name: the volume's, with "@point" for a point.
func (h *Volume) Name() string {
	if h.point != nil {
		return h.v.name + "@" + h.point.Spec
	}
	return h.v.name
}

// ReadOnly reports whether writes are refused.
func (h *Volume) ReadOnly() bool { return h.readOnly }

// Close releases the handle.
func (h *Volume) Close() error {
	h.closed.Do(func() {
		h.v.handles.Add(-1)
		if h.point == nil && !h.readOnly {
			h.v.rwHandles.Add(-1)
		} else if h.point != nil {
			h.p.unpin(h.v.id, h.seq)
		}
	})
	return nil
}

// Size is the volume's size in bytes: the current one for the head (it can
// change), the size it had for a point.
func (h *Volume) Size() int64 {
	if h.point != nil {
		return h.fixedSize
	}
	return h.v.size.Load()
}

func (h *Volume) check(off, n int64) error {
	if h.v.gone.Load() {
		return fmt.Errorf("%w: volume %q was deleted", blockdev.ErrGone, h.v.name)
	}
	if size := h.Size(); off < 0 || n < 0 || off+n < off || off+n > size {
		return fmt.Errorf("%w: %d bytes at %d on volume %q of %d bytes", blockdev.ErrOutOfRange, n, off, h.v.name, size)
	}
	return nil
}

func (h *Volume) checkWrite(off, n int64) error {
	if h.readOnly {
		return fmt.Errorf("%w: %q", blockdev.ErrReadOnly, h.v.name)
	}
	return h.check(off, n)
}

var entryPool = sync.Pool{New: func() any { s := make([]entry, 0, 256); return &s }}

// readBlocks fills buf (whole blocks from block first on) with the volume's
// content at sequence seq.
//
// With memOnly it touches no file and no index: it returns errNotInMemory
// unless the head map, the journal's memory and the block cache hold all
// it needs.
// dataBlocks holds the written blocks of a range, as dataBlocks found
// them: block numbers and where their data is, in pooled slices that put
// returns.
type dataBlocks struct {
	esp    *[]entry
	bp     *[]uint64
	es     []entry
	blocks []uint64
}

// dataBlocks collects the blocks of [first, first+n) of v that hold data
// at seq. The error is errNotInMemory (memOnly, and a lookup would need the
// index) or wraps blockdev.ErrIO. Call put once done with them, also after
// an error.
func (p *Pool) dataBlocks(v *volState, first, n, seq uint64, memOnly bool) (dataBlocks, error) {
	d := dataBlocks{esp: entryPool.Get().(*[]entry), bp: blockPool.Get().(*[]uint64)}
	d.es, d.blocks = (*d.esp)[:0], (*d.bp)[:0]
	err := p.versions(v, first, n, seq, memOnly, func(b uint64, e entry) bool {
		if e.kind == entryData {
			d.es = append(d.es, e)
			d.blocks = append(d.blocks, b)
		}
		return true
	})
	if err != nil && !errors.Is(err, errNotInMemory) {
		err = fmt.Errorf("%w: %v", blockdev.ErrIO, err)
	}
	return d, err
}

func (d *dataBlocks) put() {
	*d.esp, *d.bp = d.es, d.blocks // keep what they grew to
	entryPool.Put(d.esp)
	blockPool.Put(d.bp)
}

func (p *Pool) readBlocks(v *volState, first uint64, buf []byte, seq uint64, memOnly bool, sums []byte) error {
	n := uint64(len(buf) / bs)
	d, err := p.dataBlocks(v, first, n, seq, memOnly)
	defer d.put()
	if err != nil {
		return err
	}
	es, blocks := d.es, d.blocks
	if sums != nil {
		// What the index says each block holds: a block read from the
		// journal's memory is not checked here, so whoever checks it
		// against these sums later checks it against the record.
		for k := range int(n) {
			cdp.SetBlockChecksum(sums, k, zeroBlockSum)
		}
		for i, b := range blocks {
			cdp.SetBlockChecksum(sums, int(b-first), es[i].crc)
		}
	}
	j := p.j.Load()
	// Zero what holds no data, take what the cache has, then read runs of
	// missing blocks that sit next to each other in one segment with one
	// read each, check them and cache them.
	// Only small reads use the read cache: streams would churn it for
	// nothing (the page cache holds them, and read-ahead warms it).
	useCache := p.cache != nil && n <= cacheMaxBlocks
	hit := hitPool.Get().(*[]bool)
	defer hitPool.Put(hit)
	if cap(*hit) < len(es) {
		*hit = make([]bool, len(es))
	}
	*hit = (*hit)[:len(es)]
	clear(*hit)
	next := first
	for i := range es {
		b := blocks[i]
		clear(buf[(next-first)*bs : (b-first)*bs])
		next = b + 1
	}
	clear(buf[(next-first)*bs:])
	// Runs of blocks that sit next to each other in one segment come from
	// the journal's memory of recent writes, else block by block from the
	// read cache, else with one read of the file per run of misses.
	for i := 0; i < len(es); {
		k := i + 1
		for k < len(es) && blocks[k] == blocks[k-1]+1 && es[k].seg == es[i].seg && es[k].off == es[k-1].off+bs {
			k++
		}
		if j.ReadMemory(es[i].seg, es[i].off, buf[(blocks[i]-first)*bs:(blocks[k-1]-first+1)*bs]) {
			p.recentHits.Add(uint64(k - i))
			i = k
			continue
		}
		if useCache {
			for m := i; m < k; m++ {
				(*hit)[m] = p.cache.Get(es[m].seg, es[m].off, buf[(blocks[m]-first)*bs:(blocks[m]-first+1)*bs])
			}
		}
		for m := i; m < k; {
			if (*hit)[m] {
				m++
				continue
			}
			e := m + 1
			for e < k && !(*hit)[e] {
				e++
			}
			if err := p.readJournal(v, es[m:e], blocks[m:e], buf[(blocks[m]-first)*bs:(blocks[e-1]-first+1)*bs], useCache, memOnly); err != nil {
				return err
			}
			m = e
		}
		i = k
	}
	return nil
}

// readJournal reads blocks that sit next to each other in one journal
// segment into dst with one read and checks each against its checksum.
// What the page cache held is read without waiting (memOnly: only that,
// else errNotInMemory) and not cached again; what came from the disk goes
// into the block cache (useCache), which so holds what the kernel did not.
func (p *Pool) readJournal(v *volState, es []entry, blocks []uint64, dst []byte, useCache, memOnly bool) error {
	j := p.j.Load()
	cached := (memOnly || useCache) && j.ReadCached(es[0].seg, es[0].off, dst)
	if !cached {
		if memOnly {
			return errNotInMemory
		}
		if err := j.ReadAt(es[0].seg, es[0].off, dst); err != nil {
			return fmt.Errorf("%w: %v", blockdev.ErrIO, err)
		}
	}
	for m := range es {
		blk := dst[m*bs : (m+1)*bs]
		if cdp.Checksum(blk) != es[m].crc {
			p.noteReadDamage(v, blocks[m], es[m])
			return fmt.Errorf("%w: checksum mismatch in volume %q block %d (journal segment %d offset %d)", blockdev.ErrIO, v.name, blocks[m], es[m].seg, es[m].off)
		}
		if useCache && !cached {
			p.cache.Put(es[m].seg, es[m].off, blk)
		}
	}
	return nil
}

var hitPool = sync.Pool{New: func() any { s := make([]bool, 0, 256); return &s }}

var blockPool = sync.Pool{New: func() any { s := make([]uint64, 0, 256); return &s }}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func getBuf(n int) *[]byte {
	bp := bufPool.Get().(*[]byte)
	if cap(*bp) < n {
		*bp = make([]byte, n)
	}
	*bp = (*bp)[:n]
	return bp
}

// ReadAt reads len(p) bytes at off.
func (h *Volume) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	unlock, err := h.p.readLock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	h.noteRead(off, int64(len(p)))
	first := uint64(off) / bs
	last := uint64(off+int64(len(p))-1) / bs
	if off%bs == 0 && len(p)%bs == 0 {
		if err := h.p.readBlocks(h.v, first, p, h.seq, false, nil); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	bp := getBuf(int(last-first+1) * bs)
	defer bufPool.Put(bp)
	if err := h.p.readBlocks(h.v, first, *bp, h.seq, false, nil); err != nil {
		return 0, err
	}
	copy(p, (*bp)[off-int64(first)*bs:])
	return len(p), nil
}

// ReadBlocksSums reads len(p) bytes at off, both multiples of the block
// size, as ReadAt does, and puts the CRC32C of each block (cdp.Checksum)
// in sums, laid out as a write record's checksum table: the checksum the
// block's journal record holds, not one computed from p. A block read from the
// disk was checked against it; one read from memory was not, so a copy
// that is checked against sums further on (a replication stream) is
// checked end to end.
func (h *Volume) ReadBlocksSums(p []byte, off int64, sums []byte) error {
	if off%bs != 0 || len(p)%bs != 0 || len(sums) != 4*(len(p)/bs) {
		return fmt.Errorf("%w: ReadBlocksSums of %d bytes at %d with %d bytes of sums", blockdev.ErrOutOfRange, len(p), off, len(sums))
	}
	if err := h.check(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	unlock, err := h.p.readLock()
	if err != nil {
		return err
	}
	defer unlock()
	h.noteRead(off, int64(len(p)))
	return h.p.readBlocks(h.v, uint64(off)/bs, p, h.seq, false, sums)
}

// zeroBlockSum is the checksum of a block of zeros: what an unwritten
// block reads as.
var zeroBlockSum = cdp.Checksum(make([]byte, bs))

// errNotInMemory: a memory-only read would need I/O.
var errNotInMemory = errors.New("cow: not in memory")

// TryReadAt reads len(p) bytes at off of the head if everything it needs
// is in memory (blockdev.FastReader): where the blocks are (head map) and
// their data (the journal's recent writes, the block cache). It never
// reads a file or the index, and reports false when it would have to.
func (h *Volume) TryReadAt(p []byte, off int64) (bool, error) {
	if h.seq != Head || off%bs != 0 || len(p)%bs != 0 || len(p) == 0 {
		return false, nil
	}
	if err := h.check(off, int64(len(p))); err != nil {
		return false, err
	}
	unlock, err := h.p.readLock()
	if err != nil {
		return false, err
	}
	defer unlock()
	switch err := h.p.readBlocks(h.v, uint64(off)/bs, p, Head, true, nil); {
	case errors.Is(err, errNotInMemory):
		return false, nil
	case err != nil:
		return false, err
	}
	h.noteRead(off, int64(len(p)))
	return true, nil
}

// zeroRun is what unwritten blocks of a ReadRefs read point into; nothing
// writes it.
var zeroRun = make([]byte, 1<<20)

// maxRefPieces bounds the slices one ReadRefs read uses: a range written
// in many small scattered pieces is cheaper to copy than to send as that
// many pieces.
const maxRefPieces = 64

// ReadRefs returns the n bytes at off of the head as read-only slices of
// memory, without a copy (blockdev.RefReader), if the journal's memory of
// recent writes holds every written block of the range: those slices,
// pinned until release is called, and shared zeros for unwritten blocks.
// It reports false, holding nothing, when it would need more (the block
// cache, the page cache, a file, the index), or more than maxRefPieces
// slices.
func (h *Volume) ReadRefs(off int64, n int) (bufs [][]byte, release func(), ok bool, err error) {
	if h.seq != Head || off%bs != 0 || n%bs != 0 || n == 0 {
		return nil, nil, false, nil
	}
	if err := h.check(off, int64(n)); err != nil {
		return nil, nil, false, err
	}
	unlock, err := h.p.readLock()
	if err != nil {
		return nil, nil, false, err
	}
	defer unlock()
	first, count := uint64(off)/bs, uint64(n)/bs
	d, err := h.p.dataBlocks(h.v, first, count, Head, true)
	defer d.put()
	switch {
	case errors.Is(err, errNotInMemory):
		return nil, nil, false, nil
	case err != nil:
		return nil, nil, false, err
	}
	es, blocks := d.es, d.blocks
	j := h.p.j.Load()
	var pins []cdp.TailPin
	zeros := func(from, to uint64) {
		for from < to {
			k := min(to-from, uint64(len(zeroRun))/bs)
			bufs = append(bufs, zeroRun[:k*bs:k*bs])
			from += k
		}
	}
	next := first
	for i := 0; i < len(es) && len(bufs) <= maxRefPieces; {
		k := i + 1
		for k < len(es) && blocks[k] == blocks[k-1]+1 && es[k].seg == es[i].seg && es[k].off == es[k-1].off+bs {
			k++
		}
		zeros(next, blocks[i])
		if bufs, pins, ok = j.PinMemory(es[i].seg, es[i].off, (k-i)*bs, bufs, pins); !ok {
			break
		}
		next, i = blocks[k-1]+1, k
	}
	release = func() {
		for _, p := range pins {
			p.Release()
		}
	}
	if !ok && len(es) > 0 || len(bufs) > maxRefPieces {
		release()
		return nil, nil, false, nil
	}
	zeros(next, first+count)
	h.noteRead(off, int64(n))
	return bufs, release, true, nil
}

// WriteAt writes p at off. Whole blocks go to the journal as they are;
// partial blocks at the edges are merged with their current content under
// the write lock, so concurrent writes to different bytes of one block never
// lose each other's data.
func (h *Volume) WriteAt(p []byte, off int64) (int, error) {
	n, _, err := h.WriteAtSeq(p, off)
	return n, err
}

// WriteAtSeq is WriteAt that also returns the sequence number of the
// write's last record: once the journal holds that point, it holds the
// write (a synchronous mirror waits for exactly that point).
func (h *Volume) WriteAtSeq(p []byte, off int64) (int, uint64, error) {
	if err := h.checkWrite(off, int64(len(p))); err != nil {
		return 0, 0, err
	}
	done := 0
	var seq uint64
	for done < len(p) {
		// Chunks end on block boundaries so only the first and last
		// chunk can have partial blocks.
		o := off + int64(done)
		n := len(p) - done
		if n > maxChunk {
			n = maxChunk - int(o%bs)
		}
		var err error
		if seq, err = h.writeChunk(p[done:done+n], o); err != nil {
			return done, seq, err
		}
		done += n
	}
	return len(p), seq, nil
}

func (h *Volume) writeChunk(p []byte, off int64) (uint64, error) {
	first := uint64(off) / bs
	last := uint64(off+int64(len(p))-1) / bs
	headPartial := off%bs != 0
	tailPartial := (off+int64(len(p)))%bs != 0
	if !headPartial && !tailPartial {
		return h.p.groupAppend(h.v, cdp.Record{Kind: cdp.KindWrite, Volume: h.v.id, Offset: first * bs, Length: uint64(len(p)), Data: p, Meta: cdp.BlockChecksums(p)})
	}
	bp := getBuf(int(last-first+1) * bs)
	defer bufPool.Put(bp)
	data := *bp
	copy(data[off-int64(first)*bs:], p)
	meta := make([]byte, 4*(last-first+1))
	// Blocks p covers whole are checksummed outside the lock.
	for b := first; b <= last; b++ {
		if (b == first && headPartial) || (b == last && tailPartial) {
			continue
		}
		i := b - first
		putCRC(meta, int(i), cdp.Checksum(data[i*bs:(i+1)*bs]))
	}
	p0 := h.p
	p0.wmu.Lock()
	defer p0.wmu.Unlock()
	if h.v.gone.Load() {
		return 0, fmt.Errorf("%w: volume %q was deleted", blockdev.ErrGone, h.v.name)
	}
	if err := h.mergeEdgesLocked(data, meta, off, len(p), first, last); err != nil {
		return 0, err
	}
	r := &cdp.Record{Kind: cdp.KindWrite, Volume: h.v.id, Offset: first * bs, Length: uint64(len(data)), Data: data, Meta: meta}
	err := p0.appendLocked(r)
	return r.Seq, err
}

func putCRC(meta []byte, i int, c uint32) {
	meta[4*i], meta[4*i+1], meta[4*i+2], meta[4*i+3] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
}

// mergeEdgesLocked fills the bytes of the edge blocks that the write does
// not cover with their current content, and checksums those blocks.
func (h *Volume) mergeEdgesLocked(data, meta []byte, off int64, n int, first, last uint64) error {
	var old [bs]byte
	start := int(off - int64(first)*bs) // write's start within data
	end := start + n
	edges := []uint64{first}
	if last != first {
		edges = append(edges, last)
	}
	for _, b := range edges {
		i := int(b - first)
		bstart, bend := i*bs, (i+1)*bs
		if start <= bstart && end >= bend {
			continue // covered whole
		}
		if err := h.p.readBlocks(h.v, b, old[:], Head, false, nil); err != nil {
			return err
		}
		blk := data[bstart:bend]
		if start > bstart {
			copy(blk[:start-bstart], old[:start-bstart])
		}
		if end < bend {
			from := max(end-bstart, 0)
			copy(blk[from:], old[from:])
		}
		putCRC(meta, i, cdp.Checksum(blk))
	}
	return nil
}

// Flush makes every completed write in the pool durable (all volumes, all
// connections: one journal).
func (h *Volume) Flush() error {
	if h.v.gone.Load() {
		return fmt.Errorf("%w: volume %q was deleted", blockdev.ErrGone, h.v.name)
	}
	return h.p.Flush()
}

// Trim discards the whole blocks inside [off, off+length): they become holes
// and use no space. Partial blocks at the edges keep their data (NBD allows
// a trim to do nothing; a WriteZeroes zeroes them).
func (h *Volume) Trim(off, length int64) error {
	if err := h.checkWrite(off, length); err != nil {
		return err
	}
	first := (off + bs - 1) / bs * bs
	end := (off + length) / bs * bs
	if end <= first {
		return nil
	}
	h.p.wmu.Lock()
	defer h.p.wmu.Unlock()
	return h.p.appendLocked(&cdp.Record{Kind: cdp.KindTrim, Volume: h.v.id, Offset: uint64(first), Length: uint64(end - first)})
}

// WriteZeroes makes [off, off+length) read as zeros: whole blocks become
// holes (or allocated zeros with noHole), partial edge blocks are written.
// It is always fast: no zeros travel or land in the journal for whole blocks.
func (h *Volume) WriteZeroes(off, length int64, noHole bool) error {
	if err := h.checkWrite(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	first := (off + bs - 1) / bs * bs
	end := (off + length) / bs * bs
	var zeros [bs]byte
	if end <= first {
		// Inside one block, or across one boundary without a whole block.
		_, err := h.WriteAt(make([]byte, length), off)
		return err
	}
	if off < first {
		if _, err := h.WriteAt(zeros[:first-off], off); err != nil {
			return err
		}
	}
	if off+length > end {
		if _, err := h.WriteAt(zeros[:off+length-end], end); err != nil {
			return err
		}
	}
	var flags uint8
	if noHole {
		flags = cdp.FlagNoHole
	}
	h.p.wmu.Lock()
	defer h.p.wmu.Unlock()
	if h.v.gone.Load() {
		return fmt.Errorf("%w: volume %q was deleted", blockdev.ErrGone, h.v.name)
	}
	return h.p.appendLocked(&cdp.Record{Kind: cdp.KindZero, Flags: flags, Volume: h.v.id, Offset: uint64(first), Length: uint64(end - first)})
}

// maxStatusExtents bounds one BlockStatus answer.
const maxStatusExtents = 4096

// BlockStatus reports which parts of [off, off+length) hold data.
func (h *Volume) BlockStatus(off, length int64) ([]blockdev.Extent, error) {
	if err := h.check(off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	unlock, err := h.p.readLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	first := uint64(off) / bs
	last := uint64(off+length-1) / bs
	var out []blockdev.Extent
	pos := off // start of the next extent to report
	add := func(upTo int64, flags uint32) {
		upTo = min(upTo, off+length)
		if upTo <= pos {
			return
		}
		if n := len(out); n > 0 && out[n-1].Flags == flags {
			out[n-1].Length += upTo - pos
		} else {
			out = append(out, blockdev.Extent{Length: upTo - pos, Flags: flags})
		}
		pos = upTo
	}
	err = h.p.resolve(h.p.db, h.v, first, last, h.seq, func(b uint64, e entry) bool {
		add(int64(b)*bs, blockdev.ExtentHole|blockdev.ExtentZero) // unwritten gap
		var flags uint32
		switch e.kind {
		case entryHole:
			flags = blockdev.ExtentHole | blockdev.ExtentZero
		case entryZero:
			flags = blockdev.ExtentZero
		}
		add(int64(b+1)*bs, flags)
		return len(out) < maxStatusExtents
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", blockdev.ErrIO, err)
	}
	if len(out) < maxStatusExtents {
		add(off+length, blockdev.ExtentHole|blockdev.ExtentZero)
	}
	return out, nil
}

// noteReadDamage counts a read that found block b of v failing its checksum
// and logs each such block once (at most 1024 of them).
func (p *Pool) noteReadDamage(v *volState, b uint64, e entry) {
	p.readDamage.Add(1)
	p.damageMu.Lock()
	defer p.damageMu.Unlock()
	k := [2]uint64{e.seg, uint64(e.off)}
	if p.damageLog[k] || len(p.damageLog) >= 1024 {
		return
	}
	if p.damageLog == nil {
		p.damageLog = map[[2]uint64]bool{}
	}
	p.damageLog[k] = true
	p.opts.Logger.Warn("damaged block: its checksum fails, reads of it get an I/O error until it is rewritten or restored",
		"volume", v.name, "offset", b*bs, "segment", e.seg, "segment_offset", e.off, "seq", e.seq)
}
