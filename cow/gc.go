package cow

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/cdp"
)

// Garbage collection. A block version (volume V, block b, sequence s, next
// newer version of b in V at s') is visible at the points P of V with
// s <= P < s' in whose generation it was written (generation start < s).
// It is live if a retained point sees it:
//
//   - the retention window of a live volume: every point from the window
//     start to the head;
//   - a snapshot, a point open for reading (pinned), or a point that a
//     clone or rollback generation uses as its base.
//
// Dead versions leave the index. A journal segment that ends before every
// window and holds no live data is deleted; one that holds little (below
// Options.GCLiveRatio) has its live blocks copied forward first, in relocate
// records that keep each block's identity (volume, block, sequence), so no
// point reads differently.
//
// Crash safety, by order: the per-volume floors (no point older than what
// this pass may destroy can be opened) are persisted first; dead versions are
// deleted and live ones relocated; then the index is checkpointed (which
// syncs the journal) so neither the index nor a replay refers to the old
// segments; only then are the files removed. A crash at any step leaves at
// worst dead keys or duplicate data that the next pass reclaims.

// GCStats reports one pass.
type GCStats struct {
	Versions         int64         `json:"versions"`         // block versions examined
	DeadVersions     int64         `json:"dead_versions"`    // dropped from the index
	SegmentsRemoved  int           `json:"segments_removed"` // journal files deleted
	BytesFreed       int64         `json:"bytes_freed"`      // their size
	BytesRelocated   int64         `json:"bytes_relocated"`  // live data copied forward
	JournalBytes     int64         `json:"journal_bytes"`    // journal size after the pass
	LiveBytes        int64         `json:"live_bytes"`       // data any retained point sees
	HistoryCut       bool          `json:"history_cut"`      // the size cap moved history out early
	Duration         time.Duration `json:"duration"`
	SegmentsExamined int           `json:"segments_examined"` // candidates this pass
	// Defragmentation (defrag.go): 1 MiB extents of volume heads examined,
	// rewritten in block order, and the bytes that took.
	ExtentsExamined   int64 `json:"extents_examined"`
	ExtentsRewritten  int64 `json:"extents_rewritten"`
	BytesDefragmented int64 `json:"bytes_defragmented"`
}

// retainers is what keeps one volume's versions.
type retainers struct {
	v      *volState
	gens   []gen
	window uint64   // 0: no window (deleted volume)
	points []uint64 // snapshots, pins, base points: sorted
	others []uint64 // pins and base points only: sorted (for df)
}

func (r *retainers) genStart(p uint64) uint64 { return genAt(r.gens, p).Start }

// live reports whether version s of a block, whose next newer version in the
// same volume is next (Head if none), is seen by a retained point.
func (r *retainers) live(s, next uint64) bool {
	if r.window != 0 {
		p := max(s, r.window)
		if p < next && r.genStart(p) < s {
			return true
		}
	}
	i := sort.Search(len(r.points), func(i int) bool { return r.points[i] >= s })
	return i < len(r.points) && r.points[i] < next && r.genStart(r.points[i]) < s
}

// seenBy counts the points of the sorted list that see version s (whose
// next newer version is next).
func (r *retainers) seenBy(list []uint64, s, next uint64) int {
	n := 0
	i := sort.Search(len(list), func(i int) bool { return list[i] >= s })
	for ; i < len(list) && list[i] < next; i++ {
		if r.genStart(list[i]) < s {
			n++
		}
	}
	return n
}

// retainersLocked fixes, under the write lock, which points each volume
// keeps, and raises (and persists) each live volume's floor to its window
// start: points older than that may be gone after this pass.
func (p *Pool) retainersLocked(now time.Time) (map[uint64]*retainers, error) {
	out := map[uint64]*retainers{}
	p.vmu.RLock()
	all := make([]*volState, 0, len(p.byID)+len(p.retired))
	for _, v := range p.byID {
		all = append(all, v)
	}
	for _, v := range p.retired {
		all = append(all, v)
	}
	p.vmu.RUnlock()
	for _, v := range all {
		r := &retainers{v: v, gens: append([]gen(nil), v.meta.Gens...)}
		if !v.gone.Load() {
			w, err := p.windowLocked(v, now)
			if err != nil {
				return nil, err
			}
			r.window = max(w, v.id) // never 0 for a live volume
			for _, sn := range v.meta.Snapshots {
				r.points = append(r.points, sn.Seq)
			}
		}
		out[v.id] = r
	}
	p.shipFloorsLocked(out)
	for k := range p.wmu.pins {
		if r := out[k[0]]; r != nil {
			r.points = append(r.points, k[1])
			r.others = append(r.others, k[1])
		}
	}
	// Base points: of every generation of live volumes, and of deleted
	// volumes that are themselves someone's base (to a fixpoint).
	needed := map[uint64]bool{}
	for id, r := range out {
		if r.window != 0 {
			needed[id] = true
		}
	}
	for changed := true; changed; {
		changed = false
		for id := range needed {
			for _, g := range out[id].gens {
				if g.BaseVol == 0 {
					continue
				}
				if b := out[g.BaseVol]; b != nil {
					b.points = append(b.points, g.BaseSeq)
					b.others = append(b.others, g.BaseSeq)
					if !needed[g.BaseVol] {
						needed[g.BaseVol] = true
						changed = true
					}
				}
			}
			if changed {
				break
			}
		}
	}
	for _, r := range out {
		sort.Slice(r.points, func(a, b int) bool { return r.points[a] < r.points[b] })
		sort.Slice(r.others, func(a, b int) bool { return r.others[a] < r.others[b] })
	}
	return out, nil
}

// candidate is an old segment garbage collection may free: its size and
// the live blocks in it.
type candidate struct {
	size  int64
	live  int64
	links []liveBlock
}

type liveBlock struct {
	vol, block, seq uint64
	seg             uint64 // defrag only: candidates know their segment
	off             int64
	crc             uint32
}

// GC runs one garbage collection pass now, as `strata gc --now` does: it
// examines every extent of every volume for fragmentation.
func (p *Pool) GC(ctx context.Context) (GCStats, error) { return p.gc(ctx, true) }

// gc runs one pass; allExtents: defragmentation examines every extent,
// not only those written and then left alone for an interval.
func (p *Pool) gc(ctx context.Context, allExtents bool) (GCStats, error) {
	p.gcMu.Lock()
	defer p.gcMu.Unlock()
	start := time.Now()
	var st GCStats
	j := p.j.Load()

	// 0. Defragment first: the copies it leaves behind are dead data the
	// rest of the pass may already free.
	if !p.opts.NoDefrag {
		ds, err := p.defrag(ctx, allExtents, p.opts.GCBatchBytes)
		st.ExtentsExamined, st.ExtentsRewritten, st.BytesDefragmented = ds.extents, ds.moved, ds.bytes
		if err != nil {
			return st, err
		}
		if ds.damaged > 0 {
			p.opts.Logger.Warn("defragmentation left damaged blocks where they are", "blocks", ds.damaged)
		}
	}

	// 1. Fix what is retained, under the write lock.
	p.wmu.Lock()
	if p.wmu.closed {
		p.wmu.Unlock()
		return st, ErrClosed
	}
	now := p.opts.Now()
	st.HistoryCut = p.applySizeCapLocked()
	rets, err := p.retainersLocked(now)
	if err != nil {
		p.wmu.Unlock()
		return st, err
	}
	if err := p.persistFloorsLocked(rets); err != nil {
		p.wmu.Unlock()
		return st, err
	}
	gcStep("floors")
	minWindow := p.wmu.applied + 1
	for _, r := range rets {
		if r.window != 0 && r.window < minWindow {
			minWindow = r.window
		}
	}
	snap := p.db.NewSnapshot()
	segs := j.Segments()
	p.wmu.Unlock()
	defer snap.Close()

	// Candidates: whole segments before every window (oldest first, a
	// bounded amount per pass so memory stays bounded).
	cand := map[uint64]*candidate{}
	var candBytes int64
	for _, s := range segs {
		if s.Current || s.LastSeq >= minWindow || candBytes >= p.opts.GCBatchBytes {
			continue
		}
		cand[s.ID] = &candidate{size: s.Size}
		candBytes += s.Size
	}
	st.SegmentsExamined = len(cand)
	if len(cand) == 0 {
		// Nothing old enough to free: skip the index scan (it reads every
		// version). Dead versions wait for the pass that frees their space.
		st.JournalBytes = j.Stats().Bytes
		st.Duration = time.Since(start)
		return st, nil
	}

	// 2. Drop dead versions; note live data in candidate segments.
	b := p.db.NewBatch()
	flushBatch := func() error {
		if b.Count() == 0 {
			return nil
		}
		err := b.Commit(pebble.NoSync)
		b.Close()
		b = p.db.NewBatch()
		return err
	}
	// Chunk keys some of whose blocks died: split under the write lock
	// after the scan (a relocation may split them meanwhile).
	var splits []scannedChunk
	err = scanVersions(snap, 0, 0, versionScan{
		version: func(vol, block uint64, e entry, next uint64) (bool, error) {
			st.Versions++
			r := rets[vol]
			if r == nil || !r.live(e.seq, next) {
				st.DeadVersions++
				return true, ctx.Err()
			}
			if e.kind == entryData {
				st.LiveBytes += cdp.BlockSize
				if c := cand[e.seg]; c != nil {
					c.live += cdp.BlockSize
					c.links = append(c.links, liveBlock{vol: vol, block: block, seq: e.seq, off: e.off, crc: e.crc})
				}
			}
			return false, nil
		},
		dropBlock: func(key []byte) error {
			if err := b.Delete(key, nil); err != nil {
				return err
			}
			if b.Len() > 4<<20 {
				return flushBatch()
			}
			return nil
		},
		chunkDone: func(key []byte, ce *chunkEntry, gone uint32) error {
			switch gone {
			case 0:
				return nil
			case allChunkBlocks:
				return b.Delete(key, nil)
			}
			splits = append(splits, scannedChunk{key: key, ce: *ce, gone: gone})
			return nil
		},
	})
	if err == nil {
		err = flushBatch()
	}
	b.Close()
	if err == nil {
		err = p.splitChunks(splits)
	}
	if err != nil {
		return st, fmt.Errorf("cow: gc scan: %w", err)
	}
	gcStep("dead versions dropped")

	// 3. Relocate what is live in mostly dead candidates.
	var remove []uint64
	for id, c := range cand {
		switch {
		case c.live == 0:
			remove = append(remove, id)
		case float64(c.live) < p.opts.GCLiveRatio*float64(c.size):
			if err := p.relocate(ctx, id, c.links, &st); err != nil {
				return st, err
			}
			remove = append(remove, id)
		}
	}
	if len(remove) == 0 {
		st.JournalBytes = j.Stats().Bytes
		st.Duration = time.Since(start)
		return st, nil
	}

	// 4. Checkpoint: the index on disk (and so any replay) no longer refers
	// to the segments, and the relocated copies are durable.
	if err := p.db.Flush(); err != nil {
		return st, fmt.Errorf("cow: gc checkpoint: %w", err)
	}
	if err := p.Flush(); err != nil {
		return st, err
	}
	gcStep("checkpointed")

	// 5. Remove the files, with no reader in the middle of a lookup.
	sort.Slice(remove, func(a, b int) bool { return remove[a] < remove[b] })
	sizes := map[uint64]int64{}
	for _, s := range segs {
		sizes[s.ID] = s.Size
	}
	p.closeMu.Lock()
	for _, id := range remove {
		if err := j.RemoveSegment(id); err != nil {
			p.closeMu.Unlock()
			return st, err
		}
		st.SegmentsRemoved++
		st.BytesFreed += sizes[id]
		gcStep("segment removed")
	}
	p.closeMu.Unlock()
	p.dropTimeMarkers(minWindow)
	st.JournalBytes = j.Stats().Bytes
	st.Duration = time.Since(start)
	p.opts.Logger.Info("gc pass", "segments_removed", st.SegmentsRemoved, "freed", st.BytesFreed,
		"relocated", st.BytesRelocated, "defragmented", st.BytesDefragmented, "dead_versions", st.DeadVersions,
		"took", st.Duration.Round(time.Millisecond))
	return st, nil
}

// splitChunks replaces each chunk key some of whose blocks died with block
// keys of the blocks still needed, unless a relocation split it since the
// scan.
func (p *Pool) splitChunks(splits []scannedChunk) error {
	if len(splits) == 0 {
		return nil
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	b := p.db.NewBatch()
	defer b.Close()
	var val []byte
	for i := range splits {
		sc := &splits[i]
		val = sc.ce.encode(val)
		if !sameValue(p.db, sc.key, val) {
			continue
		}
		if err := splitChunk(b, sc.key, &sc.ce, sc.gone); err != nil {
			return err
		}
	}
	return b.Commit(pebble.NoSync)
}

// relocate copies the live blocks of segment id forward in relocate
// records, at most Options.GCRate bytes a second.
func (p *Pool) relocate(ctx context.Context, id uint64, links []liveBlock, st *GCStats) error {
	sort.Slice(links, func(a, b int) bool { return links[a].off < links[b].off })
	j := p.j.Load()
	const per = 1024 // blocks per record (4 MiB)
	for i := 0; i < len(links); i += per {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunk := links[i:min(i+per, len(links))]
		data := make([]byte, len(chunk)*cdp.BlockSize)
		meta := make([]byte, 0, len(chunk)*cdp.RelocateEntrySize)
		for k, l := range chunk {
			blk := data[k*cdp.BlockSize : (k+1)*cdp.BlockSize]
			if err := j.ReadAt(id, l.off, blk); err != nil {
				return fmt.Errorf("cow: gc read: %w", err)
			}
			if cdp.Checksum(blk) != l.crc {
				return fmt.Errorf("%w: gc found a checksum mismatch in segment %d offset %d; not relocating it", cdp.ErrCorrupt, id, l.off)
			}
			meta = cdp.AppendRelocateEntry(meta, cdp.RelocateEntry{Volume: l.vol, Block: l.block, Seq: l.seq, CRC: l.crc})
		}
		p.wmu.Lock()
		err := p.appendLocked(&cdp.Record{Kind: cdp.KindRelocate, Length: uint64(len(data)), Data: data, Meta: meta})
		p.wmu.Unlock()
		if err != nil {
			return fmt.Errorf("cow: gc relocate: %w", err)
		}
		st.BytesRelocated += int64(len(data))
		gcStep("relocated")
		if p.opts.GCRate > 0 {
			time.Sleep(time.Duration(float64(len(data)) / float64(p.opts.GCRate) * float64(time.Second)))
		}
	}
	return nil
}

// applySizeCapLocked raises the pool floor so the journal fits the size cap,
// keeping the newest segments. It reports whether history was cut short.
func (p *Pool) applySizeCapLocked() bool {
	if p.opts.RetentionSize <= 0 {
		return false
	}
	segs := p.j.Load().Segments()
	var sum int64
	for i := len(segs) - 1; i >= 0; i-- {
		sum += segs[i].Size
		if sum > p.opts.RetentionSize && !segs[i].Current {
			floor := segs[i].LastSeq + 1
			if floor <= p.wmu.floor {
				return false
			}
			// Early only if some volume's time window reaches further back.
			early := false
			now := p.opts.Now()
			for _, v := range p.allVolumesLocked() {
				if w, err := p.windowLocked(v, now); err == nil && w < floor {
					early = true
				}
			}
			p.wmu.floor = floor
			if early {
				p.wmu.historyCut = now
				p.opts.Logger.Warn("retention size cap reached: history is discarded before its retention time",
					"cap", p.opts.RetentionSize, "journal", sum, "oldest_kept_seq", floor)
			}
			v := binary.BigEndian.AppendUint64(nil, floor)
			v = binary.BigEndian.AppendUint64(v, uint64(p.wmu.historyCut.UnixNano()))
			b := p.db.NewBatch()
			b.Set(floorKey, v, nil)
			if err := b.Commit(pebble.NoSync); err != nil {
				p.opts.Logger.Error("saving the retention floor failed", "err", err)
			}
			b.Close()
			return early
		}
	}
	return false
}

var floorKey = []byte("mfloor")

// persistFloorsLocked raises each live volume's floor to the window start
// this pass uses: older points may be gone afterwards and must not open.
func (p *Pool) persistFloorsLocked(rets map[uint64]*retainers) error {
	b := p.db.NewBatch()
	defer b.Close()
	for _, r := range rets {
		if r.window != 0 && r.window > r.v.meta.Floor {
			r.v.meta.Floor = r.window
			b.Set(metaKey(r.v.id), r.v.meta.encode(), nil)
		}
	}
	return b.Commit(pebble.NoSync)
}

// dropTimeMarkers deletes time markers of records before seq, keeping the
// newest of them (times just before the window still resolve).
func (p *Pool) dropTimeMarkers(seq uint64) {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixTime}, UpperBound: []byte{prefixTime + 1}})
	if err != nil {
		return
	}
	var del [][]byte
	var prev []byte
	for ok := it.First(); ok; ok = it.Next() {
		if v := it.Value(); len(v) != 24 || binary.BigEndian.Uint64(v) >= seq {
			break
		}
		if prev != nil {
			del = append(del, prev)
		}
		prev = append([]byte(nil), it.Key()...)
	}
	it.Close()
	b := p.db.NewBatch()
	defer b.Close()
	for _, k := range del {
		b.Delete(k, nil)
	}
	b.Commit(pebble.NoSync)
}

// gcLoop runs garbage collection every Options.GCInterval until stop.
func (p *Pool) gcLoop(stop <-chan struct{}) {
	defer p.recountWG.Done()
	if p.opts.GCInterval < 0 {
		return
	}
	t := time.NewTicker(p.opts.GCInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-stop; cancel() }()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			st, err := p.gc(ctx, false)
			if err != nil && ctx.Err() == nil {
				p.opts.Logger.Error("gc pass failed", "err", err)
			}
			r := &GCRun{At: time.Now().UTC(), Stats: st}
			if err != nil {
				r.Error = err.Error()
			}
			p.lastGC.Store(r)
		}
	}
}

// GCRun is a background pass's outcome.
type GCRun struct {
	At    time.Time
	Stats GCStats
	Error string
}

// LastGC is the last background pass (nil before the first).
func (p *Pool) LastGC() *GCRun { return p.lastGC.Load() }

// HistoryCut is when the size cap last cut history short (zero: never).
func (p *Pool) HistoryCut() time.Time {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.wmu.historyCut
}

func gcStep(step string) {
	if testHookGC != nil {
		testHookGC(step)
	}
}
