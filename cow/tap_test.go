package cow

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
)

func tapAlloc(n int) []byte { return make([]byte, n) }

// journalChanges is what the journal says volume vol's changes in
// (after, upto] are.
func journalChanges(t *testing.T, p *Pool, vol string, after, upto uint64) []Change {
	t.Helper()
	var out []Change
	if err := p.ChangesInto(context.Background(), vol, after, upto, nil, tapAlloc, func(c *Change) error {
		out = append(out, *c)
		return nil
	}); err != nil {
		t.Fatalf("journal changes (%d, %d]: %v", after, upto, err)
	}
	return out
}

func tapChanges(t *testing.T, tp *Tap, after, upto uint64) []Change {
	t.Helper()
	var out []Change
	if err := tp.ChangesInto(context.Background(), after, upto, &Cursor{}, func(c *Change) error {
		out = append(out, *c)
		return nil
	}); err != nil {
		t.Fatalf("tap changes (%d, %d]: %v", after, upto, err)
	}
	return out
}

func sameChanges(t *testing.T, what string, got, want []Change) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d changes, the journal has %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if !bytes.Equal(g.Data, w.Data) || !bytes.Equal(g.Sums, w.Sums) {
			t.Fatalf("%s: change %d (seq %d, %s): data or checksums differ from the journal's", what, i, w.Seq, w.Kind)
		}
		g.Data, g.Sums, w.Data, w.Sums = nil, nil, nil, nil
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("%s: change %d: %+v, the journal has %+v", what, i, g, w)
		}
	}
}

// Every kind of change, through every write path (single records, edge
// merges, groups of concurrent writes, batches), comes out of the tap as
// the journal has it, and other volumes' changes stay out.
func TestTapMatchesJournal(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	a := mustVol(t, p, "a", 4<<20)
	b := mustVol(t, p, "b", 4<<20)
	if _, err := a.WriteAt(bytes.Repeat([]byte{1}, 8192), 0); err != nil { // before the tap
		t.Fatal(err)
	}
	tp, err := p.OpenTap("a", tapAlloc, 0)
	if err != nil || tp == nil {
		t.Fatalf("open tap: %v, %v", tp, err)
	}
	defer tp.Close()
	if again, err := p.OpenTap("a", tapAlloc, 0); again != nil || err != nil {
		t.Fatalf("a second tap on the volume: %v, %v", again, err)
	}
	start := p.AppliedSeq()

	blk := func(fill byte, n int) []byte { return bytes.Repeat([]byte{fill}, n) }
	steps := []func() error{
		func() error { _, err := a.WriteAt(blk(2, 4096), 4096); return err },
		func() error { _, err := b.WriteAt(blk(3, 4096), 0); return err },
		func() error { _, err := a.WriteAt(blk(4, 100), 10000); return err }, // partial: merged edges
		func() error { _, err := a.WriteAt(blk(5, 300<<10), 64<<10); return err },
		func() error {
			return a.WriteBatch([]BlockWrite{{Off: 1 << 20, Data: blk(6, 4096)}, {Off: 2 << 20, Data: blk(7, 8192)}})
		},
		func() error { return a.Trim(1<<20, 4096) },
		func() error { return a.WriteZeroes(2<<20, 4096, false) },
		func() error { return a.WriteZeroes(3<<20, 8192, true) },
		func() error { _, err := p.CreateSnapshot("a", "s1", "a label"); return err },
		func() error { _, err := p.CreateSnapshot("b", "s1", ""); return err },
		func() error { return p.ResizeVolume("a", 8<<20, false) },
		func() error { return p.DeleteSnapshot("a", "s1") },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	// Concurrent writers: their records are journaled in groups.
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				v := a
				if i%3 == 0 {
					v = b
				}
				if _, err := v.WriteAt(blk(byte(w*50+i), 4096), int64(w*50+i)*4096); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	upto := p.AppliedSeq()
	want := journalChanges(t, p, "a", start, upto)
	got := tapChanges(t, tp, start, upto)
	if tp.Served() != 1 {
		t.Fatalf("the tap served %d ranges from memory, want 1", tp.Served())
	}
	sameChanges(t, "tap", got, want)
	if len(want) < len(steps)-2+4*50*2/3 {
		t.Fatalf("only %d changes: the test did not write what it meant to", len(want))
	}

	// The next range continues where this one ended.
	nextRange(t, "the next range", p, a, tp, upto, 2)
}

// nextRange writes a block to v, the volume of tap tp, and checks that
// the tap gives the changes after point after as the journal does, with
// served ranges served from memory so far.
func nextRange(t *testing.T, what string, p *Pool, v *Volume, tp *Tap, after uint64, served int) {
	t.Helper()
	if _, err := v.WriteAt(bytes.Repeat([]byte{99}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	last := p.AppliedSeq()
	sameChanges(t, what, tapChanges(t, tp, after, last), journalChanges(t, p, v.Name(), after, last))
	if tp.Served() != served {
		t.Fatalf("%s: %d ranges served from memory, want %d", what, tp.Served(), served)
	}
}

// A reader behind the tap's start, or a tap that overflowed, is served
// from the journal, with the same result; an overflowed tap starts again
// and serves from memory once its reader has caught up.
func TestTapFallsBackToJournal(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	a := mustVol(t, p, "a", 4<<20)
	if _, err := a.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	before := p.AppliedSeq() - 1
	tp, err := p.OpenTap("a", tapAlloc, 64<<10)
	if err != nil || tp == nil {
		t.Fatalf("open tap: %v", err)
	}
	defer tp.Close()
	if _, err := a.WriteAt(bytes.Repeat([]byte{2}, 4096), 4096); err != nil {
		t.Fatal(err)
	}
	upto := p.AppliedSeq()
	// Behind the tap's start: the journal serves.
	sameChanges(t, "behind", tapChanges(t, tp, before, upto), journalChanges(t, p, "a", before, upto))
	if tp.Served() != 0 {
		t.Fatal("a range that starts before the tap was served from memory")
	}
	// Overflow: 128 KiB of writes into a 64 KiB tap.
	for i := 0; i < 32; i++ {
		if _, err := a.WriteAt(bytes.Repeat([]byte{byte(10 + i)}, 4096), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	full := p.AppliedSeq()
	sameChanges(t, "overflowed", tapChanges(t, tp, upto, full), journalChanges(t, p, "a", upto, full))
	if tp.Served() != 0 {
		t.Fatal("an overflowed tap served from memory")
	}
	// It started again at the pool's point then: the next range is its.
	nextRange(t, "after the restart", p, a, tp, full, 1)
}

// A deleted volume's tap does not hide the delete: its reader gets the
// error the journal path gives.
func TestTapVolumeDeleted(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	a := mustVol(t, p, "a", 1<<20)
	tp, err := p.OpenTap("a", tapAlloc, 0)
	if err != nil || tp == nil {
		t.Fatalf("open tap: %v", err)
	}
	defer tp.Close()
	start := p.AppliedSeq()
	if _, err := a.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := p.DeleteVolume("a", true); err != nil {
		t.Fatal(err)
	}
	none := func(*Change) error { return nil }
	err = tp.ChangesInto(context.Background(), start, p.AppliedSeq(), &Cursor{}, none)
	jerr := p.ChangesInto(context.Background(), "a", start, p.AppliedSeq(), nil, tapAlloc, none)
	if err == nil || !errors.Is(err, blockdev.ErrNotFound) || jerr == nil || err.Error() != jerr.Error() {
		t.Fatalf("changes of a deleted volume: from the tap %v, from the journal %v", err, jerr)
	}
	tp.Close()
	if _, err := p.OpenTap("a", tapAlloc, 0); err == nil {
		t.Fatal("a tap opened on a deleted volume")
	}
}

// Closing a tap detaches it: the volume can have a new one.
func TestTapClose(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	mustVol(t, p, "a", 1<<20)
	for i := 0; i < 2; i++ {
		tp, err := p.OpenTap("a", tapAlloc, 0)
		if err != nil || tp == nil {
			t.Fatalf("open %d: %v, %v", i, tp, err)
		}
		tp.Close()
	}
}

// The tap's memory bound counts what it holds, not what passed through
// it: a reader that keeps up is served from memory however much it reads
// in all (here 40 times the bound).
func TestTapDrainedStaysInMemory(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	a := mustVol(t, p, "a", 4<<20)
	tp, err := p.OpenTap("a", tapAlloc, 8<<10)
	if err != nil || tp == nil {
		t.Fatalf("open tap: %v", err)
	}
	defer tp.Close()
	after := p.AppliedSeq()
	for i := 0; i < 80; i++ {
		if _, err := a.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), int64(i%16)*4096); err != nil {
			t.Fatal(err)
		}
		upto := p.AppliedSeq()
		if got := tapChanges(t, tp, after, upto); len(got) != 1 || got[0].Data[0] != byte(i) {
			t.Fatalf("write %d: %d changes from the tap", i, len(got))
		}
		after = upto
	}
	if tp.Served() != 80 {
		t.Fatalf("%d of 80 ranges served from memory", tp.Served())
	}
}
