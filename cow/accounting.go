package cow

import (
	"sort"

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

// ownedPoint is a retained point and the live volume that keeps it (0:
// several, or none: a deletion frees nothing it sees).
type ownedPoint struct {
	seq   uint64
	owner uint64
}

// ownedPointsLocked lists, per volume, the retained points of rets with
// the live volume whose deletion would drop each: a live volume's own
// snapshots and open readers, and the base points of its generations and
// of its ancestors' (a base volume, once deleted, keeps all of its own
// generations' bases for its clones).
// A point several volumes keep is listed once for each. Sorted by seq.
func (p *Pool) ownedPointsLocked(rets map[uint64]*retainers) map[uint64][]ownedPoint {
	own := map[uint64][]ownedPoint{}
	for id, r := range rets {
		if r.window == 0 {
			continue
		}
		for _, sn := range r.v.meta.Snapshots {
			own[id] = append(own[id], ownedPoint{sn.Seq, id})
		}
		seen := map[uint64]bool{id: true}
		var walk func(gens []gen)
		walk = func(gens []gen) {
			for _, g := range gens {
				b := rets[g.BaseVol]
				if g.BaseVol == 0 || b == nil {
					continue
				}
				own[g.BaseVol] = append(own[g.BaseVol], ownedPoint{g.BaseSeq, id})
				if !seen[g.BaseVol] {
					seen[g.BaseVol] = true
					walk(b.gens)
				}
			}
		}
		walk(r.gens)
	}
	for k := range p.wmu.pins {
		if r := rets[k[0]]; r != nil {
			o := k[0]
			if r.window == 0 {
				o = 0
			}
			own[k[0]] = append(own[k[0]], ownedPoint{k[1], o})
		}
	}
	for _, l := range own {
		sort.Slice(l, func(a, b int) bool { return l[a].seq < l[b].seq })
	}
	return own
}

// soleOwner is the one live volume whose deletion would make version s of
// a block of volume vol (next newer version next) dead: the only one whose
// window or points see it. 0: none or several.
func soleOwner(r *retainers, own []ownedPoint, vol, s, next uint64) uint64 {
	var owner uint64
	add := func(id uint64) bool {
		if id == 0 || (owner != 0 && owner != id) {
			owner = 0
			return false
		}
		owner = id
		return true
	}
	if r.window != 0 {
		if q := max(s, r.window); q < next && r.genStart(q) < s {
			add(vol)
		}
	}
	i := sort.Search(len(own), func(i int) bool { return own[i].seq >= s })
	for ; i < len(own) && own[i].seq < next; i++ {
		if r.genStart(own[i].seq) < s && !add(own[i].owner) {
			return 0
		}
	}
	return owner
}
