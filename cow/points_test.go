package cow

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
)

// fakeClock advances a millisecond on every reading, so every record has
// its own time and tests control "now".
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openClockPool(t testing.TB, fs vfs.FS, clk *fakeClock, retention time.Duration) *Pool {
	t.Helper()
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, IndexMemTableSize: 256 << 10,
		CheckpointInterval: -1, Now: clk.Now, RetentionTime: retention, CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func mustRead(t testing.TB, v *Volume, off, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := v.ReadAt(b, off); err != nil {
		t.Fatalf("read %s: %v", v.Name(), err)
	}
	return b
}

func TestSnapshotTimeRollbackClone(t *testing.T) {
	fs := vfs.NewMem()
	clk := newFakeClock()
	p := openClockPool(t, fs, clk, time.Hour)
	v := mustVol(t, p, "vol", 1<<20)
	const n = 64 << 10
	v.WriteAt(fill('A', n), 0)
	if _, err := p.CreateSnapshot("vol", "s1", "before B"); err != nil {
		t.Fatal(err)
	}
	v.WriteAt(fill('B', n), 0)
	clk.Advance(time.Second)
	tB := clk.Now().Format(time.RFC3339Nano)
	clk.Advance(time.Second)
	v.WriteAt(fill('C', n), 0)
	headSeq := p.wmu.applied

	check := func(when string) {
		t.Helper()
		for spec, want := range map[string]byte{"s1": 'A', tB: 'B'} {
			h, err := p.OpenVolumeAt("vol", spec)
			if err != nil {
				t.Fatalf("%s: open vol@%s: %v", when, spec, err)
			}
			if got := mustRead(t, h, 0, n); !bytes.Equal(got, fill(want, n)) {
				t.Fatalf("%s: vol@%s reads %q, want %q", when, spec, got[0], want)
			}
			if _, err := h.WriteAt([]byte{1}, 0); !errors.Is(err, blockdev.ErrReadOnly) {
				t.Fatalf("%s: write to vol@%s: %v", when, spec, err)
			}
			h.Close()
		}
	}
	check("before rollback")
	if got := mustRead(t, v, 0, n); got[0] != 'C' {
		t.Fatalf("head reads %q", got[0])
	}

	// Rollback while attached read-write is refused without force.
	if _, err := p.Rollback("vol", "s1", false); !errors.Is(err, ErrBusy) {
		t.Fatalf("rollback while attached: %v", err)
	}
	if _, err := p.Rollback("vol", "s1", true); err != nil {
		t.Fatal(err)
	}
	// The attached handle sees the rolled-back content.
	if got := mustRead(t, v, 0, n); got[0] != 'A' {
		t.Fatalf("head after rollback reads %q, want A", got[0])
	}
	check("after rollback")
	// The head before the rollback is still a readable point.
	h, err := p.OpenVolumeAt("vol", "seq:"+itoa(headSeq))
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, h, 0, n); got[0] != 'C' {
		t.Fatalf("point before rollback reads %q, want C", got[0])
	}
	h.Close()
	// Writes after the rollback land on the new generation only.
	v.WriteAt(fill('D', 4096), 4096)
	if got := mustRead(t, v, 0, 8192); got[0] != 'A' || got[4096] != 'D' {
		t.Fatalf("head after rollback and write: %q %q", got[0], got[4096])
	}

	// Clone from the time point; writes to the clone do not show in the source.
	if _, err := p.Clone("vol", tB, "cl"); err != nil {
		t.Fatal(err)
	}
	c, err := p.OpenVolume("cl")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, c, 0, n); !bytes.Equal(got, fill('B', n)) {
		t.Fatalf("clone reads %q, want B", got[0])
	}
	c.WriteAt(fill('E', 4096), 0)
	if got := mustRead(t, v, 0, 4096); got[0] != 'A' {
		t.Fatal("a write to the clone shows in the source")
	}
	if got := mustRead(t, c, 0, 8192); got[0] != 'E' || got[4096] != 'B' {
		t.Fatalf("clone after write: %q %q", got[0], got[4096])
	}
	// Roll forward: undo the rollback by rolling to the pre-rollback head.
	v.Close()
	if _, err := p.Rollback("vol", "seq:"+itoa(headSeq), false); err != nil {
		t.Fatal(err)
	}
	v, _ = p.OpenVolume("vol")
	if got := mustRead(t, v, 0, n); got[0] != 'C' {
		t.Fatalf("after rolling forward reads %q, want C", got[0])
	}
	// Deleting the source keeps the clone working, across a reopen.
	v.Close()
	c.Close()
	if err := p.DeleteVolume("vol", false); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p = openClockPool(t, fs, clk, time.Hour)
	defer p.Close()
	c, err = p.OpenVolume("cl")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, c, 0, 8192); got[0] != 'E' || got[4096] != 'B' {
		t.Fatalf("clone after source deleted and reopen: %q %q", got[0], got[4096])
	}
	c.Close()
}

func TestPointErrors(t *testing.T) {
	clk := newFakeClock()
	p := openClockPool(t, vfs.NewMem(), clk, time.Minute)
	defer p.Close()
	v := mustVol(t, p, "vol", 1<<20)
	defer v.Close()
	v.WriteAt(fill(1, 4096), 0)
	p.CreateSnapshot("vol", "s1", "")
	future := clk.Now().Add(time.Hour).Format(time.RFC3339)
	for spec, want := range map[string]string{
		"nosuch":               "names no snapshot",
		future:                 "in the future",
		"seq:999999":           "in the future",
		"seq:x":                "not a sequence number",
		"2020-01-01T00:00:00Z": "before the volume was created",
		"bad point!":           "neither a snapshot",
	} {
		_, err := p.ResolvePoint("vol", spec)
		if !errors.Is(err, ErrPoint) || !strings.Contains(err.Error(), want) {
			t.Errorf("point %q: want %q, got %v", spec, want, err)
		}
		if err != nil && want != "not a sequence number" && want != "neither a snapshot" && !strings.Contains(err.Error(), "s1") {
			t.Errorf("point %q: the error does not list the snapshots: %v", spec, err)
		}
	}
	// Past the retention window.
	old := clk.Now().Format(time.RFC3339Nano)
	clk.Advance(30 * time.Second)
	v.WriteAt(fill(2, 4096), 0) // the window (1 minute) will start here
	clk.Advance(2 * time.Minute)
	v.WriteAt(fill(3, 4096), 0)
	if _, err := p.ResolvePoint("vol", old); !errors.Is(err, ErrPoint) || !strings.Contains(err.Error(), "older than the retained history") {
		t.Errorf("point older than retention: %v", err)
	}
	// Once the window has passed the volume's creation, a point the time
	// index no longer reaches is older than the retained history (the
	// time index entries of the discarded span may be gone, so the point
	// can map below the volume's first record).
	if _, err := p.ResolvePoint("vol", "2020-01-01T00:00:00Z"); !errors.Is(err, ErrPoint) || !strings.Contains(err.Error(), "older than the retained history") {
		t.Errorf("point before the window, which starts after the volume's creation: %v", err)
	}
	// Snapshots stay readable outside the window.
	if _, err := p.ResolvePoint("vol", "s1"); err != nil {
		t.Errorf("snapshot outside the window: %v", err)
	}
	if _, err := p.CreateSnapshot("vol", "s1", ""); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate snapshot: %v", err)
	}
	if _, err := p.CreateSnapshot("vol", "a:b", ""); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad snapshot name: %v", err)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// What a snapshot records besides its name (scheduled, app-consistent)
// survives a reopen from the index and a rebuild of the index from the
// journal.
func TestSnapshotMarksDurable(t *testing.T) {
	fs := vfs.NewMem()
	p := openPool(t, fs)
	mustVol(t, p, "vol", 1<<20).Close()
	want := map[string]SnapshotOptions{
		"hand":  {Label: "by hand"},
		"sched": {Scheduled: true},
		"app":   {Label: "db", Scheduled: true, AppConsistent: true},
	}
	for _, name := range []string{"hand", "sched", "app"} {
		if _, err := p.CreateSnapshotWith("vol", name, want[name]); err != nil {
			t.Fatal(err)
		}
	}
	check := func(p *Pool, when string) {
		t.Helper()
		snaps, err := p.Snapshots("vol")
		if err != nil || len(snaps) != 3 {
			t.Fatalf("%s: %v %v", when, snaps, err)
		}
		for _, sn := range snaps {
			w := want[sn.Name]
			if sn.Label != w.Label || sn.Scheduled != w.Scheduled || sn.AppConsistent != w.AppConsistent {
				t.Fatalf("%s: snapshot %+v, want %+v", when, sn, w)
			}
		}
	}
	check(p, "created")
	p.Close()
	p = openPool(t, fs)
	check(p, "reopened")
	p.Close()
	if err := fs.RemoveAll("data/index"); err != nil {
		t.Fatal(err)
	}
	p = openPool(t, fs)
	defer p.Close()
	check(p, "index rebuilt from the journal")
}

func TestHistoryBranches(t *testing.T) {
	clk := newFakeClock()
	p := openClockPool(t, vfs.NewMem(), clk, time.Hour)
	v := mustVol(t, p, "vol", 1<<20)
	v.WriteAt(fill('A', 4096), 0)
	s1, err := p.CreateSnapshot("vol", "s1", "")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(fill('B', 4096), 0)
	clk.Advance(time.Second)
	if _, err := p.Clone("vol", "s1", "c1"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	rb, err := p.Rollback("vol", "s1", true)
	if err != nil {
		t.Fatal(err)
	}
	h, err := p.History("vol", 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Branches) != 2 {
		t.Fatalf("vol's branches: %+v; want the clone and the rollback", h.Branches)
	}
	c, r := h.Branches[0], h.Branches[1]
	if c.Kind != BranchClone || c.Volume != "c1" || c.BaseSeq != s1.Seq || !c.BaseTime.Equal(s1.Time) || !c.Time.After(s1.Time) {
		t.Fatalf("the clone's branch: %+v; want c1 from seq %d (%s)", c, s1.Seq, s1.Time)
	}
	if r.Kind != BranchRollback || r.Volume != "vol" || r.BaseSeq != rb.Seq || r.Seq <= c.Seq || !r.Time.After(c.Time) {
		t.Fatalf("the rollback's branch: %+v; want a rollback to seq %d after the clone %+v", r, rb.Seq, c)
	}
	hc, err := p.History("c1", 4)
	if err != nil {
		t.Fatal(err)
	}
	if len(hc.Branches) != 1 || hc.Branches[0].Kind != BranchOrigin || hc.Branches[0].Volume != "vol" || hc.Branches[0].BaseSeq != s1.Seq {
		t.Fatalf("c1's branches: %+v; want its origin vol@seq:%d", hc.Branches, s1.Seq)
	}
}
