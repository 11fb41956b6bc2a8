package cow

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/strata-storage/strata/cdp"
)

// headMap keeps in memory, for pages of headPageBlocks blocks, where each
// block's newest version is: the head's view, resolved through the
// volume's generations and bases, exactly what resolve(Head) answers. Reads
// of the head and the write path's "did this block hold data" check then
// cost a map lookup instead of an index seek.
//
// Every page is whole and clean: it holds the truth for all its blocks,
// and the index (pebble) holds the same, so a page can be dropped at any
// time and loaded again. Writers (under the pool's write lock) commit to
// the index first and then update the page if it is present; a page that
// is absent gets its shard's stamp bumped instead, and so does every
// eviction (the evicted page may have taken a write a loader missed). A
// load reads the stamp before it reads the index and installs the page
// only if the stamp is unchanged and the page still absent, so a load that
// raced a commit is used once and never cached. Memory is bounded (P5):
// pages are evicted at random beyond the budget.
type headMap struct {
	shards   [headShards]headShard
	perShard int // pages a shard holds at most
	// drops is bumped when pages are dropped wholesale (rollback, delete,
	// relocation under clones): loads in flight then install nothing.
	drops atomic.Uint64
}

const (
	headPageShift  = 6
	headPageBlocks = 1 << headPageShift
	headShards     = 64
)

// headPageBytes is what a page costs in memory (entries, map slot, header).
const headPageBytes = headPageBlocks*int64(unsafe.Sizeof(entry{})) + 96

type headShard struct {
	mu    sync.RWMutex
	pages map[pageKey]*headPage
	stamp uint64
	// spare holds pages evicted or not installed, for the next loads:
	// memory already in use costs no page faults, where a new page's
	// first touch does (on the PVM machine of 2026-12-02 the first
	// copy into new pages was 9% of 4 KiB random writes to a new volume).
	spare []*headPage
}

// maxSparePages bounds a shard's spare pages (2.2 MB in all, beyond the
// head map's budget).
const maxSparePages = 16

// newPage returns an all-zero page for a load of page k: a spare of k's
// shard, else a new one.
func (h *headMap) newPage(k pageKey) *headPage {
	if h == nil {
		return new(headPage)
	}
	s := h.shard(k)
	s.mu.Lock()
	n := len(s.spare)
	if n == 0 {
		s.mu.Unlock()
		return new(headPage)
	}
	pg := s.spare[n-1]
	s.spare[n-1] = nil
	s.spare = s.spare[:n-1]
	s.mu.Unlock()
	*pg = headPage{}
	return pg
}

// keepSpareLocked keeps pg, which nothing refers to any more, for newPage;
// under s.mu.
func (s *headShard) keepSpareLocked(pg *headPage) {
	if len(s.spare) < maxSparePages {
		s.spare = append(s.spare, pg)
	}
}

type pageKey struct{ vol, page uint64 }

type headPage [headPageBlocks]entry

// headShare is the part of the index's memory the head map gets.
func headShare(indexMemory int64) int64 { return indexMemory * 3 / 4 }

func newHeadMap(budget int64) *headMap {
	if budget <= 0 {
		return nil
	}
	h := &headMap{perShard: int(max(budget/headPageBytes/headShards, 4))}
	for i := range h.shards {
		h.shards[i].pages = make(map[pageKey]*headPage)
	}
	return h
}

// bytes is the memory the head map's pages hold now.
func (h *headMap) bytes() int64 {
	if h == nil {
		return 0
	}
	var n int64
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.RLock()
		n += int64(len(s.pages))
		s.mu.RUnlock()
	}
	return n * headPageBytes
}

func (h *headMap) shard(k pageKey) *headShard {
	x := k.vol*0x9E3779B97F4A7C15 ^ k.page*0xBF58476D1CE4E5B9
	return &h.shards[(x^x>>29)%headShards]
}

// copyPage copies entries [i, i+len(dst)) of page k into dst if the page
// is present.
func (h *headMap) copyPage(k pageKey, i uint64, dst []entry) bool {
	if h == nil {
		return false
	}
	s := h.shard(k)
	s.mu.RLock()
	pg := s.pages[k]
	if pg != nil {
		copy(dst, pg[i:])
	}
	s.mu.RUnlock()
	return pg != nil
}

// copyRange copies the entries of blocks [first, first+len(dst)) of vol
// into dst if every page they fall in is present.
func (h *headMap) copyRange(vol, first uint64, dst []entry) bool {
	end := first + uint64(len(dst))
	for b := first; b < end; {
		i := b & (headPageBlocks - 1)
		n := min(end-b, headPageBlocks-i)
		if !h.copyPage(pageKey{vol, b >> headPageShift}, i, dst[b-first:b-first+n]) {
			return false
		}
		b += n
	}
	return true
}

// loadStamp is what a load of page k carries: it installs only if nothing
// changed the page since.
type loadStamp struct{ shard, drops uint64 }

func (h *headMap) stampOf(k pageKey) loadStamp {
	if h == nil {
		return loadStamp{}
	}
	s := h.shard(k)
	s.mu.RLock()
	st := s.stamp
	s.mu.RUnlock()
	return loadStamp{st, h.drops.Load()}
}

// install adds a loaded page unless a change raced its load.
func (h *headMap) install(k pageKey, st loadStamp, pg *headPage) {
	if h == nil {
		return
	}
	s := h.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stamp != st.shard || h.drops.Load() != st.drops || s.pages[k] != nil {
		s.keepSpareLocked(pg) // the loader has copied what it needed
		return
	}
	if len(s.pages) >= h.perShard {
		for old, opg := range s.pages { // random eviction: pages are clean
			delete(s.pages, old)
			s.keepSpareLocked(opg)
			break
		}
		// A write may have updated the evicted page instead of bumping
		// the stamp: loads that started before it must not install.
		s.stamp++
	}
	s.pages[k] = pg
}

// set records that block b of vol now holds e. Called after the index
// commit that made it so.
func (h *headMap) set(vol, b uint64, e entry) { h.update(vol, b, e, 0) }

// relocated points block b of vol at its new place if the page shows the
// version that moved (sequence seq).
func (h *headMap) relocated(vol, b, seq uint64, e entry) { h.update(vol, b, e, seq) }

// update sets block b's entry to e (only if it shows version ifSeq, when
// that is not 0), or bumps the stamp of its absent page.
func (h *headMap) update(vol, b uint64, e entry, ifSeq uint64) {
	if h == nil {
		return
	}
	k := pageKey{vol, b >> headPageShift}
	s := h.shard(k)
	s.mu.Lock()
	if pg := s.pages[k]; pg != nil {
		if x := &pg[b&(headPageBlocks-1)]; ifSeq == 0 || (x.seq == ifSeq && x.kind == entryData) {
			*x = e
		}
	} else {
		s.stamp++
	}
	s.mu.Unlock()
}

// dropVolumes forgets the pages of the volumes for which drop is true.
func (h *headMap) dropVolumes(drop func(vol uint64) bool) {
	if h == nil {
		return
	}
	h.drops.Add(1)
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for k := range s.pages {
			if drop(k.vol) {
				delete(s.pages, k)
			}
		}
		s.mu.Unlock()
	}
}

// headEntries fills es with the head's entries of blocks [first,
// first+len(es)) of v, loading absent pages from the index. A page whose
// load raced a write is used for this call only (it is a consistent view
// of a moment during the call) and not kept.
func (p *Pool) headEntries(v *volState, first uint64, es []entry) error {
	end := first + uint64(len(es))
	for b := first; b < end; {
		pg := b >> headPageShift
		i := b & (headPageBlocks - 1)
		n := min(end-b, headPageBlocks-i)
		dst := es[b-first : b-first+n]
		if !p.head.copyPage(pageKey{v.id, pg}, i, dst) {
			if err := p.loadHeadPage(v, pg, i, dst); err != nil {
				return err
			}
		}
		b += n
	}
	return nil
}

// loadHeadPage reads page pg of v from the index, copies its entries from
// i on into dst, and installs it (once installed, writers change it under
// its shard's lock).
func (p *Pool) loadHeadPage(v *volState, pg, i uint64, dst []entry) error {
	k := pageKey{v.id, pg}
	st := p.head.stampOf(k)
	page := p.head.newPage(k)
	first := pg << headPageShift
	p.headLoads.Add(1)
	if !v.pageUnused(pg) || v.loadGens()[0].BaseVol != 0 {
		p.headSeeks.Add(1)
		err := p.resolve(p.db, v, first, first+headPageBlocks-1, Head, func(b uint64, e entry) bool {
			page[b-first] = e
			return true
		})
		if err != nil {
			return err
		}
	}
	copy(dst, page[i:])
	p.head.install(k, st, page)
	return nil
}

// setWrite records that a write record (sequence seq, data at dataOff of
// segment seg, checksums in meta) now holds blocks from first on.
func (h *headMap) setWrite(vol, first, seq, seg uint64, dataOff int64, meta []byte) {
	if h == nil {
		return
	}
	n := uint64(len(meta) / 4)
	for b := first; b < first+n; {
		k := pageKey{vol, b >> headPageShift}
		s := h.shard(k)
		i := b & (headPageBlocks - 1)
		m := min(first+n-b, headPageBlocks-i)
		s.mu.Lock()
		if pg := s.pages[k]; pg != nil {
			for j := uint64(0); j < m; j++ {
				x := b - first + j
				pg[i+j] = entry{kind: entryData, seq: seq, seg: seg, off: dataOff + int64(x)*cdp.BlockSize, crc: cdp.BlockChecksum(meta, int(x))}
			}
		} else {
			s.stamp++
		}
		s.mu.Unlock()
		b += m
	}
}
