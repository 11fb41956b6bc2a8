package cow

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/cdp"
)

// countKeys counts the 'b' and 'c' keys of the index.
func countKeys(t *testing.T, p *Pool) (blocks, chunks int) {
	t.Helper()
	for _, pr := range []byte{prefixBlock, prefixChunk} {
		it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{pr}, UpperBound: []byte{pr + 1}})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for ok := it.First(); ok; ok = it.Next() {
			n++
		}
		it.Close()
		if pr == prefixBlock {
			blocks = n
		} else {
			chunks = n
		}
	}
	return blocks, chunks
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.IntN(256))
	}
	return b
}

// Large writes are indexed by chunk: one key per whole aligned chunk, block
// keys for the edges. Reads of the head and of points in time, relocation
// (a scrub's repair), garbage collection and scrub all see the blocks a
// chunk key holds as if each had its own key.
func TestChunkKeys(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	fs := vfs.NewMem()
	clk := newFakeClock()
	p := openClockPool(t, fs, clk, time.Hour)
	defer func() { p.Close() }()
	const size = 4 << 20
	v := mustVol(t, p, "v", size)
	model := make([]byte, size)
	write := func(off int64, b []byte) {
		t.Helper()
		if _, err := v.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], b)
	}
	write(0, randBytes(rng, 1<<20))
	if b, c := countKeys(t, p); b != 0 || c != 16 {
		t.Fatalf("aligned 1 MiB write: %d block keys, %d chunk keys; want 0 and 16", b, c)
	}
	// Blocks 513..768: 15 edge blocks, 15 chunks, 1 edge block.
	write(2<<20+bs, randBytes(rng, 1<<20))
	if b, c := countKeys(t, p); b != 16 || c != 31 {
		t.Fatalf("unaligned 1 MiB write: %d block keys, %d chunk keys; want 16 and 31", b, c)
	}
	if _, err := p.CreateSnapshot("v", "s1", ""); err != nil {
		t.Fatal(err)
	}
	s1 := bytes.Clone(model)
	write(5*bs, randBytes(rng, bs))
	write(100*bs+7, randBytes(rng, 3*bs)) // unaligned: merges with the chunk's blocks
	if err := v.Trim(40*bs, 8*bs); err != nil {
		t.Fatal(err)
	}
	clear(model[40*bs : 48*bs])
	if _, err := p.CreateSnapshot("v", "s2", ""); err != nil {
		t.Fatal(err)
	}
	s2 := bytes.Clone(model)
	write(1<<20-8*bs, randBytes(rng, 64*bs)) // across the first write's end
	check := func(when string) {
		t.Helper()
		if got := readAll(t, v); !bytes.Equal(got, model) {
			t.Fatalf("%s: head differs from the model", when)
		}
		for name, want := range map[string][]byte{"s1": s1, "s2": s2} {
			pv, err := p.OpenVolumeAt("v", name)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, pv); !bytes.Equal(got, want) {
				t.Fatalf("%s: snapshot %s differs from the model", when, name)
			}
			pv.Close()
		}
	}
	check("after writes")

	// A relocate record (what a scrub's repair writes) for one block of a
	// chunk splits the chunk key: the block moves, its neighbours stay.
	e := versionAt(p, v.v.id, 20, Head)
	if e.kind != entryData {
		t.Fatalf("block 20: %+v", e)
	}
	data := model[20*bs : 21*bs]
	if err := p.writeRelocate(v.v.id, 20, e.seq, e.crc, data); err != nil {
		t.Fatal(err)
	}
	if m := versionAt(p, v.v.id, 20, Head); m.seq != e.seq || m.seg == e.seg && m.off == e.off {
		t.Fatalf("block 20 not moved: was %+v, now %+v", e, m)
	}
	if _, _, err := p.db.Get(chunkKey(nil, v.v.id, 1, e.seq)); err == nil {
		t.Fatal("the relocated block's chunk key is still there")
	}
	check("after a relocation")

	// Reopen (replay and a persisted index alike), then let s1 go and
	// collect: chunks with blocks no point needs any more are split or
	// dropped, and every retained point reads the same.
	p.Close()
	p = openClockPool(t, fs, clk, time.Hour)
	v = mustOpen(t, p, "v")
	check("after reopening")
	if err := p.DeleteSnapshot("v", "s1"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)
	for i := 0; i < 2; i++ {
		if _, err := p.GC(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	s1 = nil
	for name, want := range map[string][]byte{"s2": s2} {
		pv, err := p.OpenVolumeAt("v", name)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, pv); !bytes.Equal(got, want) {
			t.Fatalf("after gc: snapshot %s differs from the model", name)
		}
		pv.Close()
	}
	if got := readAll(t, v); !bytes.Equal(got, model) {
		t.Fatal("after gc: head differs from the model")
	}
	// Chunk 0's block 5 version of the first write is seen by no point:
	// its chunk key is gone, its other blocks have their own keys.
	first := versionAt(p, v.v.id, 0, Head)
	if _, _, err := p.db.Get(chunkKey(nil, v.v.id, 0, first.seq)); err == nil {
		t.Fatal("chunk 0 of the first write: chunk key still there after its block 5 died")
	}

	// Scrub finds a damaged block inside a chunk, exactly.
	e = versionAt(p, v.v.id, 600, Head)
	flipAt(t, fs, p, e)
	rep, err := p.Scrub(context.Background(), ScrubOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 1 || rep.Damaged[0].Offset != 600*bs || rep.Damaged[0].Seq != e.seq {
		t.Fatalf("scrub: %+v, want block 600 at seq %d", rep.Damaged, e.seq)
	}
	if _, err := readBlock(v, 600*bs); err == nil {
		t.Fatal("a damaged block inside a chunk read without error")
	}
}

func mustOpen(t *testing.T, p *Pool, name string) *Volume {
	t.Helper()
	v, err := p.OpenVolume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// writeRelocate writes a relocate record that moves version seq of (vol,
// block) to a new copy of data, as a scrub's repair does.
func (p *Pool) writeRelocate(vol, block, seq uint64, crc uint32, data []byte) error {
	meta := cdp.AppendRelocateEntry(nil, cdp.RelocateEntry{Volume: vol, Block: block, Seq: seq, CRC: crc})
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.appendLocked(&cdp.Record{Kind: cdp.KindRelocate, Length: uint64(len(data)), Data: bytes.Clone(data), Meta: meta})
}
