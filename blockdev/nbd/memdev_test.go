package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/strata-storage/strata/blockdev"
)

const memBlock = 4096

// memDev is an in-memory thin device of 4 KiB blocks: an absent block is a
// hole. It implements Trimmer, Zeroer, BlockStatuser and FastReader.
type memDev struct {
	size int64

	mu     sync.RWMutex
	blocks map[int64][]byte

	flushes atomic.Int64
	writes  atomic.Int64
	// hook, if set, runs at the start of every operation (op is "read",
	// "write", "flush", "trim", "zero", "status") and may block or fail it.
	hook func(op string, off int64) error
	// fast, if set, decides what TryReadAt does at off: decline sends the
	// read to ReadAt, a non-nil err fails it, neither serves it from
	// memory. Without fast, TryReadAt declines when hook is set (hook may
	// block, TryReadAt must not) and serves from memory otherwise.
	fast func(off int64) (decline bool, err error)

	batches   atomic.Int64 // WriteBatch calls with more than one write
	reads     atomic.Int64 // ReadAt calls
	fastReads atomic.Int64 // reads TryReadAt served
	largest   atomic.Int64 // the longest ReadAt or WriteAt

	// refs, if set, makes ReadRefs serve reads (else it declines);
	// refReads counts those it served, released the releases.
	refs           atomic.Bool
	refReads       atomic.Int64
	released       atomic.Int64
	doubleReleased atomic.Int64
}

// ReadRefs serves from copies of the blocks (a real device's slices stay
// unchanged until released; a copy is how this device keeps that promise),
// one slice per block, and counts releases (and releases of the same read
// twice, a bug).
func (d *memDev) ReadRefs(off int64, n int) ([][]byte, func(), bool, error) {
	if !d.refs.Load() {
		return nil, nil, false, nil
	}
	if err := d.check(off, int64(n)); err != nil {
		return nil, nil, false, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	var bufs [][]byte
	for i := 0; i < n; {
		k := min(n-i, memBlock-int((off+int64(i))%memBlock))
		p := make([]byte, k)
		d.readLocked(p, off+int64(i))
		bufs = append(bufs, p)
		i += k
	}
	d.refReads.Add(1)
	var once atomic.Bool
	return bufs, func() {
		if once.Swap(true) {
			d.doubleReleased.Add(1)
			return
		}
		d.released.Add(1)
	}, true, nil
}

// noteLen records n in largest.
func (d *memDev) noteLen(n int) {
	for l := d.largest.Load(); int64(n) > l && !d.largest.CompareAndSwap(l, int64(n)); l = d.largest.Load() {
	}
}

func newMemDev(size int64) *memDev {
	return &memDev{size: size, blocks: make(map[int64][]byte)}
}

func (d *memDev) callHook(op string, off int64) error {
	if d.hook != nil {
		return d.hook(op, off)
	}
	return nil
}

func (d *memDev) Size() int64 { return d.size }

func (d *memDev) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > d.size {
		return fmt.Errorf("memdev [%d,+%d): %w", off, n, blockdev.ErrOutOfRange)
	}
	return nil
}

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	d.reads.Add(1)
	d.noteLen(len(p))
	if err := d.callHook("read", off); err != nil {
		return 0, err
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	d.readLocked(p, off)
	return len(p), nil
}

// TryReadAt declines rather than wait for a writer's lock.
func (d *memDev) TryReadAt(p []byte, off int64) (bool, error) {
	if d.fast != nil {
		if decline, err := d.fast(off); decline || err != nil {
			return false, err
		}
	} else if d.hook != nil {
		return false, nil
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return false, err
	}
	if !d.mu.TryRLock() {
		return false, nil
	}
	defer d.mu.RUnlock()
	d.readLocked(p, off)
	d.fastReads.Add(1)
	return true, nil
}

func (d *memDev) readLocked(p []byte, off int64) {
	for i := 0; i < len(p); {
		pos := off + int64(i)
		b, in := pos/memBlock, pos%memBlock
		n := min(len(p)-i, int(memBlock-in))
		if blk, ok := d.blocks[b]; ok {
			copy(p[i:i+n], blk[in:])
		} else {
			clear(p[i : i+n])
		}
		i += n
	}
}

// update applies fn to each block piece of [off, off+n), allocating blocks
// when alloc is true.
func (d *memDev) update(off, n int64, alloc bool, fn func(blk []byte, in, i, n int64)) {
	for i := int64(0); i < n; {
		pos := off + i
		b, in := pos/memBlock, pos%memBlock
		m := min(n-i, memBlock-in)
		blk, ok := d.blocks[b]
		if !ok && alloc {
			blk = make([]byte, memBlock)
			d.blocks[b] = blk
		}
		if blk != nil {
			fn(blk, in, i, m)
		}
		i += m
	}
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	d.noteLen(len(p))
	if err := d.callHook("write", off); err != nil {
		return 0, err
	}
	if err := d.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	d.writes.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.update(off, int64(len(p)), true, func(blk []byte, in, i, n int64) {
		copy(blk[in:in+n], p[i:i+n])
	})
	return len(p), nil
}

// WriteBatch is blockdev.BatchWriter: the writes in order, stopping at
// the first error.
func (d *memDev) WriteBatch(ws []blockdev.BlockWrite) error {
	if len(ws) > 1 {
		d.batches.Add(1)
	}
	for _, w := range ws {
		if _, err := d.WriteAt(w.Data, w.Off); err != nil {
			return err
		}
	}
	return nil
}

func (d *memDev) Flush() error {
	if err := d.callHook("flush", 0); err != nil {
		return err
	}
	d.flushes.Add(1)
	return nil
}

func (d *memDev) Trim(off, n int64) error {
	if err := d.callHook("trim", off); err != nil {
		return err
	}
	return d.zero(off, n, false)
}

func (d *memDev) WriteZeroes(off, n int64, noHole bool) error {
	if err := d.callHook("zero", off); err != nil {
		return err
	}
	return d.zero(off, n, noHole)
}

func (d *memDev) zero(off, n int64, noHole bool) error {
	if err := d.check(off, n); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.update(off, n, noHole, func(blk []byte, in, i, m int64) {
		clear(blk[in : in+m])
	})
	if !noHole {
		for b := (off + memBlock - 1) / memBlock; (b+1)*memBlock <= off+n; b++ {
			delete(d.blocks, b)
		}
	}
	return nil
}

var zeroBlock = make([]byte, memBlock)

func (d *memDev) BlockStatus(off, n int64) ([]blockdev.Extent, error) {
	if err := d.callHook("status", off); err != nil {
		return nil, err
	}
	if err := d.check(off, n); err != nil {
		return nil, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []blockdev.Extent
	for pos := off; pos < off+n; {
		b := pos / memBlock
		m := min(off+n-pos, (b+1)*memBlock-pos)
		var flags uint32
		if blk, ok := d.blocks[b]; !ok {
			flags = blockdev.ExtentHole | blockdev.ExtentZero
		} else if bytes.Equal(blk, zeroBlock) {
			flags = blockdev.ExtentZero
		}
		if len(out) > 0 && out[len(out)-1].Flags == flags {
			out[len(out)-1].Length += m
		} else {
			out = append(out, blockdev.Extent{Length: m, Flags: flags})
		}
		pos += m
	}
	return out, nil
}

// memExport is an Export over a memDev.
type memExport struct {
	*memDev
	name   string
	ro     bool
	closed atomic.Bool
	owner  *memExporter
}

func (e *memExport) ReadOnly() bool { return e.ro }
func (e *memExport) Name() string   { return e.name }

func (e *memExport) Close() error {
	if e.closed.Swap(true) {
		e.owner.doubleClose.Add(1)
	}
	e.owner.open.Add(-1)
	return nil
}

// plainExport hides the memDev's optional interfaces.
type plainExport struct {
	blockdev.Device
	inner *memExport
}

func (e plainExport) ReadOnly() bool { return false }
func (e plainExport) Close() error   { return e.inner.Close() }

// memExporter serves named memDevs. "" is the default export "vol".
type memExporter struct {
	mu    sync.Mutex
	devs  map[string]*memDev
	ro    map[string]bool
	plain map[string]bool
	descs map[string]string

	open        atomic.Int64 // exports opened and not yet closed
	opens       atomic.Int64
	doubleClose atomic.Int64
}

func newMemExporter() *memExporter {
	return &memExporter{
		devs:  map[string]*memDev{},
		ro:    map[string]bool{},
		plain: map[string]bool{},
		descs: map[string]string{},
	}
}

func (x *memExporter) add(name string, d *memDev, desc string) *memDev {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.devs[name] = d
	x.descs[name] = desc
	return d
}

func (x *memExporter) Open(name string) (Export, error) {
	if name == "" {
		name = "vol"
	}
	if name == "bad@name" {
		return nil, fmt.Errorf("parsing %q: %w", name, blockdev.ErrInvalid)
	}
	x.mu.Lock()
	d, ok := x.devs[name]
	ro, plain := x.ro[name], x.plain[name]
	x.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("export %q: %w", name, blockdev.ErrNotFound)
	}
	x.open.Add(1)
	x.opens.Add(1)
	e := &memExport{memDev: d, name: name, ro: ro, owner: x}
	if plain {
		return plainExport{Device: d, inner: e}, nil
	}
	return e, nil
}

func (x *memExporter) List() ([]ExportInfo, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []ExportInfo
	for name, d := range x.descs {
		out = append(out, ExportInfo{Name: name, Description: d})
	}
	slices.SortFunc(out, func(a, b ExportInfo) int { return bytes.Compare([]byte(a.Name), []byte(b.Name)) })
	return out, nil
}

var errInjected = errors.New("injected failure")
