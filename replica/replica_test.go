package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strata-storage/strata/cow"
)

const testToken = "s3cret-token"

type site struct {
	t    testing.TB
	pool *cow.Pool
	srv  *Server
	addr string
}

func newSite(t *testing.T) *site {
	t.Helper()
	return newSiteIn(t, t.TempDir())
}

// newSiteIn makes a site whose pool lives in dir.
func newSiteIn(t testing.TB, dir string) *site {
	t.Helper()
	return newSiteOpts(t, cow.Options{Dir: dir})
}

// newSiteOpts makes a site with a pool opened with opts (a small segment
// size, no background work unless set).
func newSiteOpts(t testing.TB, opts cow.Options) *site {
	t.Helper()
	opts.SegmentSize, opts.GCInterval, opts.CheckpointInterval = 4<<20, -1, -1
	p, err := cow.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &site{t: t, pool: p, addr: l.Addr().String()}
	s.srv = &Server{Receiver: NewReceiver(p, nil), Token: testToken}
	go s.srv.Serve(l)
	t.Cleanup(func() {
		l.Close()
		s.srv.Close()
		p.Close()
	})
	return s
}

func (s *site) ship(to *site, vol, remote string) (Result, error) {
	s.t.Helper()
	tgt := NewRemote(RemoteOptions{Addr: to.addr, Token: testToken})
	defer tgt.Close()
	return Ship(context.Background(), ShipOptions{Pool: s.pool, Volume: vol, RemoteName: remote, Target: tgt, PinID: "test:" + to.addr, BatchBytes: 1 << 20})
}

// read returns a volume's whole content at a point ("" for the head).
func (s *site) read(vol, point string) []byte {
	s.t.Helper()
	return readAt(s.t, s.pool, vol, point)
}

// readAt returns a volume's whole content at a point of pool p ("" for
// the head).
func readAt(t testing.TB, p *cow.Pool, vol, point string) []byte {
	t.Helper()
	var h *cow.Volume
	var err error
	if point == "" {
		h, err = p.OpenVolume(vol)
	} else {
		h, err = p.OpenVolumeAt(vol, point)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	b := make([]byte, h.Size())
	if _, err := h.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// scribble makes n random changes to vol (writes of 1-64 blocks, some
// unaligned, trims, zeroes).
func scribble(t *testing.T, p *cow.Pool, vol string, rng *rand.Rand, n int) {
	t.Helper()
	h, err := p.OpenVolume(vol)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	size := h.Size()
	for i := 0; i < n; i++ {
		off := rng.Int63n(size/4096) * 4096
		l := int64(1+rng.Intn(64)) * 4096
		if off+l > size {
			l = size - off
		}
		switch rng.Intn(10) {
		case 0:
			err = h.Trim(off, l)
		case 1:
			err = h.WriteZeroes(off, l, rng.Intn(2) == 0)
		case 2:
			b := make([]byte, 100+rng.Intn(5000))
			rng.Read(b)
			at := min(off+int64(rng.Intn(4000)), size-int64(len(b)))
			_, err = h.WriteAt(b, at)
		default:
			b := make([]byte, l)
			rng.Read(b)
			_, err = h.WriteAt(b, off)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
}

// fillRandom writes n random bytes at the start of vol, in 1 MiB writes.
func fillRandom(t *testing.T, p *cow.Pool, vol string, n int64, rng *rand.Rand) {
	t.Helper()
	h, err := p.OpenVolume(vol)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		rng.Read(buf)
		if _, err := h.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
}

func seed(t *testing.T) *rand.Rand {
	s := time.Now().UnixNano()
	if v := os.Getenv("STRATA_SEED"); v != "" {
		s, _ = strconv.ParseInt(v, 10, 64)
	}
	t.Logf("STRATA_SEED=%d", s)
	return rand.New(rand.NewSource(s))
}

func TestShipPointsAndDelta(t *testing.T) {
	a, b := newSite(t), newSite(t)
	rng := seed(t)
	if _, err := a.pool.CreateVolume("v", 16<<20); err != nil {
		t.Fatal(err)
	}
	snaps := []string{}
	snap := func(name string) {
		// s2 travels in the first copy, s5 as a record: both carry what
		// the snapshot records besides its name.
		o := cow.SnapshotOptions{Label: "label of " + name, Scheduled: name == "s2" || name == "s5", AppConsistent: name == "s5"}
		if _, err := a.pool.CreateSnapshotWith("v", name, o); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, name)
	}
	scribble(t, a.pool, "v", rng, 200)
	snap("s1")
	scribble(t, a.pool, "v", rng, 100)
	if err := a.pool.ResizeVolume("v", 20<<20, false); err != nil {
		t.Fatal(err)
	}
	snap("s2")
	res, err := a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || res.Acked != a.pool.AppliedSeq() {
		t.Fatalf("first run: %+v", res)
	}
	t.Logf("first run: %d batches, %d data bytes, %d raw, %d stored", res.Batches, res.DataBytes, res.RawBytes, res.StoredBytes)
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after the first run")
	}
	// Later points travel as records: every snapshot shipped since reads the same.
	scribble(t, a.pool, "v", rng, 50)
	snap("s3")
	if _, err := a.pool.Rollback("v", "s1", false); err != nil {
		t.Fatal(err)
	}
	snap("s4-after-rollback")
	scribble(t, a.pool, "v", rng, 50)
	if err := a.pool.ResizeVolume("v", 12<<20, true); err != nil {
		t.Fatal(err)
	}
	snap("s5")
	scribble(t, a.pool, "v", rng, 20)
	res, err = a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Start == 0 || res.Full {
		t.Fatalf("second run started from scratch: %+v", res)
	}
	t.Logf("second run: %d records, %d batches, %d data bytes", res.Records, res.Batches, res.DataBytes)
	for _, sn := range snaps[2:] {
		if !bytes.Equal(a.read("v", sn), b.read("v", sn)) {
			t.Fatalf("snapshot %s differs", sn)
		}
	}
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after the second run")
	}
	marks := func(p *cow.Pool) map[string][2]bool {
		snaps, err := p.Snapshots("v")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string][2]bool{}
		for _, sn := range snaps {
			m[sn.Name] = [2]bool{sn.Scheduled, sn.AppConsistent}
		}
		return m
	}
	if am, bm := marks(a.pool), marks(b.pool); fmt.Sprint(am) != fmt.Sprint(bm) || bm["s2"] != [2]bool{true, false} || bm["s5"] != [2]bool{true, true} {
		t.Fatalf("snapshot marks: source %v, replica %v", am, bm)
	}
	// Only the delta travels: 4 KiB more, then a run that carries 4 KiB.
	h, _ := a.pool.OpenVolume("v")
	h.WriteAt(bytes.Repeat([]byte{7}, 4096), 8192)
	h.Close()
	res, err = a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	if res.DataBytes != 4096 || res.Records != 1 || res.Full {
		t.Fatalf("delta run shipped %+v, want one record of 4096 bytes", res)
	}
	// Nothing new: nothing travels, and the run still succeeds.
	res, err = a.ship(b, "v", "")
	if err != nil || res.DataBytes != 0 || res.Batches != 0 {
		t.Fatalf("idle run: %+v %v", res, err)
	}
	// The replica is read-only over NBD-like handles.
	rh, err := b.pool.OpenVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rh.WriteAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("a replica accepted a write")
	}
	rh.Close()
}

func TestWrongTokenAndBadInput(t *testing.T) {
	a, b := newSite(t), newSite(t)
	a.pool.CreateVolume("v", 4<<20)
	scribble(t, a.pool, "v", seed(t), 20)
	tgt := NewRemote(RemoteOptions{Addr: b.addr, Token: "wrong"})
	_, err := Ship(context.Background(), ShipOptions{Pool: a.pool, Volume: "v", Target: tgt})
	tgt.Close()
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong token: %v", err)
	}
	if len(b.pool.Volumes()) != 0 {
		t.Fatal("a refused stream created a volume")
	}
	if _, err := a.ship(b, "v", ""); err != nil {
		t.Fatal(err)
	}
	good := b.read("v", "")
	acked := func() uint64 {
		st, _ := b.pool.ReplicaStateOf("v")
		return st.Acked
	}
	before := acked()
	scribble(t, a.pool, "v", seed(t), 10)

	// A corrupt batch and a truncated one are refused; nothing applies.
	for _, mode := range []string{"corrupt", "truncated", "wrong-from"} {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := a.pool.VolumeInfo("v")
		writeJSON(c, msgHello, helloMsg{Token: testToken, Hello: Hello{Source: VolumeID{Pool: a.pool.ID(), Vol: info.ID, Name: "v"}, Target: "v", Size: info.Size}})
		br := newReader(c)
		if typ, _, err := readMsg(br); err != nil || typ != msgState {
			t.Fatalf("%s: hello: %c %v", mode, typ, err)
		}
		bt := &Batch{From: before, To: before + 5, Ops: []Op{{Kind: OpWrite, Offset: 0, Length: 4096, Data: bytes.Repeat([]byte{9}, 4096)}, {Kind: OpPoint, Seq: before + 5}}}
		if mode == "wrong-from" {
			bt.From = before + 1
		}
		frame, _, _ := EncodeBatch(bt)
		switch mode {
		case "corrupt":
			frame[len(frame)-3] ^= 0x40
			writeMsg(c, msgBatch, frame)
		case "truncated":
			var hdr [5]byte
			hdr[0] = msgBatch
			hdr[1] = byte(len(frame))
			hdr[2] = byte(len(frame) >> 8)
			c.Write(hdr[:])
			c.Write(frame[:len(frame)/2])
			c.(*net.TCPConn).CloseWrite()
		case "wrong-from":
			writeMsg(c, msgBatch, frame)
		}
		typ, msg, _ := readMsg(br)
		c.Close()
		if mode != "truncated" && typ != msgError {
			t.Fatalf("%s: got %c %s, want an error", mode, typ, msg)
		}
		t.Logf("%s: %s", mode, msg)
		// The server's handler finishes before the next stream opens.
		waitFor(t, func() bool { return b.srv.idle() })
		if acked() != before || !bytes.Equal(good, b.read("v", "")) {
			t.Fatalf("%s: the replica changed", mode)
		}
	}
	// The source lost nothing: a real run brings the replica up to date.
	if _, err := a.ship(b, "v", ""); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after recovery")
	}
}

func waitFor(t *testing.T, f func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if f() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("timed out")
}

func (s *Server) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns) == 0
}

func newReader(c net.Conn) io.Reader { return c }

// cutProxy forwards to addr and closes every connection after limit bytes
// from the client.
type cutProxy struct {
	l     net.Listener
	mu    sync.Mutex
	limit int64
}

func newCutProxy(t *testing.T, addr string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, limit: -1}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer u.Close()
				p.mu.Lock()
				limit := p.limit
				p.mu.Unlock()
				go io.Copy(c, u)
				if limit < 0 {
					io.Copy(u, c)
				} else {
					io.CopyN(u, c, limit)
				}
			}()
		}
	}()
	return p
}

func (p *cutProxy) setLimit(n int64) {
	p.mu.Lock()
	p.limit = n
	p.mu.Unlock()
}

func TestInterruptedRunResumes(t *testing.T) {
	a, b := newSite(t), newSite(t)
	rng := seed(t)
	a.pool.CreateVolume("v", 32<<20)
	fillRandom(t, a.pool, "v", 24<<20, rng)
	a.pool.CreateSnapshot("v", "base", "")
	proxy := newCutProxy(t, b.addr)
	ship := func() (Result, error) {
		tgt := NewRemote(RemoteOptions{Addr: proxy.l.Addr().String(), Token: testToken})
		defer tgt.Close()
		return Ship(context.Background(), ShipOptions{Pool: a.pool, Volume: "v", Target: tgt, PinID: "p", BatchBytes: 2 << 20})
	}
	// First run: cut after ~10 MiB of the full copy. The rerun sends only
	// the parts the target did not acknowledge.
	proxy.setLimit(10 << 20)
	r0, err := ship()
	if err == nil {
		t.Fatal("a cut run succeeded")
	}
	t.Logf("cut run: %d bytes acknowledged: %v", r0.DataBytes, err)
	proxy.setLimit(-1)
	r1, err := ship()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rerun: %d bytes, resumed at byte %d", r1.DataBytes, r1.Resumed)
	// (The cut may also lose acks of parts the target applied: it resumes
	// after those too.)
	if r1.Resumed == 0 || r1.Resumed < uint64(r0.DataBytes) || r1.Resumed+uint64(r1.DataBytes) != 24<<20 {
		t.Fatalf("the rerun of an interrupted full copy sent %d bytes from byte %d; the cut run had %d acknowledged of 24 MiB", r1.DataBytes, r1.Resumed, r0.DataBytes)
	}
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after a resumed full copy")
	}
	// Incremental: 8 MiB of writes, cut after 3 MiB; the rerun sends no
	// more than what was not acknowledged.
	scribble(t, a.pool, "v", rng, 150)
	proxy.setLimit(3 << 20)
	r1, err = ship()
	if err == nil {
		t.Fatal("a cut run succeeded")
	}
	proxy.setLimit(-1)
	r2, err := ship()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cut run shipped %d bytes acked to %d; rerun %d bytes from %d", r1.DataBytes, r1.Acked, r2.DataBytes, r2.Start)
	if r2.Start == 0 || r2.Full {
		t.Fatalf("rerun started over: %+v", r2)
	}
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after a resumed incremental run")
	}
	if !bytes.Equal(a.read("v", "base"), b.read("v", "base")) {
		t.Fatal("snapshot differs")
	}
}

func TestPromoteFailbackSplitBrain(t *testing.T) {
	a, b := newSite(t), newSite(t)
	rng := seed(t)
	a.pool.CreateVolume("v", 8<<20)
	scribble(t, a.pool, "v", rng, 50)
	if _, err := a.ship(b, "v", ""); err != nil {
		t.Fatal(err)
	}
	// Failover: B takes over and is written.
	if _, err := Promote(context.Background(), b.pool, "v"); err != nil {
		t.Fatal(err)
	}
	scribble(t, b.pool, "v", rng, 30)
	// A (not written since) keeps shipping from cron: refused.
	if _, err := a.ship(b, "v", ""); !errors.Is(err, ErrRefused) {
		t.Fatalf("shipping onto a promoted replica: %v", err)
	}
	// Failback: B ships back to A; only B's writes since travel.
	res, err := b.ship(a, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("failback: %s; %d data bytes, full=%v", res.Message, res.DataBytes, res.Full)
	if res.Full || res.Start == 0 {
		t.Fatalf("failback copied everything: %+v", res)
	}
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after failback")
	}
	// Split brain: promote A's copy back, write on both sides.
	if _, err := Promote(context.Background(), a.pool, "v"); err != nil {
		t.Fatal(err)
	}
	scribble(t, a.pool, "v", rng, 10)
	scribble(t, b.pool, "v", rng, 10)
	if _, err := a.ship(b, "v", ""); !errors.Is(err, ErrRefused) {
		t.Fatalf("split brain not refused: %v", err)
	} else {
		t.Logf("split brain: %v", err)
	}
	// The user keeps A's side: B discards its writes.
	if _, err := Demote(context.Background(), b.pool, "v", false); !errors.Is(err, ErrRefused) {
		t.Fatalf("demote without --discard-local: %v", err)
	}
	bHead := b.read("v", "")
	if _, err := Demote(context.Background(), b.pool, "v", true); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ship(b, "v", ""); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after resolving the split brain")
	}
	// B's discarded writes stay readable as a point in time.
	found := false
	for s := b.pool.AppliedSeq(); s > 0 && !found; s-- {
		h, err := b.pool.OpenVolumeAt("v", fmt.Sprintf("seq:%d", s))
		if err != nil {
			continue
		}
		got := make([]byte, h.Size())
		h.ReadAt(got, 0)
		h.Close()
		found = bytes.Equal(got, bHead)
	}
	if !found {
		t.Fatal("the discarded writes are not readable as a point in time")
	}
}

func TestRestoreFromSite(t *testing.T) {
	a, b := newSite(t), newSite(t)
	rng := seed(t)
	a.pool.CreateVolume("v", 8<<20)
	scribble(t, a.pool, "v", rng, 60)
	a.pool.CreateSnapshot("v", "s1", "")
	scribble(t, a.pool, "v", rng, 60)
	if _, err := a.ship(b, "v", ""); err != nil {
		t.Fatal(err)
	}
	// Pull from the replica site at a snapshot and at its newest point.
	for _, at := range []string{"s1", ""} {
		name := "back-" + at
		if at == "" {
			name = "back-head"
		}
		res, err := Restore(context.Background(), RestoreOptions{Pool: a.pool, From: NewRemote(RemoteOptions{Addr: b.addr, Token: testToken}), Volume: "v", At: at, NewName: name})
		if err != nil {
			t.Fatal(err)
		}
		want := a.read("v", "")
		if at != "" {
			want = a.read("v", at)
		}
		if !bytes.Equal(want, a.read(name, "")) {
			t.Fatalf("restore at %q differs", at)
		}
		t.Logf("restored %+v", res)
	}
	// A point the site does not have: a clear error, no volume left behind.
	_, err := Restore(context.Background(), RestoreOptions{Pool: a.pool, From: NewRemote(RemoteOptions{Addr: b.addr, Token: testToken}), Volume: "v", At: "nope", NewName: "bad"})
	if !errors.Is(err, cow.ErrPoint) {
		t.Fatalf("restore at a missing point: %v", err)
	}
	if _, err := a.pool.VolumeInfo("bad"); err == nil {
		t.Fatal("a failed restore left its volume")
	}
}

// TestTargetFullMidBatch: the replica site's disk fills up while a batch is
// being applied (something else took the space after the receiver checked
// it). The batch fails with a no-space error, the replica goes back to its
// last complete point, and a rerun once there is room completes.
func TestTargetFullMidBatch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs for the replica site")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() }) // after the pool closes
	// The journal allocates room per record (not megabytes ahead), so the
	// disk filling up shows in the middle of the batch.
	a, b := newSite(t), newSiteOpts(t, cow.Options{Dir: dir + "/pool", JournalReserve: -1})
	rng := seed(t)
	a.pool.CreateVolume("v", 32<<20)
	h, _ := a.pool.OpenVolume("v")
	buf := make([]byte, 256<<10)
	write := func(from, to int64) {
		for off := from; off < to; off += int64(len(buf)) {
			rng.Read(buf)
			if _, err := h.WriteAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
		h.Flush()
	}
	write(0, 2<<20)
	if _, err := a.ship(b, "v", ""); err != nil {
		t.Fatal(err)
	}
	write(4<<20, 12<<20)
	h.Close()

	// Fill the disk when the third batch (four 256 KiB writes) starts,
	// leaving room for about two of its writes.
	filler := dir + "/filler"
	batches := 0
	var before *cow.ReplicaState // at the start of the third batch
	hook := func(*Batch) {
		if batches++; batches != 3 {
			return
		}
		before, _ = b.pool.ReplicaStateOf("v")
		free, err := b.pool.FreeBytes()
		if err != nil {
			t.Error(err)
			return
		}
		f, err := os.Create(filler)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, free-640<<10); err != nil {
			t.Error(err)
		}
	}
	testHookApply.Store(&hook)
	defer testHookApply.Store(nil)
	r1, err := a.ship(b, "v", "")
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a run onto a full disk: got %v, want a no-space error", err)
	}
	t.Logf("full mid-batch: %v (acked seq %d)", err, r1.Acked)
	rs, err := b.pool.ReplicaStateOf("v")
	if err != nil || rs == nil {
		t.Fatal(rs, err)
	}
	if rs.Acked != r1.Acked || rs.Diff {
		t.Fatalf("replica state after the failed batch: %+v, the shipper saw seq %d acknowledged", rs, r1.Acked)
	}
	want := a.read("v", fmt.Sprintf("seq:%d", rs.Acked))
	if !bytes.Equal(want, b.read("v", "")) {
		t.Fatalf("the replica's head is not the source at seq %d: the failed batch was partly applied", rs.Acked)
	}
	// Part of the batch did land (the first write after the last complete
	// point) and was rolled back.
	if before == nil || before.Acked != rs.Acked {
		t.Fatalf("replica state when the failed batch started: %+v; now %+v", before, rs)
	}
	if bytes.Equal(want, b.read("v", fmt.Sprintf("seq:%d", before.Local+1))) {
		t.Fatalf("no write of the failed batch landed before the disk was full (local seq %d): the test missed the rollback", before.Local)
	}
	os.Remove(filler)
	r2, err := a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	if r2.Start != r1.Acked {
		t.Fatalf("rerun started at seq %d, want %d", r2.Start, r1.Acked)
	}
	if !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatal("head differs after the rerun")
	}
}

// TestShipSkipsUnchanged: writes to other volumes of the pool do not make
// a run send anything (the target already holds the volume's content),
// until the target's point is older than IdleAdvance: then one empty batch
// moves it along. A snapshot alone is a change and travels.
func TestShipSkipsUnchanged(t *testing.T) {
	a, b := newSite(t), newSite(t)
	a.pool.CreateVolume("v", 8<<20)
	a.pool.CreateVolume("other", 8<<20)
	rng := seed(t)
	scribble(t, a.pool, "v", rng, 20)
	first, err := a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	scribble(t, a.pool, "other", rng, 20)
	idle, err := a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	if idle.Batches != 0 || idle.Acked != first.Acked || idle.LagSeq != 0 {
		t.Fatalf("a run after writes to another volume: %+v, want nothing sent (first run acked %d)", idle, first.Acked)
	}
	rs, _ := b.pool.ReplicaStateOf("v")
	if rs.Acked != first.Acked {
		t.Fatalf("the replica moved to %d", rs.Acked)
	}
	// The pin no longer holds the other volume's records.
	if pin := a.pool.ShipPins()["test:"+b.addr]; pin.Seq != first.Acked || pin.Clean != idle.Upto {
		t.Fatalf("pin after a run with nothing to send: %+v, want seq %d clean %d", pin, first.Acked, idle.Upto)
	}
	// A change after the clean range travels (the scan starts there).
	scribble(t, a.pool, "v", rng, 3)
	moved, err := a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	if moved.Batches != 1 || moved.Start != first.Acked || !bytes.Equal(a.read("v", ""), b.read("v", "")) {
		t.Fatalf("a run after the volume changed again: %+v", moved)
	}

	// An old target point is moved along by an empty batch.
	scribble(t, a.pool, "other", rng, 5)
	tgt := NewRemote(RemoteOptions{Addr: b.addr, Token: testToken})
	adv, err := Ship(context.Background(), ShipOptions{Pool: a.pool, Volume: "v", Target: tgt, PinID: "test:" + b.addr, IdleAdvance: time.Nanosecond})
	tgt.Close()
	if err != nil {
		t.Fatal(err)
	}
	if adv.Batches != 1 || adv.DataBytes != 0 || adv.Acked != a.pool.AppliedSeq() {
		t.Fatalf("an advancing run: %+v, want one empty batch to seq %d", adv, a.pool.AppliedSeq())
	}
	if pins := a.pool.ShipPins(); pins["test:"+b.addr].Seq != adv.Acked {
		t.Fatalf("pin after an advancing run: %+v", pins)
	}

	// A snapshot alone travels.
	if _, err := a.pool.CreateSnapshot("v", "snap", ""); err != nil {
		t.Fatal(err)
	}
	r, err := a.ship(b, "v", "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Batches != 1 {
		t.Fatalf("a snapshot alone: %+v", r)
	}
	if !bytes.Equal(a.read("v", "snap"), b.read("v", "snap")) {
		t.Fatal("snapshot differs")
	}
	// A deleted volume's pins go with it.
	if err := a.pool.DeleteVolume("v", false); err != nil {
		t.Fatal(err)
	}
	if pins := a.pool.ShipPins(); len(pins) != 0 {
		t.Fatalf("pins after the volume was deleted: %+v", pins)
	}
}

// TestInterruptedDiffUndone: a diff cut off before its last part is
// parked: the replica reads as its last complete point, and offers the
// diff for resuming; a stream that sends something else drops it.
func TestInterruptedDiffUndone(t *testing.T) {
	a, b := newSite(t), newSite(t)
	rng := seed(t)
	a.pool.CreateVolume("v", 8<<20)
	fillRandom(t, a.pool, "v", 8<<20, rng)
	proxy := newCutProxy(t, b.addr)
	proxy.setLimit(5 << 20)
	tgt := NewRemote(RemoteOptions{Addr: proxy.l.Addr().String(), Token: testToken})
	if _, err := Ship(context.Background(), ShipOptions{Pool: a.pool, Volume: "v", Target: tgt, BatchBytes: 1 << 20}); err == nil {
		t.Fatal("a cut run succeeded")
	}
	tgt.Close()
	// A new stream waits for the cut one to end at the target.
	info, _ := a.pool.VolumeInfo("v")
	direct := NewRemote(RemoteOptions{Addr: b.addr, Token: testToken})
	defer direct.Close()
	ctx := context.Background()
	st, err := direct.Open(ctx, Hello{Source: VolumeID{Pool: a.pool.ID(), Vol: info.ID, Name: "v"}, Target: "v", Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := b.pool.ReplicaStateOf("v")
	if rs == nil || rs.Diff || rs.DiffTo == 0 || rs.DiffNext == 0 || rs.DiffParked == 0 {
		t.Fatalf("replica state after a cut full copy: %+v, want the diff parked", rs)
	}
	// Between streams the replica reads as a source point (here: the
	// empty volume it was before the copy); the parts stay readable.
	if !bytes.Equal(b.read("v", ""), make([]byte, 8<<20)) {
		t.Fatal("the replica's head holds part of an interrupted diff")
	}
	if bytes.Equal(b.read("v", fmt.Sprintf("seq:%d", rs.DiffParked)), make([]byte, 8<<20)) {
		t.Fatal("the parked parts are not readable at their point")
	}
	if st.DiffTo != rs.DiffTo || st.DiffNext != rs.DiffNext || st.Acked != 0 {
		t.Fatalf("state offered %+v, replica holds %+v", st, rs)
	}
	data := bytes.Repeat([]byte{0xab}, 4096)
	err = direct.Send(ctx, &Batch{From: 0, To: st.DiffTo + 5, Size: 8 << 20, Time: time.Now().UnixNano(), Ops: []Op{
		{Kind: OpWrite, Seq: st.DiffTo + 5, Offset: 0, Length: 4096, Data: data},
		{Kind: OpPoint, Seq: st.DiffTo + 5},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8<<20)
	copy(want, data)
	if !bytes.Equal(b.read("v", ""), want) {
		t.Fatal("the part of the interrupted diff was not undone before a different batch")
	}
	if rs, _ := b.pool.ReplicaStateOf("v"); rs.Diff || rs.DiffTo != 0 || rs.Acked != st.DiffTo+5 {
		t.Fatalf("replica state after the batch: %+v", rs)
	}
}
