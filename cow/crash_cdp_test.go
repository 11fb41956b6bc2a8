package cow

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/cdp"
)

// state is what every volume shows: its head and its snapshots.
type state map[string]struct {
	head  []byte
	snaps map[string][]byte
}

func (s state) clone() state {
	c := state{}
	for n, v := range s {
		sn := map[string][]byte{}
		for k, b := range v.snaps {
			sn[k] = bytes.Clone(b)
		}
		c[n] = struct {
			head  []byte
			snaps map[string][]byte
		}{bytes.Clone(v.head), sn}
	}
	return c
}

// crashImage is the filesystem as a crash would leave it at one moment, and
// the states it may legitimately show: before or after the operation that
// was in flight (the same for garbage collection, which changes nothing).
type crashImage struct {
	fs            *vfs.MemFS
	when          string
	before, after state
}

// matches reports how the pool on an image differs from want ("" if not).
func matches(t *testing.T, p *Pool, want state) string {
	vols := p.Volumes()
	if len(vols) != len(want) {
		return fmt.Sprintf("%d volumes, want %d", len(vols), len(want))
	}
	for name, w := range want {
		h, err := p.OpenVolume(name)
		if err != nil {
			return fmt.Sprintf("volume %s: %v", name, err)
		}
		got := mustRead(t, h, 0, int64(len(w.head)))
		h.Close()
		if !bytes.Equal(got, w.head) {
			return fmt.Sprintf("head of %s differs at byte %d", name, firstDiff(got, w.head))
		}
		snaps, _ := p.Snapshots(name)
		if len(snaps) != len(w.snaps) {
			return fmt.Sprintf("%s has %d snapshots, want %d", name, len(snaps), len(w.snaps))
		}
		for sn, want := range w.snaps {
			h, err := p.OpenVolumeAt(name, sn)
			if err != nil {
				return fmt.Sprintf("%s@%s: %v", name, sn, err)
			}
			got := mustRead(t, h, 0, int64(len(want)))
			h.Close()
			if !bytes.Equal(got, want) {
				return fmt.Sprintf("%s@%s differs at byte %d", name, sn, firstDiff(got, want))
			}
		}
	}
	return ""
}

// TestCrashCDP takes crash images (unsynced data partly dropped) in the
// middle of snapshot create, rollback and clone (after the record is
// journaled, before it is synced) and after every garbage collection step,
// then recovers each image: it must show exactly the acknowledged state,
// with the operation in flight either wholly present or wholly absent.
func TestCrashCDP(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 4))
	fs := vfs.NewCrashableMem()
	clk := newFakeClock()
	p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, IndexMemTableSize: 256 << 10,
		CheckpointInterval: -1, GCInterval: -1, Now: clk.Now, RetentionTime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 * 4096
	model := state{}
	handles := map[string]*Volume{}
	addVol := func(name string, head []byte) {
		h, err := p.OpenVolume(name)
		if err != nil {
			t.Fatal(err)
		}
		handles[name] = h
		model[name] = struct {
			head  []byte
			snaps map[string][]byte
		}{head, map[string][]byte{}}
	}
	p.CreateVolume("a", size)
	addVol("a", make([]byte, size))

	var images []crashImage
	var before state
	var when string
	capture := func() {
		img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(seed, uint64(len(images))))})
		images = append(images, crashImage{fs: img, when: when, before: before})
	}
	// Each operation: flush what came before (so it is acknowledged
	// durable), capture mid-operation, then record the state after.
	op := func(desc string, kind cdp.Kind, do func(), apply func()) {
		for _, h := range handles {
			h.Flush()
		}
		before, when = model.clone(), desc
		testHookAppended = func(r *cdp.Record) {
			if r.Kind == kind {
				capture()
			}
		}
		do()
		testHookAppended = nil
		apply()
		images[len(images)-1].after = model.clone()
	}
	write := func(name string) {
		h := handles[name]
		for i := 0; i < 8; i++ {
			off := rng.IntN(size/4096) * 4096
			n := min((1+rng.IntN(8))*4096, size-off)
			b := bytes.Repeat([]byte{byte(1 + rng.IntN(255))}, n)
			if _, err := h.WriteAt(b, int64(off)); err != nil {
				t.Fatal(err)
			}
			copy(model[name].head[off:], b)
		}
	}
	for round := 0; round < 6; round++ {
		names := make([]string, 0, len(model))
		for n := range model {
			names = append(names, n)
		}
		sort.Strings(names)
		name := names[rng.IntN(len(names))]
		write(name)
		sn := fmt.Sprintf("s%d", round)
		op("snapshot create "+name+"@"+sn, cdp.KindSnapshotCreate, func() {
			if _, err := p.CreateSnapshot(name, sn, ""); err != nil {
				t.Fatal(err)
			}
		}, func() { model[name].snaps[sn] = bytes.Clone(model[name].head) })
		write(name)
		if round%2 == 1 {
			op("rollback "+name+" to "+sn, cdp.KindVolumeRollback, func() {
				if _, err := p.Rollback(name, sn, true); err != nil {
					t.Fatal(err)
				}
			}, func() {
				m := model[name]
				copy(m.head, m.snaps[sn])
			})
		} else {
			cl := fmt.Sprintf("c%d", round)
			op("clone "+name+"@"+sn+" -> "+cl, cdp.KindVolumeClone, func() {
				if _, err := p.Clone(name, sn, cl); err != nil {
					t.Fatal(err)
				}
			}, func() { addVol(cl, bytes.Clone(model[name].snaps[sn])) })
		}
	}
	// Garbage collection with the history out of the window: every step.
	for _, h := range handles {
		h.Flush()
	}
	clk.Advance(2 * time.Hour)
	write("a")
	handles["a"].Flush()
	before, when = model.clone(), ""
	testHookGC = func(step string) {
		when = "gc: " + step
		capture()
		images[len(images)-1].after = before
	}
	for i := 0; i < 2; i++ {
		st, err := p.GC(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("gc pass %d: %+v", i, st)
	}
	testHookGC = nil
	for _, h := range handles {
		h.Close()
	}
	p.Close()

	steps := map[string]int{}
	for i, img := range images {
		steps[img.when]++
		q, err := Open(Options{Dir: "data", FS: img.fs, SegmentSize: 1 << 20, CheckpointInterval: -1, GCInterval: -1, Now: clk.Now, RetentionTime: time.Hour})
		if err != nil {
			t.Fatalf("image %d (%s): recovery failed: %v", i, img.when, err)
		}
		if d1 := matches(t, q, img.before); d1 != "" {
			if d2 := matches(t, q, img.after); d2 != "" {
				t.Fatalf("image %d (crash during %s, seed %d): matches neither the state before (%s) nor after (%s)", i, img.when, seed, d1, d2)
			}
		}
		q.Close()
	}
	t.Logf("%d crash images verified: %v", len(images), steps)
	if steps["gc: segment removed"] == 0 || steps["gc: checkpointed"] == 0 {
		t.Fatalf("garbage collection removed nothing: the test does not cover its steps (%v)", steps)
	}
}
