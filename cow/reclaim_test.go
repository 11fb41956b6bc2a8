package cow

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// What df says deleting a volume frees (Reclaimable) is what deleting it
// then frees: the live bytes drop by exactly that, through snapshots,
// history, a rollback, clones that keep part of a volume, and a deleted
// volume that only a clone still shows.
func TestReclaimableIsWhatDeletingFrees(t *testing.T) {
	clk := newFakeClock()
	p := openClockPool(t, vfs.NewMem(), clk, time.Hour)
	defer p.Close()
	const k = 4096
	write := func(vol string, b byte, off, n int) {
		t.Helper()
		v, err := p.OpenVolume(vol)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.WriteAt(fill(b, n), int64(off)); err != nil {
			t.Fatal(err)
		}
		v.Close()
	}
	snap := func(vol, name string) {
		t.Helper()
		if _, err := p.CreateSnapshot(vol, name, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"a", "b", "lone"} {
		if _, err := p.CreateVolume(n, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	// a: head, a snapshot's old data, history; a clone d of its snapshot.
	write("a", 'a', 0, 16*k)
	snap("a", "s1")
	write("a", 'A', 0, 4*k)
	write("a", 'X', 0, 2*k) // history
	if _, err := p.Clone("a", "s1", "d"); err != nil {
		t.Fatal(err)
	}
	write("d", 'd', 8*k, 2*k)
	// b: rolled back to its snapshot (the newer writes stay as history),
	// then a clone c of its head.
	write("b", 'b', 0, 8*k)
	snap("b", "s")
	write("b", 'B', 0, 8*k)
	if _, err := p.Rollback("b", "s", false); err != nil {
		t.Fatal(err)
	}
	write("b", 'r', 0, k)
	if _, err := p.Clone("b", "seq:"+itoa(p.AppliedSeq()), "c"); err != nil {
		t.Fatal(err)
	}
	write("b", 'n', 4*k, 3*k)
	write("c", 'c', 0, k)
	write("lone", 'l', 0, 5*k)

	space := func() (Space, map[string]VolumeSpace) {
		t.Helper()
		sp, err := p.Space()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]VolumeSpace{}
		for _, vs := range sp.Volumes {
			m[vs.Name] = vs
		}
		return sp, m
	}
	_, first := space()
	// What others' clones show of a and b stays: less than all they hold.
	if r, all := first["a"].Reclaimable, first["a"].Exclusive+first["a"].Shared+first["a"].History+first["a"].SnapshotExclusive["s1"]; r == 0 || r >= all {
		t.Fatalf("a: reclaimable %d, want some but less than the %d it holds (its clone d shows s1): %+v", r, all, first["a"])
	}
	if first["lone"].Reclaimable != 5*k {
		t.Fatalf("lone: reclaimable %d, want %d", first["lone"].Reclaimable, 5*k)
	}
	// c frees b's data once b is gone: delete b before c.
	for _, vol := range []string{"a", "b", "c", "lone", "d"} {
		before, m := space()
		want := m[vol].Reclaimable
		if err := p.DeleteVolume(vol, false); err != nil {
			t.Fatal(err)
		}
		after, _ := space()
		if got := before.LiveBytes - after.LiveBytes; got != want {
			t.Errorf("deleting %s freed %d live bytes, df said %d", vol, got, want)
		}
		t.Logf("deleting %s freed %d bytes", vol, want)
	}
	if sp, _ := space(); sp.LiveBytes != 0 {
		t.Errorf("%d live bytes left with no volumes", sp.LiveBytes)
	}
}
