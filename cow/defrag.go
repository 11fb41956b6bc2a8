package cow

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/strata-storage/strata/cdp"
)

// Defragmentation. A volume rewritten at random has its head scattered
// over the journal: a 1 MiB read of it becomes up to 256 reads of 4 KiB.
// Garbage collection rewrites the head of such ranges in block order, in
// relocate records (the same ones that copy live data out of mostly dead
// segments), so the versions keep their identity (volume, block, sequence)
// and no point in time reads differently; only where the head's blocks
// sit changes. The old copies become dead data that frees their segments
// once the retention window has passed them.
//
// What is examined: an extent (defragExtent blocks) is a candidate once it
// was written and then left alone for a whole garbage collection interval
// (extents still being written would fragment again at once). An
// explicit pass (Pool.GC, `strata gc --now`) examines every extent. An
// extent is rewritten when its data sits in runs shorter than
// defragMinRun blocks on average. Clones are left alone: their head shows
// their base's versions, which belong to another volume.
//
// The bitmaps of written extents live in memory only: after a restart only
// an explicit pass finds what was fragmented before it.

const (
	defragExtentShift = 8 // 256 blocks: 1 MiB
	defragExtent      = 1 << defragExtentShift
	defragMinRun      = 16 // blocks (64 KiB): shorter runs on average are rewritten
	defragMinPieces   = 4  // fewer separate runs are never worth a rewrite
	defragRecord      = 1024
)

// defragBits marks extents of a volume, one bit each.
type defragBits map[uint64]uint64

func (d defragBits) set(x uint64) { d[x/64] |= 1 << (x % 64) }

// markWritten notes that blocks [first, last] were written. Under the
// pool's write lock.
func (v *volState) markWritten(first, last uint64) {
	v.usedMu.Lock()
	if v.fragNow == nil {
		v.fragNow = defragBits{}
	}
	for x := first >> defragExtentShift; x <= last>>defragExtentShift; x++ {
		v.fragNow.set(x)
	}
	v.usedMu.Unlock()
}

// quietExtents returns the extents written before the last interval and
// not since (all: every extent of the volume), in order, and starts the
// next interval.
func (v *volState) quietExtents(all bool) []uint64 {
	v.usedMu.Lock()
	defer v.usedMu.Unlock()
	var out []uint64
	if all {
		n := (uint64(v.size.Load())/cdp.BlockSize + defragExtent - 1) >> defragExtentShift
		out = make([]uint64, 0, n)
		for x := uint64(0); x < n; x++ {
			out = append(out, x)
		}
		v.fragOld, v.fragNow = nil, nil
		return out
	}
	for w, bits := range v.fragOld {
		bits &^= v.fragNow[w]
		for i := uint64(0); bits != 0; i, bits = i+1, bits>>1 {
			if bits&1 != 0 {
				out = append(out, w*64+i)
			}
		}
	}
	v.fragOld, v.fragNow = v.fragNow, nil
	slices.Sort(out)
	return out
}

// defragStats is what one defragmentation step did.
type defragStats struct {
	extents int64 // examined
	moved   int64 // rewritten
	bytes   int64 // data rewritten
	damaged int64 // blocks left where they are: their checksum fails
}

// defrag rewrites the fragmented head extents of every volume (all: every
// extent, else the quiet ones), at most budget bytes.
func (p *Pool) defrag(ctx context.Context, all bool, budget int64) (defragStats, error) {
	var st defragStats
	p.vmu.RLock()
	vols := make([]*volState, 0, len(p.byID))
	for _, v := range p.byID {
		vols = append(vols, v)
	}
	p.vmu.RUnlock()
	for _, v := range vols {
		exts := v.quietExtents(all)
		if len(exts) == 0 || v.gone.Load() || !ownsHead(v) {
			continue
		}
		if err := p.defragVolume(ctx, v, exts, budget, &st); err != nil {
			return st, err
		}
		if budget > 0 && st.bytes >= budget {
			break
		}
	}
	return st, nil
}

// ownsHead reports whether every version v's head can show is v's own
// (no generation based on another volume).
func ownsHead(v *volState) bool {
	for _, g := range v.loadGens() {
		if g.BaseVol != 0 && g.BaseVol != v.id {
			return false
		}
	}
	return true
}

// defragVolume examines extents exts of v and rewrites the fragmented ones,
// gathering consecutive ones into records of up to defragRecord blocks.
func (p *Pool) defragVolume(ctx context.Context, v *volState, exts []uint64, budget int64, st *defragStats) error {
	var batch []liveBlock
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := p.rewrite(batch, st)
		batch = batch[:0]
		if err != nil {
			return err
		}
		if p.opts.GCRate > 0 {
			time.Sleep(time.Duration(float64(n) / float64(p.opts.GCRate) * float64(time.Second)))
		}
		return nil
	}
	es := make([]liveBlock, 0, defragExtent)
	for i, x := range exts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if budget > 0 && st.bytes+int64(len(batch))*cdp.BlockSize >= budget {
			// Out of budget: the rest waits for a later pass.
			v.usedMu.Lock()
			if v.fragNow == nil {
				v.fragNow = defragBits{}
			}
			for _, y := range exts[i:] {
				v.fragNow.set(y)
			}
			v.usedMu.Unlock()
			break
		}
		first := x << defragExtentShift
		size := uint64(v.size.Load()) / cdp.BlockSize
		if first >= size {
			break
		}
		n := min(uint64(defragExtent), size-first)
		es = es[:0]
		unlock, err := p.readLock()
		if err != nil {
			return err
		}
		err = p.versions(v, first, n, Head, false, func(b uint64, e entry) bool {
			if e.kind == entryData {
				es = append(es, liveBlock{vol: v.id, block: b, seq: e.seq, seg: e.seg, off: e.off, crc: e.crc})
			}
			return true
		})
		unlock()
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return err
			}
			return fmt.Errorf("cow: defragment volume %q: %w", v.name, err)
		}
		st.extents++
		if !fragmented(es) {
			// Keep records in block order: a gap ends the batch.
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		st.moved++
		if len(batch)+len(es) > defragRecord {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, es...)
	}
	return flush()
}

// fragmented reports whether blocks (in block order) sit in runs shorter
// than defragMinRun on average.
func fragmented(es []liveBlock) bool {
	if len(es) == 0 {
		return false
	}
	pieces := 1
	for i := 1; i < len(es); i++ {
		if es[i].block != es[i-1].block+1 || es[i].seg != es[i-1].seg || es[i].off != es[i-1].off+cdp.BlockSize {
			pieces++
		}
	}
	return pieces >= defragMinPieces && len(es) < pieces*defragMinRun
}

// rewrite copies blocks (one volume's, in block order) into one relocate
// record. It reads them where they are, runs of neighbours with one read,
// and checks each against its checksum: a damaged block stays where it is.
// It returns the bytes written.
func (p *Pool) rewrite(blocks []liveBlock, st *defragStats) (int64, error) {
	j := p.j.Load()
	data := make([]byte, len(blocks)*cdp.BlockSize)
	meta := make([]byte, 0, len(blocks)*cdp.RelocateEntrySize)
	n := 0
	for i := 0; i < len(blocks); {
		k := i + 1
		for k < len(blocks) && blocks[k].seg == blocks[i].seg && blocks[k].off == blocks[k-1].off+cdp.BlockSize {
			k++
		}
		dst := data[n*cdp.BlockSize : (n+k-i)*cdp.BlockSize]
		if err := j.ReadAt(blocks[i].seg, blocks[i].off, dst); err != nil {
			return 0, fmt.Errorf("cow: defragment read: %w", err)
		}
		for m := i; m < k; m++ {
			blk := data[n*cdp.BlockSize : (n+1)*cdp.BlockSize]
			l := blocks[m]
			if cdp.Checksum(blk) != l.crc {
				st.damaged++
				// Shift the rest of this run down over the damaged block.
				copy(data[n*cdp.BlockSize:], data[(n+1)*cdp.BlockSize:(n+k-m)*cdp.BlockSize])
				continue
			}
			meta = cdp.AppendRelocateEntry(meta, cdp.RelocateEntry{Volume: l.vol, Block: l.block, Seq: l.seq, CRC: l.crc})
			n++
		}
		i = k
	}
	if n == 0 {
		return 0, nil
	}
	data = data[:n*cdp.BlockSize]
	p.wmu.Lock()
	err := p.appendLocked(&cdp.Record{Kind: cdp.KindRelocate, Length: uint64(len(data)), Data: data, Meta: meta})
	p.wmu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("cow: defragment: %w", err)
	}
	st.bytes += int64(len(data))
	gcStep("defragmented")
	return int64(len(data)), nil
}
