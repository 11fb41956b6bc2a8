package cow

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/cdp"
)

// TestHeadMapSparePages: pages evicted or refused are reused by later
// loads, always all zero (a stale entry would make an unwritten block
// read as data), and at most maxSparePages a shard are kept.
func TestHeadMapSparePages(t *testing.T) {
	h := newHeadMap(1) // the smallest budget: 4 pages a shard
	k := pageKey{vol: 1, page: 0}
	s := h.shard(k)
	var installed []*headPage
	for pg := uint64(0); len(installed) < 64; pg++ {
		k := pageKey{vol: 1, page: pg}
		if h.shard(k) != s {
			continue
		}
		p := h.newPage(k)
		for i := range p {
			p[i] = entry{kind: entryData, seq: pg + 1}
		}
		h.install(k, h.stampOf(k), p)
		installed = append(installed, p)
	}
	s.mu.Lock()
	spare, pages := len(s.spare), len(s.pages)
	s.mu.Unlock()
	if pages > h.perShard || spare == 0 || spare > maxSparePages {
		t.Fatalf("shard: %d pages (at most %d), %d spare (want 1..%d)", pages, h.perShard, spare, maxSparePages)
	}
	reused := false
	for i := 0; i < spare; i++ {
		p := h.newPage(k)
		if *p != (headPage{}) {
			t.Fatal("a reused page is not all zero")
		}
		for _, q := range installed {
			reused = reused || p == q
		}
	}
	if !reused {
		t.Fatal("newPage did not reuse an evicted page")
	}
	// A load that raced a change is not installed: its page is kept.
	k2 := pageKey{vol: 2, page: 7}
	p := h.newPage(k2)
	st := h.stampOf(k2)
	h.set(2, 7<<headPageShift, entry{kind: entryData, seq: 9}) // absent page: bumps the stamp
	h.install(k2, st, p)
	s2 := h.shard(k2)
	s2.mu.Lock()
	defer s2.mu.Unlock()
	if s2.pages[k2] != nil || len(s2.spare) == 0 || s2.spare[len(s2.spare)-1] != p {
		t.Fatal("a refused page was installed or not kept as a spare")
	}
}

// TestHeadPageCost: an entry packs into 32 bytes (kind last), so the
// default --index-cache's head map holds the pages of two volumes a
// benchmark writes (1 GiB and 4 GiB, 20.5k pages) without evicting; a
// field order that pads it back to 40 bytes fits a fifth fewer pages.
func TestHeadPageCost(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n != 32 {
		t.Fatalf("entry is %d bytes, want 32", n)
	}
	if pages := headShare(64<<20) / headPageBytes; pages < 5<<12 {
		t.Fatalf("64 MiB of index memory holds %d head pages, want at least %d (5 GiB of volume)", pages, 5<<12)
	}
}

// TestFirstWriteNoSeek: the first write to a page of a new volume loads
// that page without an index seek (no record touched it), while a page
// that was written and then dropped from the head map is read back from
// the index; both count what they held correctly (written) and read back.
func TestFirstWriteNoSeek(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "v", 64<<20)
	page := int64(headPageBlocks * cdp.BlockSize)
	buf := bytes.Repeat([]byte{7}, cdp.BlockSize)
	before := p.Stats().IndexMemory
	for i := range int64(8) {
		if _, err := v.WriteAt(buf, i*page+page/2); err != nil {
			t.Fatal(err)
		}
	}
	im := p.Stats().IndexMemory
	if loads, seeks := im.HeadLoads-before.HeadLoads, im.HeadLoadsSeeks-before.HeadLoadsSeeks; loads < 8 || seeks != 0 {
		t.Fatalf("8 first writes to untouched pages: %d page loads, %d index seeks; want >= 8 and 0", loads, seeks)
	}
	// Drop every page: the next write to a written page must seek, and
	// must see the block there (written stays 8 blocks after rewriting it).
	id := v.v.id
	p.head.dropVolumes(func(vol uint64) bool { return vol == id })
	if _, err := v.WriteAt(buf, page/2); err != nil {
		t.Fatal(err)
	}
	if after := p.Stats().IndexMemory; after.HeadLoadsSeeks-im.HeadLoadsSeeks != 1 {
		t.Fatalf("a write to a written page not in the head map: %d index seeks, want 1", after.HeadLoadsSeeks-im.HeadLoadsSeeks)
	}
	info, err := p.VolumeInfo("v")
	if err != nil {
		t.Fatal(err)
	}
	if info.Written != 8*cdp.BlockSize {
		t.Fatalf("written %d, want %d", info.Written, 8*cdp.BlockSize)
	}
	got := make([]byte, cdp.BlockSize)
	for i := range int64(8) {
		if _, err := v.ReadAt(got, i*page+page/2); err != nil || !bytes.Equal(got, buf) {
			t.Fatalf("block %d reads back wrong (%v)", i, err)
		}
	}
}
