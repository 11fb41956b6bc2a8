package cow

import (
	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/cdp"
)

// markStaleLocked notes that v's written counter must be recounted: a clone
// or rollback changed its head in O(1) and leaves counting to a background
// pass. wmu is held.
func (p *Pool) markStaleLocked(v *volState) {
	v.meta.WrittenStale = true
	select {
	case p.recountKick <- struct{}{}:
	default: // a kick is pending already
	}
}

// recounter recounts stale volumes' written blocks in the background, each
// time it is kicked, until stop closes.
func (p *Pool) recounter(stop <-chan struct{}) {
	defer p.recountWG.Done()
	for {
		select {
		case <-stop:
			return
		case <-p.recountKick:
		}
		p.wmu.Lock()
		var stale []uint64
		for _, v := range p.allVolumesLocked() {
			if v.meta.WrittenStale && !v.recounting {
				stale = append(stale, v.id)
			}
		}
		p.wmu.Unlock()
		for _, id := range stale {
			p.recount(id)
		}
	}
}

// recount counts v's data blocks at head on a snapshot of the index taken
// under the write lock; writes after the snapshot are tracked as a delta, so
// the result is exact without stopping I/O.
func (p *Pool) recount(id uint64) {
	p.wmu.Lock()
	v := p.volumeByIDLocked(id)
	if p.wmu.closed || v == nil || !v.meta.WrittenStale {
		p.wmu.Unlock()
		return
	}
	snap := p.db.NewSnapshot()
	v.recounting, v.delta = true, 0
	gens := len(v.meta.Gens)
	size := v.size.Load()
	p.wmu.Unlock()

	var n int64
	err := p.resolve(snap, v, 0, uint64(size-1)/cdp.BlockSize, Head, func(_ uint64, e entry) bool {
		if e.kind == entryData {
			n++
		}
		return true
	})
	snap.Close()

	p.wmu.Lock()
	defer p.wmu.Unlock()
	v.recounting = false
	if p.wmu.closed || v.gone.Load() {
		return
	}
	if err != nil {
		p.opts.Logger.Error("recounting written blocks failed", "volume", v.name, "err", err)
		return
	}
	if len(v.meta.Gens) != gens || v.size.Load() != size {
		// A rollback or resize raced the count: its own recount follows.
		return
	}
	v.written = n + v.delta
	v.meta.WrittenStale = false
	b := p.db.NewBatch()
	defer b.Close()
	b.Set(volumeKey(prefixVolume, v.id), v.encode(), nil)
	b.Set(metaKey(v.id), v.meta.encode(), nil)
	if err := b.Commit(pebble.NoSync); err != nil {
		p.opts.Logger.Error("saving the written count failed", "volume", v.name, "err", err)
	}
}
