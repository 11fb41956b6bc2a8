package cow

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
)

// pieces counts the runs of blocks that sit next to each other in the
// journal, per extent of v's head, and returns the largest count.
func maxPieces(t *testing.T, p *Pool, v *Volume) int {
	t.Helper()
	worst := 0
	for first := uint64(0); first < uint64(v.Size())/bs; first += defragExtent {
		var es []liveBlock
		if err := p.versions(v.v, first, defragExtent, Head, false, func(b uint64, e entry) bool {
			if e.kind == entryData {
				es = append(es, liveBlock{block: b, seg: e.seg, off: e.off})
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
		n := 0
		for i := range es {
			if i == 0 || es[i].block != es[i-1].block+1 || es[i].seg != es[i-1].seg || es[i].off != es[i-1].off+bs {
				n++
			}
		}
		worst = max(worst, n)
	}
	return worst
}

// A volume overwritten at random reads its head from scattered places;
// an explicit pass rewrites it in block order (runs of whole extents), and
// every point reads as before: the head, a snapshot taken in the middle of
// the overwrite, the prefill's point in time, and all of it after a restart.
func TestDefragRewritesInBlockOrder(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	fs := vfs.NewMem()
	p := openPool(t, fs)
	defer func() { p.Close() }()
	const size = 4 << 20
	v := mustVol(t, p, "vol", size)
	model := make([]byte, size)
	for i := range model {
		model[i] = byte(rng.IntN(256))
	}
	if _, err := v.WriteAt(model, 0); err != nil {
		t.Fatal(err)
	}
	prefill := p.j.Load().LastSeq()
	prefillModel := append([]byte(nil), model...)
	var midModel []byte
	order := rng.Perm(size / bs)
	for k, b := range order {
		blk := model[b*bs : (b+1)*bs]
		for i := range blk {
			blk[i] = byte(rng.IntN(256))
		}
		if _, err := v.WriteAt(blk, int64(b)*bs); err != nil {
			t.Fatal(err)
		}
		if k == len(order)/2 {
			if _, err := p.CreateSnapshot("vol", "mid", ""); err != nil {
				t.Fatal(err)
			}
			midModel = append([]byte(nil), model...)
		}
	}
	if n := maxPieces(t, p, v); n < 64 {
		t.Fatalf("the overwrite left at most %d pieces an extent: not fragmented, the test proves nothing", n)
	}
	st, err := p.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc: %+v", st)
	if st.ExtentsRewritten != size/bs/defragExtent || st.BytesDefragmented != size {
		t.Fatalf("rewrote %d extents, %d bytes; want every extent of the volume", st.ExtentsRewritten, st.BytesDefragmented)
	}
	if n := maxPieces(t, p, v); n != 1 {
		t.Fatalf("after defragmentation an extent is still in %d pieces", n)
	}
	check := func(when string) {
		t.Helper()
		if !bytes.Equal(mustRead(t, v, 0, size), model) {
			t.Fatalf("%s: head differs", when)
		}
		for spec, want := range map[string][]byte{"mid": midModel, "seq:" + uitoa(prefill): prefillModel} {
			h, err := p.OpenVolumeAt("vol", spec)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(mustRead(t, h, 0, size), want) {
				t.Fatalf("%s: point %s differs", when, spec)
			}
			h.Close()
		}
	}
	check("after gc")
	// A second pass finds nothing left to do.
	if st, err = p.GC(context.Background()); err != nil || st.ExtentsRewritten != 0 {
		t.Fatalf("second pass rewrote %d extents (err %v)", st.ExtentsRewritten, err)
	}
	v.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p = openPool(t, fs)
	if v, err = p.OpenVolume("vol"); err != nil {
		t.Fatal(err)
	}
	check("after restart")
	if n := maxPieces(t, p, v); n != 1 {
		t.Fatalf("after restart an extent is in %d pieces", n)
	}
	v.Close()
}

// The background pass rewrites only extents written before the last
// interval and left alone since: one still being written waits.
func TestDefragWaitsForQuiet(t *testing.T) {
	fs := vfs.NewMem()
	p := openPool(t, fs)
	defer p.Close()
	const size = 2 << 20 // two extents
	v := mustVol(t, p, "vol", size)
	rng := rand.New(rand.NewPCG(1, 2))
	scatter := func(extent int) {
		for _, b := range rng.Perm(defragExtent) {
			if _, err := v.WriteAt(fill(byte(b), bs), int64(extent*defragExtent+b)*bs); err != nil {
				t.Fatal(err)
			}
		}
	}
	scatter(0)
	scatter(1)
	ctx := context.Background()
	st, err := p.gc(ctx, false) // both were written in this interval
	if err != nil || st.ExtentsRewritten != 0 {
		t.Fatalf("first pass rewrote %d extents (err %v); want none", st.ExtentsRewritten, err)
	}
	scatter(1) // extent 1 is still busy
	if st, err = p.gc(ctx, false); err != nil || st.ExtentsRewritten != 1 || st.ExtentsExamined != 1 {
		t.Fatalf("second pass examined %d and rewrote %d extents (err %v); want extent 0 only", st.ExtentsExamined, st.ExtentsRewritten, err)
	}
	if st, err = p.gc(ctx, false); err != nil || st.ExtentsRewritten != 1 {
		t.Fatalf("third pass rewrote %d extents (err %v); want extent 1", st.ExtentsRewritten, err)
	}
	if n := maxPieces(t, p, v); n != 1 {
		t.Fatalf("an extent is still in %d pieces", n)
	}
	// A clone's head shows its base's versions, which belong to another
	// volume: an explicit pass leaves the clone alone and it reads as it did.
	if _, err := p.Clone("vol", "seq:"+uitoa(p.j.Load().LastSeq()), "c"); err != nil {
		t.Fatal(err)
	}
	c, err := p.OpenVolume("c")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, b := range rng.Perm(defragExtent) {
		if _, err := c.WriteAt(fill(byte(b+9), bs), int64(b)*bs); err != nil {
			t.Fatal(err)
		}
	}
	want := mustRead(t, c, 0, size)
	if st, err = p.GC(ctx); err != nil || st.ExtentsRewritten != 0 {
		t.Fatalf("pass with a fragmented clone rewrote %d extents (err %v); want none", st.ExtentsRewritten, err)
	}
	if !bytes.Equal(mustRead(t, c, 0, size), want) {
		t.Fatal("the clone reads differently after a pass")
	}
}

// A damaged block stays where it is (and keeps reading as EIO); the rest
// of its extent is rewritten.
func TestDefragLeavesDamageInPlace(t *testing.T) {
	fs := vfs.NewMem()
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, CheckpointInterval: -1, CacheSize: 1 << 20, TailCache: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v := mustVol(t, p, "vol", 1<<20)
	for _, b := range rand.New(rand.NewPCG(3, 4)).Perm(defragExtent) {
		if _, err := v.WriteAt(fill(byte(b+1), bs), int64(b)*bs); err != nil {
			t.Fatal(err)
		}
	}
	v.Flush()
	var e entry
	visit(p.db, v.v.id, 7, 7, Head, func(_ uint64, x entry) bool { e = x; return false })
	f, err := fs.OpenReadWrite(p.j.Load().SegmentPath(e.seg), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xff}, e.off+10)
	f.Close()
	st, err := p.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.BytesDefragmented != (defragExtent-1)*bs {
		t.Fatalf("rewrote %d bytes; want the extent but the damaged block", st.BytesDefragmented)
	}
	if _, err := v.ReadAt(make([]byte, bs), 7*bs); !errors.Is(err, blockdev.ErrIO) {
		t.Fatalf("damaged block: want EIO, got %v", err)
	}
	for _, b := range []int64{0, 6, 8, defragExtent - 1} {
		if got := mustRead(t, v, b*bs, bs); !bytes.Equal(got, fill(byte(b+1), bs)) {
			t.Fatalf("block %d reads wrong data after the rewrite", b)
		}
	}
}

// A pass that runs out of its budget leaves the rest of the quiet extents
// for a later pass instead of forgetting them.
func TestDefragBudgetCarriesOver(t *testing.T) {
	fs := vfs.NewMem()
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, CheckpointInterval: -1, CacheSize: 1 << 20, GCInterval: -1, GCBatchBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v := mustVol(t, p, "vol", 3<<20)
	defer v.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	for x := 0; x < 3; x++ {
		for _, b := range rng.Perm(defragExtent) {
			if _, err := v.WriteAt(fill(byte(b), bs), int64(x*defragExtent+b)*bs); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	moved := int64(0)
	for pass := 0; pass < 8 && moved < 3; pass++ {
		st, err := p.gc(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		if st.ExtentsRewritten > 1 {
			t.Fatalf("pass %d rewrote %d extents with a 1 MiB budget", pass, st.ExtentsRewritten)
		}
		moved += st.ExtentsRewritten
	}
	if moved != 3 {
		t.Fatalf("rewrote %d of 3 fragmented extents in 8 passes: the budget dropped some", moved)
	}
	if n := maxPieces(t, p, v); n != 1 {
		t.Fatalf("an extent is still in %d pieces", n)
	}
}
