package cdp

import "golang.org/x/sys/unix"

// newSlab maps slabChunks chunk buffers, 2 MiB-aligned, asks for
// transparent huge pages for them and has the kernel fault them all in at
// once (see chunkmem.go). Where mapping fails it falls back to the Go heap.
func newSlab() [][]byte {
	const huge = 2 << 20
	m, err := unix.Mmap(-1, 0, slabChunks*chunkSize+huge, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return heapChunks()
	}
	// Never unmapped: the pool keeps its memory (chunkmem.go).
	skip := 0
	if a := int(uintptrOf(m) & (huge - 1)); a != 0 {
		skip = huge - a
	}
	m = m[skip : skip+slabChunks*chunkSize]
	_ = unix.Madvise(m, unix.MADV_HUGEPAGE) // a hint; THP may be off
	// Linux 5.14 and later; older kernels say EINVAL and the pages fault
	// in as they are first written.
	_ = unix.Madvise(m, unix.MADV_POPULATE_WRITE)
	out := make([][]byte, slabChunks)
	for i := range out {
		out[i] = m[i*chunkSize : (i+1)*chunkSize : (i+1)*chunkSize]
	}
	return out
}
