package cdp

import (
	"sync"
	"unsafe"
)

// Tail memory. The tail's chunk buffers come from one process-wide pool
// that never shrinks: a journal takes buffers as its tail grows and gives
// them back when it closes, so a daemon's resident tail memory is the
// high-water mark of its journals' tails (Options.TailCache plus
// maxPending chunks each), rounded up to whole slabs, plus at most one
// slab mapped ahead; pools opened one after another reuse it.
//
// On Linux the pool carves buffers from anonymous mappings of
// slabChunks MiB marked MADV_HUGEPAGE (chunkmem_linux.go), so the tail
// sits in 2 MiB pages. Why: a 1 MiB READ of recent data goes to the
// socket straight from the tail (PinMemory), so the kernel reads those
// pages; on virtual machines with shadow page tables (this project's
// test machines: Firecracker with PVM) the kernel's first access to each
// 4 KiB user page costs a fault in the hypervisor, about 6 us. Data
// written once and read back once went to the socket at 0.55 GB/s
// instead of 2.4 (a 1 GiB buffer sent twice over a Unix socket:
// 545 MB/s, then 2443), and the VM boot mix read a freshly written
// volume at half nbdkit's speed. In 2 MiB pages the first pass ran at
// 2.2 GB/s. Elsewhere huge pages save TLB misses; what they cost is the
// kernel finding free 2 MiB pages (compaction) while the tail first grows.
//
// A new slab is faulted in whole (MADV_POPULATE_WRITE) and, while the
// pool still has buffers, in the background (aheadChunks): on those
// machines a write into never-touched memory faults, and copying 1 GiB
// into new memory 4 KiB at a time ran at 0.29 GB/s (4 KiB pages) or
// 0.42-0.57 GB/s (huge pages faulted on touch), against 22 GB/s into
// memory populated beforehand, which took 54-66 ms a GiB (2.4 s where the
// hypervisor had taken the memory back). 4 KiB writes to a new volume
// spent 41% of their CPU profile in that copy.
//
// A chunk buffer handed back while readers still hold slices of it (pins)
// is orphaned: the last reader's Release returns it (chunk.orphan).

// slabChunks is how many chunk buffers one mapping holds (32 MiB).
const slabChunks = 32

// aheadChunks: when fewer free buffers remain, a goroutine maps the next
// slab in the background. Mapping is slow where the VM backs new memory
// lazily (on the machines of 2026-12-02 a fresh 32 MiB slab took 80 ms to
// fault in, about the time 4 KiB random writes at QD32 take to fill half
// a slab), and a write that finds the pool empty waits for it; so the
// pool keeps up to one slab mapped ahead of what its journals use.
const aheadChunks = slabChunks / 2

var chunkMem struct {
	sync.Mutex
	free [][]byte
	// mapping: a newSlab runs (in the background or for a waiting
	// getChunkBuf); ready is signalled when it is done.
	mapping bool
	ready   *sync.Cond
	// slabs counts newSlab calls, waits those getChunkBuf made itself
	// (an empty pool and no mapping under way).
	slabs, waits int
}

func init() { chunkMem.ready = sync.NewCond(&chunkMem.Mutex) }

// getChunkBuf returns chunkSize bytes of ioAlign-aligned memory.
func getChunkBuf() []byte {
	chunkMem.Lock()
	defer chunkMem.Unlock()
	for len(chunkMem.free) == 0 {
		if chunkMem.mapping {
			chunkMem.ready.Wait()
			continue
		}
		chunkMem.waits++
		mapSlabLocked()
	}
	n := len(chunkMem.free)
	b := chunkMem.free[n-1]
	chunkMem.free[n-1] = nil
	chunkMem.free = chunkMem.free[:n-1]
	if n-1 < aheadChunks && !chunkMem.mapping {
		chunkMem.mapping = true
		go func() {
			chunkMem.Lock()
			defer chunkMem.Unlock()
			mapSlabLocked()
		}()
	}
	return b
}

// mapSlabLocked adds a new slab's buffers to the pool, with chunkMem
// unlocked while the memory faults in (puts and takes go on meanwhile).
// chunkMem is held; mapping is set by the caller or here.
func mapSlabLocked() {
	chunkMem.mapping = true
	chunkMem.Unlock()
	s := newSlab()
	chunkMem.Lock()
	chunkMem.free = append(chunkMem.free, s...)
	chunkMem.slabs++
	chunkMem.mapping = false
	chunkMem.ready.Broadcast()
}

// putChunkBuf gives b, from getChunkBuf, back; nobody may use it after.
func putChunkBuf(b []byte) {
	if b == nil {
		return
	}
	chunkMem.Lock()
	chunkMem.free = append(chunkMem.free, b)
	chunkMem.Unlock()
}

// heapChunks is newSlab's fallback: chunk buffers from the Go heap.
func heapChunks() [][]byte {
	return [][]byte{alignedBuf()}
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// alignedBuf returns chunkSize bytes from the Go heap whose address is a
// multiple of ioAlign (O_DIRECT needs aligned memory).
func alignedBuf() []byte {
	b := make([]byte, chunkSize+ioAlign)
	a := int(uintptrOf(b) & (ioAlign - 1))
	if a != 0 {
		a = ioAlign - a
	}
	return b[a : a+chunkSize : a+chunkSize]
}

// orphan lets go of c's buffer, which the tail no longer uses (c is out of
// the index, under t's write lock, so no new pin can be taken): now, or
// when its last reader releases it.
func (c *chunk) orphan() {
	c.orphaned.Store(true)
	if c.pins.Load() == 0 && c.orphaned.CompareAndSwap(true, false) {
		putChunkBuf(c.buf)
	}
}

// unpin drops one pin; the last one of an orphaned chunk returns its
// buffer.
func (c *chunk) unpin() {
	if c.pins.Add(-1) == 0 && c.orphaned.Load() && c.orphaned.CompareAndSwap(true, false) {
		putChunkBuf(c.buf)
	}
}
