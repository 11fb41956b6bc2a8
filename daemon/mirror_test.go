package daemon

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/metricstest"
)

// fakeWitness keeps the witness's rules in memory, with a lease short
// enough for tests, and can be made unreachable for one node.
type fakeWitness struct {
	mu          sync.Mutex
	lease       time.Duration
	epoch       uint64
	holder      string
	members     [2]string
	outdated    string
	until       time.Time
	unreachable map[string]bool
}

func (w *fakeWitness) client() witnessClient { return w }

func (w *fakeWitness) reach(node string) error {
	if w.unreachable[node] {
		return fmt.Errorf("witness unreachable from %s", node)
	}
	return nil
}

func (w *fakeWitness) voteLocked(granted bool, reason string, sent time.Time) vote {
	v := vote{Granted: granted, Epoch: w.epoch, Holder: w.holder, Outdated: w.outdated, Reason: reason}
	if granted {
		v.ValidUntil = sent.Add(w.lease * 9 / 10)
	}
	return v
}

func (w *fakeWitness) Acquire(_ context.Context, group, node, peer string, epoch uint64) (vote, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.reach(node); err != nil {
		return vote{}, err
	}
	now := time.Now()
	switch {
	case w.holder == "" && w.epoch == 0:
		w.members = [2]string{node, peer}
		w.holder, w.epoch, w.outdated, w.until = node, max(epoch, 1), peer, now.Add(w.lease)
		return w.voteLocked(true, "", now), nil
	case node == w.holder && epoch == w.epoch:
		w.until = now.Add(w.lease)
		return w.voteLocked(true, "", now), nil
	case node != w.members[0] && node != w.members[1]:
		return w.voteLocked(false, "not a member", now), nil
	case node == w.holder:
		return w.voteLocked(false, "fenced", now), nil
	case now.Before(w.until):
		return w.voteLocked(false, "the holder's lease runs", now), nil
	case node == w.outdated:
		return w.voteLocked(false, "outdated", now), nil
	}
	w.holder, w.epoch, w.until = node, w.epoch+1, now.Add(w.lease)
	return w.voteLocked(true, "", now), nil
}

func (w *fakeWitness) SetOutdated(_ context.Context, group, node string, epoch uint64, peer string, outdated bool) (vote, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.reach(node); err != nil {
		return vote{}, err
	}
	now := time.Now()
	if node != w.holder || epoch != w.epoch || now.After(w.until) {
		return w.voteLocked(false, "not the holder", now), nil
	}
	w.outdated = ""
	if outdated {
		w.outdated = peer
	}
	return w.voteLocked(true, "", now), nil
}

func (w *fakeWitness) Handover(_ context.Context, group, node string, epoch uint64, to string) (vote, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.reach(node); err != nil {
		return vote{}, err
	}
	now := time.Now()
	if node != w.holder || epoch != w.epoch || to == w.outdated {
		return w.voteLocked(false, "refused", now), nil
	}
	w.holder, w.epoch, w.until = to, w.epoch+1, now.Add(w.lease)
	return w.voteLocked(true, "", now), nil
}

func (w *fakeWitness) Release(_ context.Context, group, node string, epoch uint64) (vote, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.reach(node); err != nil {
		return vote{}, err
	}
	now := time.Now()
	if node != w.holder || epoch != w.epoch {
		return w.voteLocked(false, "not the holder", now), nil
	}
	w.holder, w.until = "", time.Time{}
	return w.voteLocked(true, "", now), nil
}

func (w *fakeWitness) Exists(context.Context, string) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.epoch != 0, nil
}

func (w *fakeWitness) state() (uint64, string, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.epoch, w.holder, w.outdated
}

// mirrorHost is one of a test's two hosts.
type mirrorHost struct {
	t    *testing.T
	dir  string
	addr string
	d    *Daemon
	c    *control.Client
}

func startMirrorHost(t *testing.T, w *fakeWitness, dir, addr string) *mirrorHost {
	t.Helper()
	token, err := filepath.Abs(filepath.Join("testdata", "token"))
	if err != nil {
		t.Fatal(err)
	}
	old := newWitnessClient
	newWitnessClient = func(*mirrorEntry) (witnessClient, error) { return w.client(), nil }
	t.Cleanup(func() { newWitnessClient = old })
	d, c := start(t, dir, func(o *Options) {
		o.ReplicaListen, o.ReplicaTokenFile = addr, token
	})
	return &mirrorHost{t: t, dir: dir, addr: addr, d: d, c: c}
}

// export opens the volume as a client would (through the mirror's gate).
func (h *mirrorHost) export(vol string) blockdev.Device {
	h.t.Helper()
	e, err := h.d.exporter().Open(vol)
	if err != nil {
		h.t.Fatalf("open %s: %v", vol, err)
	}
	h.t.Cleanup(func() { e.Close() })
	return e
}

func (h *mirrorHost) read(vol string) []byte {
	h.t.Helper()
	v, err := h.d.pool.OpenVolumeAt(vol, "")
	if err != nil {
		v, err = h.d.pool.OpenVolume(vol)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	defer v.Close()
	b := make([]byte, v.Size())
	if _, err := v.ReadAt(b, 0); err != nil {
		h.t.Fatal(err)
	}
	return b
}

func (h *mirrorHost) waitState(vol, role, state string) control.MirrorStatus {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		list, err := h.c.Mirrors(context.Background())
		if err != nil {
			h.t.Fatal(err)
		}
		for _, s := range list {
			if s.Volume == vol && s.Role == role && (state == "" || s.State == state) {
				return s
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: %s never became %s %s: %+v", h.addr, vol, role, state, list)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMirror drives a mirror between two in-process daemons and a witness
// kept in memory: an acknowledged write is applied on the secondary, and
// a flushed one durable there, when the call returns; losing the primary makes the secondary take over once the
// lease runs out; the old primary, back, steps down, keeps its unshipped
// writes as a split clone and follows; a planned switchover hands the
// role back with no lost write.
func TestMirror(t *testing.T) {
	ctx := context.Background()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	w := &fakeWitness{lease: 600 * time.Millisecond, unreachable: map[string]bool{}}
	dirA, addrA, addrB := t.TempDir(), freeAddr(t), freeAddr(t)
	a := startMirrorHost(t, w, dirA, addrA)
	b := startMirrorHost(t, w, t.TempDir(), addrB)
	const size = 8 << 20
	if _, err := a.c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "v", Size: size}); err != nil {
		t.Fatal(err)
	}
	va := a.export("v")
	buf := make([]byte, 256<<10)
	rng.Read(buf)
	if _, err := va.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	token, _ := filepath.Abs(filepath.Join("testdata", "token"))
	st, err := a.c.AddMirror(ctx, control.MirrorAddRequest{Volume: "v", To: "strata://" + addrB, TokenFile: token, Witness: "fake:1"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != control.RolePrimary || st.Epoch != 1 {
		t.Fatalf("added: %+v", st)
	}
	a.waitState("v", control.RolePrimary, control.MirrorInSync)
	b.waitState("v", control.RoleSecondary, control.MirrorFollowing)
	if _, _, out := w.state(); out != "" {
		t.Fatalf("in sync, but the witness has %q outdated", out)
	}
	// Metrics say the same on both hosts.
	for _, m := range []struct {
		h       *mirrorHost
		primary float64
		state   string
	}{{a, 1, control.MirrorInSync}, {b, 0, control.MirrorFollowing}} {
		text, err := m.h.c.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fams, err := metricstest.Parse(text)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"strata_mirror_primary", []string{"volume", "v"}, m.primary},
			{"strata_mirror_state", []string{"volume", "v", "state", m.state}, 1},
			{"strata_mirror_state", []string{"volume", "v", "state", control.MirrorDegraded}, 0},
			{"strata_mirror_epoch", []string{"volume", "v"}, 1},
		} {
			if v, err := fams.Value(c.name, c.labels...); err != nil || v != c.want {
				t.Errorf("%s: %s%v = %v, %v; want %v", m.h.addr, c.name, c.labels, v, err, c.want)
			}
		}
	}
	// Flushed writes are on the secondary when the flush returns.
	for i := 0; i < 20; i++ {
		rng.Read(buf[:4096*(1+rng.Intn(16))])
		off := rng.Int63n(size/4096-64) * 4096
		if _, err := va.WriteAt(buf[:4096*(1+rng.Intn(16))], off); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 && !bytes.Equal(a.read("v"), b.read("v")) {
			t.Fatalf("write %d acknowledged before the secondary applied it", i)
		}
		if err := va.Flush(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.read("v"), b.read("v")) {
			t.Fatalf("flush %d returned before the secondary held it", i)
		}
	}
	if h, err := b.d.pool.OpenVolume("v"); err == nil {
		_, werr := h.WriteAt(buf[:4096], 0)
		h.Close()
		if werr == nil {
			t.Fatal("the secondary's copy is writable")
		}
	}
	if _, err := b.d.exporter().Open("v"); err == nil {
		t.Fatal("the secondary serves the mirrored volume")
	}
	want := a.read("v")

	// The primary goes away: the secondary takes over after the lease.
	lost := time.Now()
	a.d.Close(ctx)
	b.waitState("v", control.RolePrimary, "")
	t.Logf("takeover %v after the primary stopped", time.Since(lost).Round(time.Millisecond))
	if epoch, holder, out := w.state(); epoch != 2 || holder != b.d.pool.ID() {
		t.Fatalf("witness after takeover: epoch %d holder %s outdated %s", epoch, holder, out)
	}
	if !bytes.Equal(b.read("v"), want) {
		t.Fatal("the new primary lacks flushed writes")
	}
	vb := b.export("v")
	rng.Read(buf)
	if _, err := vb.WriteAt(buf[:64<<10], 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := vb.Flush(); err != nil {
		t.Fatalf("flush on the new primary with the old one away: %v", err)
	}
	b.waitState("v", control.RolePrimary, control.MirrorDegraded)

	// Before it returns, the old primary took a write the new one never
	// got (as if written just before it was lost).
	p, err := cow.Open(cow.Options{Dir: dirA, SegmentSize: 1 << 20, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	h, err := p.OpenVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	split := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := h.WriteAt(split, 7<<20); err != nil {
		t.Fatal(err)
	}
	h.Flush()
	h.Close()
	p.Close()

	a = startMirrorHost(t, w, dirA, addrA)
	a.waitState("v", control.RoleSecondary, control.MirrorFollowing)
	b.waitState("v", control.RolePrimary, control.MirrorInSync)
	if !bytes.Equal(a.read("v"), b.read("v")) {
		t.Fatal("the old primary does not read as the new one after resync")
	}
	clone, err := a.d.pool.OpenVolume("v-split-1")
	if err != nil {
		t.Fatalf("split clone: %v (volumes %+v)", err, a.d.pool.Volumes())
	}
	got := make([]byte, 4096)
	clone.ReadAt(got, 7<<20)
	clone.Close()
	if !bytes.Equal(got, split) {
		t.Fatal("the split clone lacks the write the old primary took alone")
	}

	// Planned switchover back to A: no write lost, roles swap.
	rng.Read(buf)
	if _, err := vb.WriteAt(buf[:128<<10], 2<<20); err != nil {
		t.Fatal(err)
	}
	rep, err := b.c.Switchover(ctx, "v", control.MirrorSwitchoverRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("switchover: %s, paused %v", rep.Message, rep.Paused)
	a.waitState("v", control.RolePrimary, "")
	b.waitState("v", control.RoleSecondary, "")
	if _, err := vb.WriteAt(buf[:4096], 0); err == nil {
		t.Fatal("the old primary's export still takes writes")
	}
	a.waitState("v", control.RolePrimary, control.MirrorInSync)
	if !bytes.Equal(a.read("v"), b.read("v")) {
		t.Fatal("after the switchover the hosts differ")
	}
	va = a.export("v")
	if _, err := va.WriteAt(buf[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if err := va.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.read("v"), b.read("v")) {
		t.Fatal("a flush on the new primary returned before the secondary held it")
	}
}
