package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/metricstest"
)

// Background passes run on the interval; the last report survives a
// restart, and the next pass is due an interval after it; the metrics
// count what the passes read.
func TestScrubBackground(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d, c := start(t, dir, func(o *Options) { o.ScrubInterval = 300 * time.Millisecond; o.Volumes = []VolumeSpec{{"v", 1 << 20}} })
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.ScrubStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Last != nil {
			if st.Last.ErrorsFound() != 0 || st.Last.Segments == 0 || st.Interval != 300*time.Millisecond {
				t.Fatalf("background pass: %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no background pass within 10 s of a 300 ms interval")
		}
		time.Sleep(50 * time.Millisecond)
	}
	text, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := fams.Value("strata_scrub_bytes_checked_total"); err != nil || v <= 0 {
		t.Fatalf("strata_scrub_bytes_checked_total = %v (%v)", v, err)
	}
	if v, err := fams.Value("strata_scrub_last_completed_timestamp_seconds"); err != nil || v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("strata_scrub_last_completed_timestamp_seconds = %v (%v)", v, err)
	}
	d.Close(ctx)

	// After a restart with a long interval: the report is kept and the
	// next pass counts from it.
	_, c = start(t, dir, func(o *Options) { o.ScrubInterval = time.Hour })
	st, err := c.ScrubStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Last == nil || st.Running != nil || !st.Next.Equal(st.Last.Finished.Add(time.Hour)) {
		t.Fatalf("after a restart: %+v", st)
	}
}

// A mirrored volume's damaged block heals from the mirror's other host.
func TestScrubHealsFromMirror(t *testing.T) {
	ctx := context.Background()
	w := &fakeWitness{lease: 600 * time.Millisecond, unreachable: map[string]bool{}}
	dirA, addrA, addrB := t.TempDir(), freeAddr(t), freeAddr(t)
	a := startMirrorHost(t, w, dirA, addrA)
	b := startMirrorHost(t, w, t.TempDir(), addrB)
	if _, err := a.c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "v", Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	token, _ := filepath.Abs(filepath.Join("testdata", "token"))
	if _, err := a.c.AddMirror(ctx, control.MirrorAddRequest{Volume: "v", To: "strata://" + addrB, TokenFile: token, Witness: "fake:1"}); err != nil {
		t.Fatal(err)
	}
	a.waitState("v", control.RolePrimary, control.MirrorInSync)
	b.waitState("v", control.RoleSecondary, control.MirrorFollowing)
	va := a.export("v")
	pat := bytes.Repeat([]byte{0x5c}, 4096)
	if _, err := va.WriteAt(pat, 1<<20); err != nil {
		t.Fatal(err)
	}
	// More than a segment after it: its segment is then read from the file.
	if _, err := va.WriteAt(bytes.Repeat([]byte{0x11}, 2<<20), 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := va.Flush(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dirA, "journal", "*.seg"))
	flipped := false
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(data, pat); i >= 0 {
			fh, err := os.OpenFile(f, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			fh.WriteAt([]byte{0x5d}, int64(i+100))
			fh.Close()
			flipped = true
			break
		}
	}
	if !flipped {
		t.Fatal("the block is not in the journal files")
	}
	rep, err := a.d.scrub.run(ctx, control.ScrubRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 1 || !rep.Damaged[0].Repaired || rep.Damaged[0].RepairedFrom != "strata://"+addrB || rep.Damaged[0].Offset != 1<<20 {
		t.Fatalf("scrub of the mirrored volume: %+v", rep.Damaged)
	}
	got := make([]byte, 4096)
	if _, err := va.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, pat) {
		t.Fatalf("read after the repair: %v", err)
	}
}
