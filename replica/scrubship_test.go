package replica

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-storage/strata/cow"
)

// A block a scrub repaired (a relocate record now holds its good copy)
// does not stop shipping to a target that has not got its write record
// yet: the run copies the difference instead, and the target reads right.
func TestShipAfterScrubRepair(t *testing.T) {
	dir := t.TempDir()
	opts := cow.Options{Dir: dir, SegmentSize: 4 << 20, GCInterval: -1, CheckpointInterval: -1, TailCache: -1}
	p, err := cow.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume("v", 1<<20); err != nil {
		t.Fatal(err)
	}
	write := func(b []byte, off int64) {
		t.Helper()
		h, err := p.OpenVolume("v")
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		if err := h.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write(bytes.Repeat([]byte{1}, 64<<10), 0)
	b := newSite(t)
	ship := func() (Result, error) {
		tgt := NewRemote(RemoteOptions{Addr: b.addr, Token: testToken})
		defer tgt.Close()
		return Ship(context.Background(), ShipOptions{Pool: p, Volume: "v", Target: tgt, PinID: "test:b", BatchBytes: 1 << 20})
	}
	if _, err := ship(); err != nil {
		t.Fatal(err)
	}
	good := bytes.Repeat([]byte{0x5c}, 4096)
	write(good, 3*4096)
	write(bytes.Repeat([]byte{2}, 4096), 8*4096)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage the block on disk.
	files, _ := filepath.Glob(filepath.Join(dir, "journal", "*.seg"))
	flipped := false
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(data, good); i >= 0 {
			data[i+100] ^= 0x40
			if err := os.WriteFile(f, data, 0o644); err != nil {
				t.Fatal(err)
			}
			flipped = true
			break
		}
	}
	if !flipped {
		t.Fatal("the block is not in the journal files")
	}
	if p, err = cow.Open(opts); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rep, err := p.Scrub(context.Background(), cow.ScrubOptions{Fetch: func(context.Context, cow.DamagedBlock) ([]byte, string, error) {
		return good, "site-c", nil
	}})
	if err != nil || len(rep.Damaged) != 1 || rep.Repaired() != 1 {
		t.Fatalf("scrub: %v %+v", err, rep)
	}
	r, err := ship()
	if err != nil {
		t.Fatalf("ship after the repair: %v", err)
	}
	h, err := p.OpenVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, h.Size())
	_, err = h.ReadAt(want, 0)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	if got := b.read("v", ""); !bytes.Equal(got, want) || !bytes.Equal(got[3*4096:4*4096], good) || r.Acked != p.AppliedSeq() {
		t.Fatalf("the target after the run %+v differs from the source", r)
	}
}
