package cdp

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The tail: appends copy records into in-memory chunks of the current
// segment, and one writer goroutine writes them to the file in large
// writes, with O_DIRECT where the filesystem allows it. NBD lets a write be
// volatile until a FLUSH, so an append need not reach the kernel before it
// returns; Sync asks the writer for everything appended so far, waits, and
// then fsyncs.
//
// Why: a store that keeps every write dirties pages the kernel never had
// (the journal only grows), and buffered writes of new pages cost page
// allocation, reclaim and dirty throttling that a server overwriting one
// cached file never pays. Direct writes from a few reused buffers skip the
// page cache and go at the disk's speed. Recently written data stays
// readable from memory: written chunks are kept (bounded by
// Options.TailCache), and ReadAt serves from them first.
//
// A chunk is a chunkSize-aligned window of a segment file. With O_DIRECT
// every write covers whole 4 KiB blocks: a Sync in the middle of a chunk
// writes up to the end of the block holding the last record (the rest of
// that block is zeros, or bytes of a record being appended, past every
// record the Sync covers), and the next write of the chunk starts again at
// that block. Recovery reads zero padding after the last record as the end
// of the log.

const (
	chunkSize = 1 << 20
	ioAlign   = 4096
	// maxPending is how many chunks may wait for the writers (appended,
	// not yet written): appends wait beyond. It lets every writer have a
	// write of maxWrite chunks in flight.
	maxPending = writers * maxWrite
	// maxWrite is how many chunks one write covers at most, when that
	// many wait in a row: a direct write of 8 MiB with one pwritev(2)
	// went at 2.2 GB/s where 1 MiB writes one at a time went at 1.76 GB/s
	// (fio --direct=1, 2026-12-03), and a writer no longer paid a wake-up
	// and a syscall per MiB.
	maxWrite = 8
	// writers is how many writes of the tail may be in flight at once,
	// each from its own goroutine: a disk takes more with more in flight
	// (direct 8 MiB writes on the AMD test machine, a noisy disk: 1.18-1.30
	// GB/s one at a time, 1.48-1.63 two at a time, 1.23-2.5 four at a
	// time; fio --direct=1 --ioengine=io_uring, 2026-12-04), and a single
	// writer had been in pwritev 95% of the time while 1 MiB writes
	// streamed in (docs/performance.md, Steps 14 and 15).
	writers = 4
)

// DefaultTailCache is the default memory of written journal chunks kept for
// reads of recent writes.
const DefaultTailCache = 32 << 20

type chunk struct {
	seg *segment
	off int64  // file offset of buf[0], a multiple of chunkSize
	buf []byte // chunkSize bytes of aligned memory
	// n is how many bytes of buf hold the segment's header and records.
	// Appends extend it under the journal's mu; readers load it to find
	// bytes of records whose Append has returned (they found them through
	// the index), which no append touches again.
	n atomic.Int64
	// Under t: bytes of buf in the file, and bytes the writers are asked
	// to write (chunkSize once the chunk is full).
	flushed, want int
	// busy, under t: a writer is writing the chunk. One write per chunk
	// at a time: a write after a Sync starts again at the block the last
	// one ended in.
	busy bool
	// pins counts readers that hold slices of buf (PinMemory): taken under
	// t's read lock, checked under its write lock before buf is reused
	// for other bytes; a pinned chunk leaving the tail is orphaned
	// (chunkmem.go) instead of recycled.
	pins atomic.Int32
	// orphaned: the tail let go of buf while it was pinned; the last
	// unpin returns it to the pool.
	orphaned atomic.Bool
}

type chunkKey struct {
	seg uint64
	idx int64 // file offset / chunkSize
}

func alignDown(v int) int { return v &^ (ioAlign - 1) }
func alignUp(v int) int   { return (v + ioAlign - 1) &^ (ioAlign - 1) }

// openDirect opens a second descriptor of a segment file for O_DIRECT
// writes. It returns nil when the filesystem does not support it (tmpfs on
// older kernels, some FUSE filesystems): the buffered descriptor is used.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// appendBytesLocked copies b to the end of the current segment's tail.
// j.mu is held.
func (j *Journal) appendBytesLocked(b []byte) error {
	for len(b) > 0 {
		c, err := j.openChunkLocked()
		if err != nil {
			return err
		}
		n := int(c.n.Load())
		k := copy(c.buf[n:], b)
		c.n.Store(int64(n + k))
		j.mu.tailPos += int64(k)
		b = b[k:]
		if n+k == chunkSize {
			j.t.Lock()
			c.want = chunkSize
			j.t.cond.Broadcast()
			j.t.Unlock()
		}
	}
	return nil
}

// openChunkLocked returns the chunk appends go to, starting one if needed
// (waiting while maxPending chunks wait for the writer). j.mu is held.
func (j *Journal) openChunkLocked() (*chunk, error) {
	if c := j.mu.open; c != nil && c.n.Load() < chunkSize {
		return c, nil
	}
	j.t.Lock()
	defer j.t.Unlock()
	for len(j.t.pending) >= maxPending && j.t.err == nil {
		j.t.cond.Wait()
	}
	if j.t.err != nil {
		return nil, j.t.err
	}
	cur := j.mu.cur
	c := j.freeChunkLocked()
	c.seg = cur
	c.off = j.mu.tailPos &^ (chunkSize - 1)
	pre := int(j.mu.tailPos - c.off)
	if pre > 0 {
		// Only a segment's first chunk starts with bytes already in the
		// file: the header, written and synced when the segment started.
		if c.off != 0 || pre != len(j.mu.header) {
			return nil, fmt.Errorf("cdp: internal error: tail starts at %d of segment %s", j.mu.tailPos, cur.name)
		}
		copy(c.buf, j.mu.header)
	}
	c.n.Store(int64(pre))
	c.flushed, c.want = pre, pre
	j.t.pending = append(j.t.pending, c)
	j.t.index[chunkKey{cur.id, c.off / chunkSize}] = c
	j.mu.open = c
	return c, nil
}

// freeChunkLocked takes a buffer: a free one, a new one while the budget
// allows, else the oldest kept one. Its old bytes stay: each append zeros
// the rest of the block it ends in (padLocked). t is held.
func (j *Journal) freeChunkLocked() *chunk {
	var c *chunk
	if n := len(j.t.free); n > 0 {
		c = j.t.free[n-1]
		j.t.free[n-1] = nil
		j.t.free = j.t.free[:n-1]
	} else if len(j.t.recent) > 0 && int64(j.t.allocated+1)*chunkSize > j.opts.TailCache+maxPending*chunkSize {
		c = j.t.recent[0]
		j.t.recent[0] = nil
		j.t.recent = j.t.recent[1:]
		delete(j.t.index, chunkKey{c.seg.id, c.off / chunkSize})
		if c.pins.Load() > 0 {
			// Readers still send its bytes: a new buffer takes its place.
			c.orphan()
			return &chunk{buf: getChunkBuf()}
		}
	} else {
		j.t.allocated++
		return &chunk{buf: getChunkBuf()}
	}
	c.seg = nil
	return c
}

// padLocked zeros the rest of the block the last append ended in: a direct
// write covers whole blocks, and what follows the last record in the file
// must read as padding, not as an old record. j.mu is held.
func (j *Journal) padLocked() {
	if c := j.mu.open; c != nil {
		n := int(c.n.Load())
		clear(c.buf[n:alignUp(n)])
	}
}

// requestWriteLocked asks the writer to write everything appended to the
// open chunk (Sync and rotation). j.mu is held.
func (j *Journal) requestWriteLocked() {
	c := j.mu.open
	if c == nil {
		return
	}
	j.t.Lock()
	if n := int(c.n.Load()); n > c.want {
		c.want = n
		j.t.cond.Broadcast()
	}
	j.t.Unlock()
}

// piece is bytes [from, to) of a chunk, for one write.
type piece struct {
	c        *chunk
	from, to int
}

// writer writes what chunks ask for until the journal closes: each of
// the writers goroutines takes the oldest chunks no other one is writing,
// those waiting in a row in one segment (up to maxWrite) with one write.
// Writes finish in any order; a segment's written mark moves over the
// bytes in its file without a gap (advanceLocked). The last writer to stop
// closes t.done.
func (j *Journal) writer() {
	j.t.Lock()
	defer j.t.Unlock()
	defer func() {
		j.t.running--
		if j.t.running == 0 {
			close(j.t.done)
		}
	}()
	ps := make([]piece, 0, maxWrite)
	bufs := make([][]byte, 0, maxWrite)
	for {
		// After a failure nothing more is written: the writers only wait
		// for the journal to close.
		for {
			if j.t.err == nil {
				ps = nextWrite(j.t.pending, ps[:0])
			}
			if len(ps) > 0 || j.t.stop {
				break
			}
			j.t.cond.Wait()
		}
		if len(ps) == 0 {
			return // stopping, and nothing (more) to write
		}
		for _, p := range ps {
			p.c.busy = true
		}
		j.t.Unlock()
		err := j.writePieces(ps, bufs)
		j.t.Lock()
		for _, p := range ps {
			p.c.busy = false
			if err == nil {
				p.c.flushed = p.to
			}
		}
		clear(ps)
		ps = ps[:0]
		if err != nil {
			if j.t.err == nil {
				j.t.err = j.fail(err)
			}
		} else {
			j.advanceLocked()
		}
		j.t.cond.Broadcast()
	}
}

// advanceLocked retires the chunks at the head of pending that are all
// written and moves their segment's written mark to the end of the bytes
// in the file without a gap. Every pending chunk is of the current
// segment: a rotation waits for all of the last one. t is held.
func (j *Journal) advanceLocked() {
	for len(j.t.pending) > 0 {
		c := j.t.pending[0]
		if c.busy || c.flushed < chunkSize {
			// Every chunk before c is written, and c up to flushed.
			c.seg.written.Store(max(c.seg.written.Load(), c.off+int64(c.flushed)))
			return
		}
		c.seg.written.Store(max(c.seg.written.Load(), c.off+chunkSize))
		j.retireLocked(c)
	}
}

// nextWrite appends to ps what the next write covers: the unwritten bytes
// of the oldest pending chunk that asks for a write and that no writer
// writes, and, while each is a whole chunk's rest, those of the chunks
// that follow it in the same segment file, up to maxWrite chunks. t is
// held.
func nextWrite(pending []*chunk, ps []piece) []piece {
	for _, c := range pending {
		if len(ps) == maxWrite {
			break
		}
		if c.busy || c.want <= c.flushed {
			if len(ps) > 0 {
				break
			}
			continue
		}
		if n := len(ps); n > 0 {
			// A segment's first chunk (its header written already)
			// starts a write of its own.
			if prev := ps[n-1]; prev.to != chunkSize || c.seg != prev.c.seg || c.off != prev.c.off+chunkSize || c.flushed != 0 {
				break
			}
		}
		ps = append(ps, piece{c: c, from: c.flushed, to: c.want})
	}
	return ps
}

// writePieces writes ps, pieces of chunks that follow each other in one
// segment file (every one but the last a whole chunk's rest), with one
// write where the file is opened with O_DIRECT; bufs is scratch space.
func (j *Journal) writePieces(ps []piece, bufs [][]byte) error {
	s := ps[0].c.seg
	if s.dio == nil || len(ps) == 1 {
		for _, p := range ps {
			if err := j.writeChunk(p.c, p.from, p.to); err != nil {
				return err
			}
		}
		return nil
	}
	bufs = bufs[:0]
	for i, p := range ps {
		from, to := p.from, p.to
		if i == 0 {
			from = alignDown(from)
		}
		if i == len(ps)-1 {
			to = alignUp(to)
		}
		bufs = append(bufs, p.c.buf[from:to])
	}
	off := ps[0].c.off + int64(alignDown(ps[0].from))
	// Through the descriptor's RawConn, which keeps it open for the call,
	// as WriteAt would.
	rc, err := s.dio.SyscallConn()
	if err == nil {
		cerr := rc.Write(func(fd uintptr) bool {
			err = pwritevAll(fd, bufs, off)
			return true
		})
		if err == nil {
			err = cerr
		}
	}
	clear(bufs[:cap(bufs)])
	if err != nil {
		return fmt.Errorf("write segment %s at %d (%d chunks): %w", s.name, off, len(ps), err)
	}
	return nil
}

// retireLocked moves the first pending chunk, all written, to the kept
// ones (or frees it). t is held.
func (j *Journal) retireLocked(c *chunk) {
	copy(j.t.pending, j.t.pending[1:])
	j.t.pending[len(j.t.pending)-1] = nil
	j.t.pending = j.t.pending[:len(j.t.pending)-1]
	j.t.recent = append(j.t.recent, c)
	for len(j.t.recent) > 0 && int64(len(j.t.recent))*chunkSize > j.opts.TailCache {
		old := j.t.recent[0]
		j.t.recent[0] = nil
		j.t.recent = j.t.recent[1:]
		delete(j.t.index, chunkKey{old.seg.id, old.off / chunkSize})
		if old.pins.Load() > 0 {
			j.t.allocated-- // its readers hand it back
			old.orphan()
			continue
		}
		j.t.free = append(j.t.free, old)
	}
}

// retireSegmentLocked retires s's last chunk once all of s is written
// (the segment is rotated out). j.mu and t are held.
func (j *Journal) retireSegmentLocked(s *segment) {
	for len(j.t.pending) > 0 && j.t.pending[0].seg == s && j.t.pending[0].flushed == int(j.t.pending[0].n.Load()) {
		j.retireLocked(j.t.pending[0])
	}
	if j.mu.open != nil && j.mu.open.seg == s {
		j.mu.open = nil
	}
}

// writeChunk writes bytes [from, to) of c to its segment file.
func (j *Journal) writeChunk(c *chunk, from, to int) error {
	s := c.seg
	if s.dio != nil {
		from, to = alignDown(from), alignUp(to)
		if _, err := s.dio.WriteAt(c.buf[from:to], c.off+int64(from)); err != nil {
			return fmt.Errorf("write segment %s at %d: %w", s.name, c.off+int64(from), err)
		}
		return nil
	}
	if _, err := s.f.WriteAt(c.buf[from:to], c.off+int64(from)); err != nil {
		return fmt.Errorf("write segment %s at %d: %w", s.name, c.off+int64(from), err)
	}
	return nil
}

// waitWritten waits until s's records up to end are in its file.
func (j *Journal) waitWritten(s *segment, end int64) error {
	if s.written.Load() >= end {
		return nil
	}
	j.t.Lock()
	defer j.t.Unlock()
	for s.written.Load() < end && j.t.err == nil {
		j.t.cond.Wait()
	}
	return j.t.err
}

// readTail copies into p what the tail holds of segment s from off on, as
// far as it goes without a gap, and returns how many bytes it copied.
func (j *Journal) readTail(s *segment, off int64, p []byte) int {
	end := off + int64(len(p))
	j.t.RLock()
	defer j.t.RUnlock()
	pos := off
	for pos < end {
		c := j.t.index[chunkKey{s.id, pos / chunkSize}]
		if c == nil {
			break
		}
		n := c.off + c.n.Load()
		if pos >= n {
			break
		}
		pos += int64(copy(p[pos-off:], c.buf[pos-c.off:min(n, end)-c.off]))
	}
	return int(pos - off)
}

// TailPin keeps the tail memory PinMemory returned from being reused.
type TailPin struct{ c *chunk }

// Release lets the pinned memory be reused; its slices must not be used
// afterwards.
func (p TailPin) Release() { p.c.unpin() }

// PinMemory appends to bufs slices of the journal's memory holding the
// n bytes at offset off of segment seg, and to pins what keeps them
// unchanged until released, if the tail holds all of them (recent writes);
// else it appends nothing and reports false. The slices are read-only.
// It serves reads without a copy: a frontend sends the slices, then
// releases the pins.
func (j *Journal) PinMemory(seg uint64, off int64, n int, bufs [][]byte, pins []TailPin) ([][]byte, []TailPin, bool) {
	j.segMu.RLock()
	s := j.segs[seg]
	j.segMu.RUnlock()
	if s == nil {
		return bufs, pins, false
	}
	end := off + int64(n)
	j.t.RLock()
	defer j.t.RUnlock()
	nb, np := len(bufs), len(pins)
	for pos := off; pos < end; {
		c := j.t.index[chunkKey{s.id, pos / chunkSize}]
		if c == nil || pos >= c.off+c.n.Load() {
			for _, p := range pins[np:] {
				p.Release()
			}
			clear(bufs[nb:])
			return bufs[:nb], pins[:np], false
		}
		to := min(c.off+c.n.Load(), end)
		c.pins.Add(1)
		pins = append(pins, TailPin{c})
		bufs = append(bufs, c.buf[pos-c.off:to-c.off:to-c.off])
		pos = to
	}
	return bufs, pins, true
}

// ReadMemory fills p with len(p) bytes at offset off of segment seg if the
// journal holds all of them in memory (recent writes), and reports whether
// it did. It never reads a file.
func (j *Journal) ReadMemory(seg uint64, off int64, p []byte) bool {
	j.segMu.RLock()
	s := j.segs[seg]
	j.segMu.RUnlock()
	return s != nil && j.readTail(s, off, p) == len(p)
}

// ReadCached fills p with len(p) bytes at offset off of segment seg if
// none of them needs a wait for the disk: from the tail's memory, else from
// the operating system's page cache (a read that would wait is not made).
// It reports whether it did; false is no error (the caller reads with
// ReadAt instead). A file system without such reads (not the OS's) never
// has them.
func (j *Journal) ReadCached(seg uint64, off int64, p []byte) bool {
	j.segMu.RLock()
	s := j.segs[seg]
	j.segMu.RUnlock()
	if s == nil {
		return false
	}
	for len(p) > 0 {
		if n := j.readTail(s, off, p); n > 0 {
			off, p = off+int64(n), p[n:]
			continue
		}
		fd := s.f.Fd()
		if fd == vfs.InvalidFd || off+int64(len(p)) > s.written.Load() {
			return false
		}
		n, err := preadNoWait(fd, p, off)
		if err != nil || n <= 0 {
			return false
		}
		off, p = off+int64(n), p[n:]
	}
	return true
}

// TailBytes is the memory the tail holds: chunks kept for reads and
// chunks waiting for the writer.
func (j *Journal) TailBytes() int64 {
	j.t.RLock()
	defer j.t.RUnlock()
	return int64(len(j.t.recent)+len(j.t.pending)) * chunkSize
}

// releaseTail hands every chunk buffer back to the pool (chunkmem.go) once
// the writer has stopped: a closed journal's tail serves nothing more.
func (j *Journal) releaseTail() {
	j.mu.Lock()
	j.mu.open = nil
	j.mu.Unlock()
	j.t.Lock()
	defer j.t.Unlock()
	for _, list := range [][]*chunk{j.t.free, j.t.recent, j.t.pending} {
		for _, c := range list {
			c.orphan()
		}
	}
	j.t.free, j.t.recent, j.t.pending = nil, nil, nil
	clear(j.t.index)
	j.t.allocated = 0
}

// dropTailLocked forgets the kept chunks of segment s (it is being
// removed). t is held.
func (j *Journal) dropTailLocked(s *segment) {
	kept := j.t.recent[:0]
	for _, c := range j.t.recent {
		if c.seg == s {
			delete(j.t.index, chunkKey{s.id, c.off / chunkSize})
			if c.pins.Load() > 0 {
				j.t.allocated--
				c.orphan()
			} else {
				j.t.free = append(j.t.free, c)
			}
			continue
		}
		kept = append(kept, c)
	}
	clear(j.t.recent[len(kept):])
	j.t.recent = kept
}
