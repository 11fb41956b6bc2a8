package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/replica"
)

// TestOnceRunEndsWithItsClient: a --once run whose client goes away is
// cancelled and leaves its slot, so a rerun started at once runs (it does
// not answer busy) and goes on from the point the target holds; a run
// whose client is alive still makes a second one busy.
func TestOnceRunEndsWithItsClient(t *testing.T) {
	ctx := context.Background()
	d, src := start(t, t.TempDir(), func(o *Options) { o.Volumes = []VolumeSpec{{Name: "v", Size: 16 << 20}} })
	_, target := replicaSite(t)
	// The first run makes the replica; later ones ship records.
	base, err := src.Replicate(ctx, control.ReplicateRequest{Volume: "v", TargetSpec: target}, nil)
	if err != nil {
		t.Fatal(err)
	}
	vol, err := d.pool.OpenVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	// Eight records of 1 MiB: at 1 MiB/s (batches of 1 MiB) a run takes
	// about 8 s.
	buf := make([]byte, 1<<20)
	for i := int64(0); i < 8; i++ {
		rand.Read(buf)
		if _, err := vol.WriteAt(buf, i<<20); err != nil {
			t.Fatal(err)
		}
		if err := vol.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	slow := target
	slow.BWLimit = 1 << 20

	runCtx, cancel := context.WithCancel(ctx)
	progressed := make(chan control.Progress, 1)
	first := make(chan error, 1)
	go func() {
		_, err := src.Replicate(runCtx, control.ReplicateRequest{Volume: "v", TargetSpec: slow}, func(p control.Progress) {
			if p.Acked > base.Acked {
				select {
				case progressed <- p:
				default:
				}
			}
		})
		first <- err
	}()
	var mid control.Progress
	select {
	case mid = <-progressed:
	case err := <-first:
		t.Fatalf("the slow run ended before it made progress: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the slow run made no progress in 20 s")
	}

	// While its client is there, a second run is busy.
	if _, err := src.Replicate(ctx, control.ReplicateRequest{Volume: "v", TargetSpec: target}, nil); apiCode(err) != control.CodeBusy {
		t.Fatalf("second run while the first runs: %v", err)
	}

	// The client goes away; a rerun right after it runs to the end.
	cancel()
	start := time.Now()
	res, err := src.Replicate(ctx, control.ReplicateRequest{Volume: "v", TargetSpec: target}, nil)
	if err != nil {
		t.Fatalf("rerun right after the client of the first went away: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the rerun took %s: it waited for the cancelled run's pacing", took)
	}
	if res.Full || res.Start < mid.Acked || res.DataBytes == 0 || res.DataBytes >= 8<<20 {
		t.Fatalf("rerun %+v: want it to go on from the target's point (at least seq %d) with the rest of the data", res, mid.Acked)
	}
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("the first run's client got %v", err)
	}
}

// TestAcquireWaitsOutACancelledRun: a run that finds the slot held by a run
// whose context has ended waits for it to leave, at once; one that finds a
// live run is busy.
func TestAcquireWaitsOutACancelledRun(t *testing.T) {
	m := &replManager{running: map[string]*shipRun{}}
	tgt := control.TargetSpec{To: "strata://127.0.0.1:1"}
	live, stopLive := context.WithCancel(context.Background())
	defer stopLive()
	release, err := m.acquire(live, "v", tgt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.acquire(context.Background(), "v", tgt); !errors.Is(err, replica.ErrBusy) {
		t.Fatalf("acquire beside a live run: %v", err)
	}
	stopLive()
	time.AfterFunc(50*time.Millisecond, release) // the cancelled run ends a little later
	release2, err := m.acquire(context.Background(), "v", tgt)
	if err != nil {
		t.Fatalf("acquire beside a cancelled run: %v", err)
	}
	release2()
}

// TestAcquireOneSlotPerTarget: a target spelled with a trailing slash is
// the same target: a compaction or run of it finds the slot held.
func TestAcquireOneSlotPerTarget(t *testing.T) {
	m := &replManager{running: map[string]*shipRun{}}
	live, stopLive := context.WithCancel(context.Background())
	defer stopLive()
	release, err := m.acquire(live, "v", control.TargetSpec{To: "s3://b1/p,s3://b2/p"})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for _, to := range []string{"s3://b1/p/,s3://b2/p/", "s3://b1/p, s3://b2/p//", "s3://key:secret@b1/p/,s3://b2/p"} {
		if _, err := m.acquire(context.Background(), "v", control.TargetSpec{To: to}); !errors.Is(err, replica.ErrBusy) {
			t.Errorf("acquire %s beside a live run of s3://b1/p,s3://b2/p: %v", to, err)
		}
	}
	if r, err := m.acquire(context.Background(), "v", control.TargetSpec{To: "s3://b1/q,s3://b2/p"}); err != nil {
		t.Errorf("another target: %v", err)
	} else {
		r()
	}
}
