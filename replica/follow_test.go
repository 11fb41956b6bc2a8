package replica

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	randv2 "math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/cow"
)

// TestFollow: a follower copies a volume that already holds data, then
// ships every later change without being asked again; WaitAcked returns
// once the target holds a point, and the replica reads as the source at
// the head and at a snapshot taken while following. A follower restarted
// after its stream broke resumes from the target's point.
func TestFollow(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	a, b := newSite(t), newSite(t)
	if _, err := a.pool.CreateVolume("vol0", 64<<20); err != nil {
		t.Fatal(err)
	}
	scribble(t, a.pool, "vol0", rng, 50)
	start := func() *Follower {
		tgt := NewRemote(RemoteOptions{Addr: b.addr, Token: testToken})
		return Follow(context.Background(), ShipOptions{Pool: a.pool, Volume: "vol0", Target: tgt, PinID: "mirror:test", BatchBytes: 1 << 20},
			&Mirror{Group: "g1", Epoch: 1}, 50*time.Millisecond)
	}
	taps := make(chan *cow.Tap, 4)
	testHookTap = func(tp *cow.Tap) { taps <- tp }
	defer func() { testHookTap = nil }()
	f := start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sync := func() {
		t.Helper()
		last, err := a.pool.LastChange("vol0")
		if err != nil {
			t.Fatal(err)
		}
		if err := f.WaitAcked(ctx, last); err != nil {
			t.Fatalf("wait for seq %d: %v", last, err)
		}
		if !bytes.Equal(a.read("vol0", ""), b.read("vol0", "")) {
			t.Fatalf("replica differs from the source at seq %d", last)
		}
		if err := f.WaitDurable(ctx, last); err != nil {
			t.Fatalf("wait for seq %d to be durable: %v", last, err)
		}
		if rs, err := b.pool.ReplicaStateOf("vol0"); err != nil || rs.Acked < last {
			t.Fatalf("durable at seq %d, but the replica stored %+v, %v", last, rs, err)
		}
	}
	sync()
	if st, ok := f.Opened(); !ok || st.Pool != b.pool.ID() {
		t.Fatalf("opened %v, target pool %q, want %q", ok, st.Pool, b.pool.ID())
	}
	for i := 0; i < 20; i++ {
		scribble(t, a.pool, "vol0", rng, 1+rng.Intn(5))
		f.Kick()
		if i == 10 {
			if _, err := a.pool.CreateSnapshot("vol0", "mid", ""); err != nil {
				t.Fatal(err)
			}
		}
		if i%4 == 0 {
			sync()
		}
	}
	sync()
	if !bytes.Equal(a.read("vol0", "mid"), b.read("vol0", "mid")) {
		t.Fatal("snapshot taken while following differs at the target")
	}
	// Once caught up, the follower read the changes from memory.
	select {
	case tp := <-taps:
		if tp.Served() == 0 {
			t.Fatal("the follower's tap served nothing: every change was read back from the journal")
		}
	default:
		t.Fatal("the follower opened no tap")
	}
	// Without kicks, the idle tick ships too.
	scribble(t, a.pool, "vol0", rng, 3)
	sync()
	f.Stop()
	if err := f.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped follower: err %v", err)
	}
	if err := f.WaitAcked(ctx, a.pool.AppliedSeq()+100); err == nil {
		t.Fatal("WaitAcked on a stopped follower returned nil")
	}
	scribble(t, a.pool, "vol0", rng, 10)
	f = start()
	sync()
	f.Stop()
}

// TestFollowSyncShared: a point that a batch on its way is to make durable
// asks for no other synced batch (a burst of flushes shares one), and a
// synced batch costs the target one fsync (its state record goes into the
// same fsync as the batch's records).
func TestFollowSyncShared(t *testing.T) {
	rng := rand.New(rand.NewSource(seed(t).Int63()))
	a, b := newSite(t), newSite(t)
	f := followQuiet(t, a, b, 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lastChange := func() uint64 {
		t.Helper()
		last, err := a.pool.LastChange("vol0")
		if err != nil {
			t.Fatal(err)
		}
		return last
	}
	durable := func() {
		t.Helper()
		if err := f.WaitDurable(ctx, lastChange()); err != nil {
			t.Fatal(err)
		}
	}
	fsyncs := func() uint64 { return b.pool.Stats().Journal.Fsyncs }
	scribble(t, a.pool, "vol0", rng, 5)
	durable()
	for i := 0; i < 3; i++ {
		scribble(t, a.pool, "vol0", rng, 3)
		f.Kick()
		last := lastChange()
		if err := f.WaitAcked(ctx, last); err != nil {
			t.Fatal(err)
		}
		before := fsyncs()
		durable()
		if n := fsyncs() - before; n != 1 {
			t.Fatalf("one synced batch cost the target %d fsyncs, want 1", n)
		}
		// Flushes of points that batch covered: no batch, no fsync.
		before = fsyncs()
		for j := 0; j < 10; j++ {
			f.SyncTo(last)
			durable()
		}
		f.Kick()
		time.Sleep(100 * time.Millisecond) // a batch asked for would be on its way
		if n := fsyncs() - before; n != 0 {
			t.Fatalf("flushes of a point already durable cost the target %d fsyncs", n)
		}
	}
}

// TestFollowTargetCrash: the target loses power at any moment of a
// follow (what it had not fsynced is partly kept, partly gone): it still
// holds every point a synced batch acknowledged, and the point its stored
// state names reads as the source did there. The state record and the
// batch's records share one fsync, so this is what says the state never
// gets ahead of the data it describes.
func TestFollowTargetCrash(t *testing.T) {
	rng := seed(t)
	crashSeed := rng.Uint64()
	a := newSite(t)
	fs := vfs.NewCrashableMem()
	b := newSiteOpts(t, cow.Options{Dir: "data", FS: roomyFS{fs}})
	f := followQuiet(t, a, b, 4<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	durable := uint64(0)
	for step := 0; step < 24; step++ {
		scribble(t, a.pool, "vol0", rng, 1+rng.Intn(4))
		last, err := a.pool.LastChange("vol0")
		if err != nil {
			t.Fatal(err)
		}
		f.Kick()
		if err := f.WaitAcked(ctx, last); err != nil {
			t.Fatal(err)
		}
		if step == 0 || rng.Intn(3) == 0 {
			if err := f.WaitDurable(ctx, last); err != nil {
				t.Fatal(err)
			}
			durable = last
		}
		pct := rng.Intn(101)
		img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: randv2.New(randv2.NewPCG(crashSeed, uint64(step)))})
		p, err := cow.Open(cow.Options{Dir: "data", FS: img, SegmentSize: 4 << 20, GCInterval: -1, CheckpointInterval: -1})
		if err != nil {
			t.Fatalf("step %d (unsynced kept %d%%): the target does not open after the crash: %v", step, pct, err)
		}
		rs, err := p.ReplicaStateOf("vol0")
		if err != nil || rs == nil {
			p.Close()
			t.Fatalf("step %d: replica state after the crash: %+v, %v", step, rs, err)
		}
		if rs.Acked < durable {
			p.Close()
			t.Fatalf("step %d (unsynced kept %d%%): the target holds seq %d after the crash; seq %d was acknowledged durable", step, pct, rs.Acked, durable)
		}
		got := readAt(t, p, "vol0", "seq:"+strconv.FormatUint(rs.Local, 10))
		p.Close()
		if want := a.read("vol0", "seq:"+strconv.FormatUint(rs.Acked, 10)); !bytes.Equal(got, want) {
			t.Fatalf("step %d (unsynced kept %d%%): the target's stored point (local seq %d) does not read as the source at seq %d", step, pct, rs.Local, rs.Acked)
		}
	}
}

// followQuiet creates volume vol0 of size at a and starts a mirror's
// follower of it to b with a long idle period, so that only what the test
// asks for sends batches. It stops with the test.
func followQuiet(t *testing.T, a, b *site, size int64) *Follower {
	t.Helper()
	if _, err := a.pool.CreateVolume("vol0", size); err != nil {
		t.Fatal(err)
	}
	tgt := NewRemote(RemoteOptions{Addr: b.addr, Token: testToken})
	f := Follow(context.Background(), ShipOptions{Pool: a.pool, Volume: "vol0", Target: tgt, PinID: "mirror:test", BatchBytes: 1 << 20},
		&Mirror{Group: "g1", Epoch: 1}, time.Hour)
	t.Cleanup(f.Stop)
	return f
}

// roomyFS is an in-memory filesystem that says it has room (vfs's MemFS
// does not answer the receiver's free-space check).
type roomyFS struct{ vfs.FS }

func (roomyFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	return vfs.DiskUsage{AvailBytes: 1 << 40, TotalBytes: 1 << 40}, nil
}
