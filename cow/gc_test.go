package cow

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// After overwriting a volume several times beyond the retention window, a GC
// pass brings the journal within 1.3x of the data still visible, and every
// retained point reads as before.
func TestGCSpace(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	fs := vfs.NewMem()
	clk := newFakeClock()
	p := openClockPool(t, fs, clk, time.Minute)
	defer func() { p.Close() }()
	const size = 16 << 20
	v := mustVol(t, p, "vol", size)
	model := make([]byte, size)
	buf := make([]byte, 64<<10)
	for pass := 0; pass < 8; pass++ {
		for k := 0; k < size; k += len(buf) {
			off := k
			if pass%2 == 1 { // random places: segments end up partly live
				off = rng.IntN(size/len(buf)) * len(buf)
			}
			for i := range buf {
				buf[i] = byte(rng.IntN(256))
			}
			v.WriteAt(buf, int64(off))
			copy(model[off:], buf)
		}
		if pass == 3 {
			if _, err := p.CreateSnapshot("vol", "mid", ""); err != nil {
				t.Fatal(err)
			}
		}
	}
	snapModel := []byte(nil)
	{
		h, _ := p.OpenVolumeAt("vol", "mid")
		snapModel = mustRead(t, h, 0, size)
		h.Close()
	}
	before := p.j.Load().Stats().Bytes
	clk.Advance(2 * time.Minute)
	v.WriteAt(model[:4096], 0) // a record inside the new window
	var st GCStats
	var err error
	for i := 0; i < 3; i++ { // relocation fills new segments that a later pass may also compact
		if st, err = p.GC(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Logf("gc: %+v", st)
	}
	after := p.j.Load().Stats().Bytes
	live := int64(2 * size) // the head and the snapshot, which share nothing here
	t.Logf("journal %d -> %d bytes; live data %d (%.2fx)", before, after, live, float64(after)/float64(live))
	if float64(after) > 1.3*float64(live)+float64(2<<20) { // + the segment being written
		t.Fatalf("journal is %d bytes for %d live: over 1.3x", after, live)
	}
	if !bytes.Equal(mustRead(t, v, 0, size), model) {
		t.Fatal("head differs after gc")
	}
	h, err := p.OpenVolumeAt("vol", "mid")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustRead(t, h, 0, size), snapModel) {
		t.Fatal("snapshot differs after gc")
	}
	h.Close()
	// And after a restart.
	v.Close()
	p.Close()
	p = openClockPool(t, fs, clk, time.Minute)
	v, _ = p.OpenVolume("vol")
	if !bytes.Equal(mustRead(t, v, 0, size), model) {
		t.Fatal("head differs after gc and reopen")
	}
	v.Close()
}

// Deleting a volume frees its space, except what a clone still shows.
func TestGCDeletedVolumeAndClone(t *testing.T) {
	fs := vfs.NewMem()
	clk := newFakeClock()
	p := openClockPool(t, fs, clk, time.Minute)
	defer p.Close()
	const size = 4 << 20
	a := mustVol(t, p, "a", size)
	a.WriteAt(fill('a', size), 0)
	b := mustVol(t, p, "b", size)
	b.WriteAt(fill('b', size), 0)
	if _, err := p.Clone("b", "seq:"+itoa(p.wmu.applied), "c"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	p.DeleteVolume("a", false)
	p.DeleteVolume("b", false)
	clk.Advance(2 * time.Minute)
	c, _ := p.OpenVolume("c")
	c.WriteAt(fill('c', 4096), 0)
	for i := 0; i < 2; i++ {
		if _, err := p.GC(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	got := mustRead(t, c, 0, size)
	if got[0] != 'c' || !bytes.Equal(got[4096:], fill('b', size-4096)) {
		t.Fatal("clone of a deleted volume changed after gc")
	}
	if j := p.j.Load().Stats().Bytes; j > 2*size {
		t.Fatalf("journal %d bytes: the deleted volume's data was not freed (clone holds %d)", j, size)
	}
	c.Close()
}

// df classifies every live block: exclusive head data, head data shared
// with snapshots, data only one snapshot holds, data kept as a clone's
// origin, and history only the window holds.
func TestSpaceClasses(t *testing.T) {
	clk := newFakeClock()
	p := openClockPool(t, vfs.NewMem(), clk, time.Hour)
	defer p.Close()
	v := mustVol(t, p, "vol", 1<<20)
	defer v.Close()
	const a, b = 64 << 10, 32 << 10
	v.WriteAt(fill('A', a), 0)
	if _, err := p.CreateSnapshot("vol", "s1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Clone("vol", "s1", "c"); err != nil {
		t.Fatal(err)
	}
	v.WriteAt(fill('B', b), 0) // B overwrites part of A; the rest of A stays at the head
	space := func() VolumeSpace {
		t.Helper()
		sp, err := p.Space()
		if err != nil {
			t.Fatal(err)
		}
		for _, vs := range sp.Volumes {
			if vs.Name == "vol" {
				return vs
			}
		}
		t.Fatal("vol missing from df")
		return VolumeSpace{}
	}
	vs := space()
	// Head: B (own, no snapshot) and A's tail (also in s1). The overwritten
	// part of A: held by s1 and by the clone's origin: origin, not s1's alone.
	if vs.Exclusive != b || vs.Shared != a-b || vs.Origin != b || vs.SnapshotExclusive["s1"] != 0 {
		t.Fatalf("with a clone of s1: %+v", vs)
	}
	if err := p.DeleteVolume("c", true); err != nil {
		t.Fatal(err)
	}
	vs = space()
	if vs.Origin != 0 || vs.SnapshotExclusive["s1"] != b {
		t.Fatalf("after deleting the clone, s1 alone holds the overwritten A: %+v", vs)
	}
	if err := p.DeleteSnapshot("vol", "s1"); err != nil {
		t.Fatal(err)
	}
	vs = space()
	if vs.History != b || vs.Exclusive != a {
		t.Fatalf("after deleting s1 the old A is history, the head is exclusive: %+v", vs)
	}
	if vs.Written != a {
		t.Fatalf("written %d, want %d", vs.Written, a)
	}
}

// TestPinClean: a replication pin on an idle volume holds the journal of
// every volume after it (GC frees segments below the lowest window); a
// clean range (no records of the volume up to there) releases it. Moving
// the pin forward keeps the range, moving it back drops it, and it
// survives a restart.
func TestPinClean(t *testing.T) {
	fs := vfs.NewMem()
	clk := newFakeClock()
	p := openClockPool(t, fs, clk, time.Minute)
	defer func() { p.Close() }()
	idle := mustVol(t, p, "idle", 1<<20)
	idle.WriteAt(make([]byte, 4096), 0)
	idle.Close()
	acked := p.AppliedSeq()
	if err := p.PinShipped("t", "idle", acked); err != nil {
		t.Fatal(err)
	}
	busy := mustVol(t, p, "busy", 4<<20)
	defer busy.Close()
	buf := make([]byte, 64<<10)
	for pass := 0; pass < 8; pass++ {
		for off := 0; off < 4<<20; off += len(buf) {
			busy.WriteAt(buf, int64(off))
		}
	}
	clk.Advance(2 * time.Minute)
	busy.WriteAt(buf[:4096], 0)
	gc := func() int64 {
		t.Helper()
		for i := 0; i < 2; i++ {
			if _, err := p.GC(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		return p.j.Load().Stats().Bytes
	}
	held := gc()
	if err := p.PinClean("t", "idle", acked, p.AppliedSeq()); err != nil {
		t.Fatal(err)
	}
	freed := gc()
	t.Logf("journal with the pin at the idle volume's point: %d bytes; with its clean range: %d", held, freed)
	if held < 32<<20 || freed > 8<<20 {
		t.Fatalf("journal %d bytes held by the pin, %d after the clean range: the range did not release it", held, freed)
	}
	clean := p.ShipPins()["t"].Clean
	if err := p.PinShipped("t", "idle", acked); err != nil {
		t.Fatal(err)
	}
	if pin := p.ShipPins()["t"]; pin.Clean != clean || pin.Floor() != clean {
		t.Fatalf("pin moved to the same point lost its clean range: %+v", pin)
	}
	p.Close()
	p = openClockPool(t, fs, clk, time.Minute)
	if pin := p.ShipPins()["t"]; pin.Seq != acked || pin.Clean != clean {
		t.Fatalf("pin after a restart: %+v, want seq %d clean %d", pin, acked, clean)
	}
	if err := p.PinShipped("t", "idle", acked-1); err != nil {
		t.Fatal(err)
	}
	if pin := p.ShipPins()["t"]; pin.Clean != 0 {
		t.Fatalf("a pin moved back kept its clean range: %+v", pin)
	}
}
