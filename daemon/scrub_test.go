package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
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

// A --now pass running when the daemon shuts down is cancelled and awaited
// before the pool closes (a control request's context is not cancelled by
// the server's shutdown), and it ends interrupted: no report is kept.
func TestScrubNowAtShutdown(t *testing.T) {
	dir := t.TempDir()
	d, _ := start(t, dir, func(o *Options) { o.Volumes = []VolumeSpec{{"v", 1 << 20}} })
	v, err := d.pool.OpenVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	for b := int64(0); b < 16; b++ {
		if _, err := v.WriteAt(bytes.Repeat([]byte{byte(b + 1)}, 4096), b*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.Close()

	inIndex, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	progress := func(p cow.ScrubProgress) {
		if p.Phase == "index" {
			once.Do(func() { close(inIndex); <-release })
		}
	}
	type result struct {
		rep *cow.ScrubReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		// As a --now request's: not cancelled by the control server's
		// Shutdown.
		rep, err := d.scrub.run(context.Background(), control.ScrubRequest{Rate: 128 << 10}, progress)
		done <- result{rep, err}
	}()
	select {
	case <-inIndex:
	case <-time.After(20 * time.Second):
		t.Fatal("the pass never reached its index phase")
	}
	closed := make(chan error, 1)
	go func() { closed <- d.Close(context.Background()) }()
	select {
	case err := <-closed:
		// The pass is left blocked: let go, it would run on a closed pool.
		t.Fatalf("the daemon closed (%v) while a --now pass ran", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	r := <-done
	if !errors.Is(r.err, errScrubShutdown) || r.rep == nil || !r.rep.Canceled {
		t.Fatalf("pass at shutdown: %v, %+v", r.err, r.rep)
	}
	if err := <-closed; err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "scrub.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an interrupted pass was saved as the last report: %v", err)
	}
	// A pass asked for once close began is refused.
	if _, err := d.scrub.run(context.Background(), control.ScrubRequest{}, nil); !errors.Is(err, errScrubShutdown) {
		t.Fatalf("pass after close: %v", err)
	}
}

// Through the control API: the daemon's shutdown ends a slow --now pass at
// once (its request is not waited for to the shutdown's deadline), and the
// client hears that it was interrupted.
func TestScrubNowRequestAtShutdown(t *testing.T) {
	dir := t.TempDir()
	d, c := start(t, dir, func(o *Options) { o.Volumes = []VolumeSpec{{"v", 1 << 20}} })
	v, err := d.pool.OpenVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt(bytes.Repeat([]byte{7}, 256<<10), 0); err != nil {
		t.Fatal(err)
	}
	v.Flush()
	v.Close()
	running := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		// 4 KiB/s: minutes for the pass, unless it is cancelled.
		_, err := c.Scrub(context.Background(), control.ScrubRequest{Rate: 4 << 10}, func(control.ScrubProgress) { once.Do(func() { close(running) }) })
		done <- err
	}()
	select {
	case <-running:
	case <-time.After(10 * time.Second):
		t.Fatal("no progress from the pass")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("shutdown waited %v for the --now pass", took)
	}
	err = <-done
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("client of the pass: %v", err)
	}
}
