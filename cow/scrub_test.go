package cow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
)

// flipAt damages one byte of the block version e.
func flipAt(t *testing.T, fs vfs.FS, p *Pool, e entry) {
	t.Helper()
	f, err := fs.OpenReadWrite(p.j.Load().SegmentPath(e.seg), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, e.off+100)
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, e.off+100); err != nil {
		t.Fatal(err)
	}
}

func versionAt(p *Pool, vol, block, seq uint64) entry {
	var e entry
	visit(p.db, vol, block, block, seq, func(_ uint64, x entry) bool { e = x; return false })
	return e
}

// scrubTestPool opens a pool in memory with volume a, its blocks 0-7
// written with fill(b+1).
func scrubTestPool(t *testing.T) (vfs.FS, Options, *Pool, *Volume) {
	t.Helper()
	fs := vfs.NewMem()
	opts := Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, CheckpointInterval: -1, CacheSize: 1 << 20, TailCache: -1, GCInterval: -1}
	p, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVol(t, p, "a", 1<<20)
	for b := 0; b < 8; b++ {
		if _, err := v.WriteAt(fill(byte(b+1), bs), int64(b)*bs); err != nil {
			t.Fatal(err)
		}
	}
	return fs, opts, p, v
}

// Scrub finds exactly the damaged versions, names what reads them, heals
// the one a good copy is offered for (checked against its checksum, so a
// wrong copy is refused), and the healed block reads right at every point,
// also after a restart; the other keeps failing with EIO.
func TestScrubFindsAndRepairs(t *testing.T) {
	fs, opts, p, v := scrubTestPool(t)
	var err error
	snap, err := p.CreateSnapshot("a", "s", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Clone("a", "s", "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(fill(0x55, bs), 5*bs); err != nil { // block 5 gets a newer version
		t.Fatal(err)
	}
	v.Flush()
	head3 := versionAt(p, v.v.id, 3, Head)
	old5 := versionAt(p, v.v.id, 5, snap.Seq)
	new5 := versionAt(p, v.v.id, 5, Head)
	// Damage the bytes on disk (the journal's tail memory holds the
	// newest records until the pool closes).
	v.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	flipAt(t, fs, p, head3)
	flipAt(t, fs, p, old5)
	// Rebuild the index from the journal: recovery then meets the damage.
	if err := fs.RemoveAll("data/index"); err != nil {
		t.Fatal(err)
	}
	if p, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	if v, err = p.OpenVolume("a"); err != nil {
		t.Fatal(err)
	}

	// Recovery replayed the damaged records (the index was never
	// persisted) and lists them.
	if d := p.Stats().Damaged; len(d) != 2 {
		t.Fatalf("damage met by recovery: %+v", d)
	}
	ctx := context.Background()
	var progress []ScrubProgress
	rep, err := p.Scrub(ctx, ScrubOptions{Progress: func(pr ScrubProgress) { progress = append(progress, pr) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 2 || rep.ErrorsFound() != 2 || rep.Unrepaired() != 2 || len(rep.Unreferenced) != 0 {
		t.Fatalf("want the 2 damaged versions, got %+v", rep)
	}
	d3, d5 := rep.Damaged[0], rep.Damaged[1]
	if d3.Volume != "a" || d3.Offset != 3*bs || !d3.Head || d3.Seq != head3.seq ||
		fmt.Sprint(d3.Snapshots) != "[s]" || len(d3.Clones) != 1 {
		t.Fatalf("block 3: %+v", d3)
	}
	if d5.Offset != 5*bs || d5.Head || d5.VisibleUntil != new5.seq || d5.Seq != old5.seq || fmt.Sprint(d5.Snapshots) != "[s]" {
		t.Fatalf("block 5: %+v", d5)
	}
	if last := progress[len(progress)-1]; last.ErrorsFound != 2 || last.BytesChecked != rep.BytesChecked || rep.BytesChecked < 9*bs {
		t.Fatalf("progress %+v, report checked %d bytes", last, rep.BytesChecked)
	}
	if _, err := v.ReadAt(make([]byte, bs), 3*bs); !errors.Is(err, blockdev.ErrIO) {
		t.Fatalf("damaged block before repair: want EIO, got %v", err)
	}

	// Repair: a good copy of block 3, a wrong one of block 5.
	fetch := func(_ context.Context, d DamagedBlock) ([]byte, string, error) {
		switch d.Offset {
		case 3 * bs:
			return fill(4, bs), "site-b", nil
		case 5 * bs:
			return fill(0x55, bs), "site-b", nil // the newer version: wrong
		}
		return nil, "", errors.New("unexpected block")
	}
	rep, err = p.Scrub(ctx, ScrubOptions{Fetch: fetch})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Repaired() != 1 || rep.Unrepaired() != 1 || !rep.Damaged[0].Repaired || rep.Damaged[0].RepairedFrom != "site-b" ||
		rep.Damaged[1].Repaired || rep.Damaged[1].RepairError == "" {
		t.Fatalf("repair: %+v", rep.Damaged)
	}
	check := func(p *Pool) {
		t.Helper()
		for _, at := range []string{"", "s", "c"} {
			var h *Volume
			var err error
			switch at {
			case "":
				h, err = p.OpenVolume("a")
			case "s":
				h, err = p.OpenVolumeAt("a", "s")
			default:
				h, err = p.OpenVolume("c")
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := mustRead(t, h, 3*bs, bs); !bytes.Equal(got, fill(4, bs)) {
				t.Fatalf("%s: repaired block reads %x...", at, got[:4])
			}
			_, err = h.ReadAt(make([]byte, bs), 5*bs)
			if at == "" && err != nil {
				t.Fatalf("head block 5 (undamaged newer version): %v", err)
			}
			if at != "" && !errors.Is(err, blockdev.ErrIO) {
				t.Fatalf("%s: unrepaired block 5: want EIO, got %v", at, err)
			}
			h.Close()
		}
	}
	check(p)
	// Status no longer lists the repaired block as damaged.
	if d := p.Stats().Damaged; len(d) != 1 || d[0].Seq != old5.seq {
		t.Fatalf("damage listed after the repair: %+v", d)
	}

	// The next pass finds the unrepaired version, and the repaired one's
	// damaged bytes as read by nothing.
	rep, err = p.Scrub(ctx, ScrubOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 1 || rep.Damaged[0].Offset != 5*bs || len(rep.Unreferenced) != 1 ||
		rep.Unreferenced[0].Segment != head3.seg || rep.Unreferenced[0].Offset != head3.off {
		t.Fatalf("after repair: %+v", rep)
	}
	// One volume only: the clone has no damaged version of its own.
	if rep, err = p.Scrub(ctx, ScrubOptions{Volume: "c"}); err != nil || rep.ErrorsFound() != 0 {
		t.Fatalf("scrub of c: %+v %v", rep, err)
	}
	v.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// The repair is in the journal: a reopen (replay) keeps it.
	if p, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	check(p)

	// A replica answers with the version whose checksum is asked for.
	got, seq, err := p.ReadVersion("a", 3*bs, head3.crc)
	if err != nil || seq != head3.seq || !bytes.Equal(got, fill(4, bs)) {
		t.Fatalf("ReadVersion: seq %d err %v", seq, err)
	}
	if _, _, err := p.ReadVersion("a", 5*bs, old5.crc); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("ReadVersion of a damaged version: want ErrNoVersion, got %v", err)
	}
}

// A rate bounds the pass's reads; a cancelled context stops it.
func TestScrubRate(t *testing.T) {
	p, err := Open(Options{Dir: "data", FS: vfs.NewMem(), SegmentSize: 1 << 20, CheckpointInterval: -1, TailCache: -1, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	v := mustVol(t, p, "a", 4<<20)
	defer v.Close()
	if _, err := v.WriteAt(fill(1, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rep, err := p.Scrub(context.Background(), ScrubOptions{Rate: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// About 2 MiB read (the journal, then the index's versions) at 8 MiB/s.
	if d := time.Since(start); d < 200*time.Millisecond || rep.BytesChecked < 2<<20 {
		t.Fatalf("%d bytes in %v: not bounded by the rate", rep.BytesChecked, d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	rep, err = p.Scrub(ctx, ScrubOptions{Rate: 1 << 20})
	if !errors.Is(err, context.DeadlineExceeded) || !rep.Canceled {
		t.Fatalf("cancelled pass: %v %+v", err, rep)
	}
}

// A pass cancelled while it repairs counts only repairs it wrote: a copy
// fetched before the cancel is written (it reads right), and the report
// says repaired exactly the blocks that read right.
func TestScrubRepairCanceled(t *testing.T) {
	fs, opts, p, v := scrubTestPool(t)
	var err error
	v.Flush()
	e3, e5 := versionAt(p, v.v.id, 3, Head), versionAt(p, v.v.id, 5, Head)
	v.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	flipAt(t, fs, p, e3)
	flipAt(t, fs, p, e5)
	if p, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if v, err = p.OpenVolume("a"); err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fetches := 0
	fetch := func(_ context.Context, d DamagedBlock) ([]byte, string, error) {
		fetches++
		cancel() // the pass ends after this good copy, before its batch is full
		return fill(byte(d.Offset/bs+1), bs), "site-b", nil
	}
	rep, err := p.Scrub(ctx, ScrubOptions{Fetch: fetch})
	if !errors.Is(err, context.Canceled) || !rep.Canceled || fetches != 1 || len(rep.Damaged) != 2 {
		t.Fatalf("cancelled repair: %v, %d fetches, %+v", err, fetches, rep)
	}
	for _, d := range rep.Damaged {
		got, err := readBlock(v, d.Offset)
		switch {
		case d.Repaired && (err != nil || !bytes.Equal(got, fill(byte(d.Offset/bs+1), bs))):
			t.Fatalf("block at %d reported repaired, reads %v", d.Offset, err)
		case !d.Repaired && !errors.Is(err, blockdev.ErrIO):
			t.Fatalf("block at %d not reported repaired, reads %v", d.Offset, err)
		}
	}
	if rep.Repaired() != 1 || !rep.Damaged[0].Repaired || rep.Damaged[0].RepairedFrom != "site-b" {
		t.Fatalf("the fetched copy is written: %+v", rep.Damaged)
	}
}

func readBlock(v *Volume, off int64) ([]byte, error) {
	b := make([]byte, bs)
	_, err := v.ReadAt(b, off)
	return b, err
}
