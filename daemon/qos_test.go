package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/control"
)

// qosClock is a clock that moves only when the test says; it counts the
// calls a limiter makes.
type qosClock struct {
	mu     sync.Mutex
	now    time.Time
	calls  int
	timers []qosTimer
}

type qosTimer struct {
	at time.Time
	c  chan time.Time
}

func newQoSClock() *qosClock { return &qosClock{now: time.Unix(1_000_000, 0)} }

func (c *qosClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	return c.now
}

func (c *qosClock) Timer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	t := qosTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	return t.c, func() bool { return true }
}

// advance moves the clock and fires the timers due.
func (c *qosClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.c <- c.now
			continue
		}
		kept = append(kept, t)
	}
	c.timers = kept
}

func (c *qosClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

func (c *qosClock) callCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

func testLimiter(c clock) *volLimiter {
	return newVolLimiter(c, [2]prometheus.Counter{prometheus.NewCounter(prometheus.CounterOpts{Name: "r"}), prometheus.NewCounter(prometheus.CounterOpts{Name: "w"})})
}

// delayOf charges a request like wait does and returns how long it must
// wait at the clock's time, without waiting.
func delayOf(l *volLimiter, op int, n int64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	return untilAll(now, l.chargeLocked(now, op, n, nil))
}

func TestQoSTokenMath(t *testing.T) {
	c := newQoSClock()
	l := testLimiter(c)
	l.set(control.QoS{IOPS: 100, Burst: 1})
	// A full bucket: one second of allowance goes at once, then one
	// request every 10 ms.
	for i := range 100 {
		if d := delayOf(l, opRead, 4096); d != 0 {
			t.Fatalf("request %d of the burst waits %v", i, d)
		}
	}
	for i := 1; i <= 3; i++ {
		if d, want := delayOf(l, opWrite, 4096), time.Duration(i)*10*time.Millisecond; d != want {
			t.Fatalf("request %d past the burst waits %v, want %v", i, d, want)
		}
	}
	// Idle for 10 s: the unused allowance is capped at the burst (3
	// requests of debt paid, 100 kept, not 997).
	c.advance(10 * time.Second)
	for i := range 100 {
		if d := delayOf(l, opRead, 0); d != 0 {
			t.Fatalf("request %d after idling waits %v", i, d)
		}
	}
	if d := delayOf(l, opRead, 0); d != 10*time.Millisecond {
		t.Fatalf("the request past the capped allowance waits %v, want 10ms", d)
	}

	// Separate read and write limits: each direction draws on its own.
	l.set(control.QoS{ReadIOPS: 10, WriteIOPS: 20, Burst: 0})
	if d := delayOf(l, opRead, 0); d != 100*time.Millisecond {
		t.Fatalf("a read at 10 IOPS with no burst waits %v, want 100ms", d)
	}
	if d := delayOf(l, opWrite, 0); d != 50*time.Millisecond {
		t.Fatalf("a write at 20 IOPS with no burst waits %v, want 50ms", d)
	}
}

func TestQoSBandwidthDebt(t *testing.T) {
	c := newQoSClock()
	l := testLimiter(c)
	l.set(control.QoS{BW: 1 << 20, Burst: 0.5})
	// 4 MiB against 0.5 MiB of allowance: it goes once 3.5 MiB of debt
	// is paid, and the next request waits behind that debt.
	if d := delayOf(l, opWrite, 4<<20); d != 3500*time.Millisecond {
		t.Fatalf("a 4 MiB write waits %v, want 3.5s", d)
	}
	if d := delayOf(l, opRead, 1<<20); d != 4500*time.Millisecond {
		t.Fatalf("the 1 MiB read behind it waits %v, want 4.5s", d)
	}
	c.advance(4500 * time.Millisecond)
	if d := delayOf(l, opRead, 512<<10); d != 500*time.Millisecond {
		t.Fatalf("a 512 KiB read once the debt is paid waits %v, want 0.5s", d)
	}
	// Read bandwidth only: writes do not wait for it.
	l.set(control.QoS{ReadBW: 1 << 20})
	if d := delayOf(l, opWrite, 64<<20); d != 0 {
		t.Fatalf("a write under a read-only limit waits %v", d)
	}
	if l.on[opWrite].Load() || !l.on[opRead].Load() {
		t.Fatalf("limited directions: read %v write %v, want read only", l.on[opRead].Load(), l.on[opWrite].Load())
	}
}

// waitAsync runs l.wait in a goroutine; the channel closes when it returns.
func waitAsync(l *volLimiter, op int, n int64) chan struct{} {
	done := make(chan struct{})
	go func() {
		l.wait(op, n)
		close(done)
	}()
	return done
}

func waitPending(t *testing.T, c *qosClock, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); c.pending() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d request(s) waiting, want %d", c.pending(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}

func TestQoSLiveChange(t *testing.T) {
	c := newQoSClock()
	l := testLimiter(c)
	l.set(control.QoS{IOPS: 1, Burst: 0})
	// Two requests at 1 IOPS: 1 s and 2 s of debt.
	a := waitAsync(l, opWrite, 4096)
	waitPending(t, c, 1)
	b := waitAsync(l, opWrite, 4096)
	waitPending(t, c, 2)
	// Raised to 10 IOPS: the 2 operations of debt take 0.2 s now.
	l.set(control.QoS{IOPS: 10, Burst: 0})
	waitPending(t, c, 4) // both waiters re-armed their timers
	c.advance(100 * time.Millisecond)
	if !isDone(a) {
		t.Fatal("the first request still waits 0.1 s after the limit went to 10 IOPS")
	}
	c.advance(99 * time.Millisecond)
	select {
	case <-b:
		t.Fatal("the second request went before its 0.2 s")
	case <-time.After(50 * time.Millisecond):
	}
	c.advance(time.Millisecond)
	if !isDone(b) {
		t.Fatal("the second request still waits at 0.2 s")
	}
	var m dto.Metric
	if err := l.throttled[opWrite].Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got < 0.3-1e-9 || got > 0.3+1e-9 {
		t.Fatalf("throttled write seconds %v, want 0.3 (0.1 + 0.2)", got)
	}

	// Cleared while a request waits: it goes without the clock moving.
	l.set(control.QoS{WriteBW: 1, Burst: 0})
	x := waitAsync(l, opWrite, 1<<20)
	waitPending(t, c, 1)
	l.set(control.QoS{})
	if !isDone(x) {
		t.Fatal("a request waiting for a cleared limit still waits")
	}
}

// TestQoSUnlimitedFree: with no limit in a direction, a request neither
// reads the clock nor allocates (it takes no lock: one atomic load).
func TestQoSUnlimitedFree(t *testing.T) {
	c := newQoSClock()
	l := testLimiter(c)
	if a := testing.AllocsPerRun(1000, func() { l.wait(opRead, 4096); l.wait(opWrite, 4096) }); a != 0 {
		t.Fatalf("%v allocations a request", a)
	}
	l.set(control.QoS{WriteIOPS: 1000, Burst: 1})
	before := c.callCount()
	for range 1000 {
		l.wait(opRead, 4096)
	}
	if n := c.callCount() - before; n != 0 {
		t.Fatalf("unlimited reads read the clock %d times", n)
	}
	l.wait(opWrite, 4096)
	if c.callCount() == before {
		t.Fatal("a limited write did not read the clock: the test checks nothing")
	}
}

func BenchmarkQoSUnlimited(b *testing.B) {
	l := testLimiter(realClock{})
	for b.Loop() {
		l.wait(opWrite, 4096)
	}
}

func TestQoSManagerDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qos.json")
	m, err := newQoSManager(path, newQoSClock())
	if err != nil {
		t.Fatal(err)
	}
	l := m.forVolume("vm1")
	iops, bw, burst := int64(500), int64(100<<20), 2.0
	q, err := m.set("vm1", control.QoSChange{IOPS: &iops, WriteBW: &bw, Burst: &burst})
	if err != nil {
		t.Fatal(err)
	}
	if want := (control.QoS{IOPS: 500, WriteBW: 100 << 20, Burst: 2}); q != want || l.limits() != want {
		t.Fatalf("set: %+v, limiter %+v, want %+v", q, l.limits(), want)
	}
	neg := int64(-1)
	if _, err := m.set("vm1", control.QoSChange{IOPS: &neg}); !errors.Is(err, errBadRequest) {
		t.Fatalf("a negative limit: %v", err)
	}
	if _, err := m.set("vm2", control.QoSChange{Burst: new(-1.0)}); !errors.Is(err, errBadRequest) {
		t.Fatalf("a negative burst: %v", err)
	}

	// A restart: the limits are back, and a limiter made then has them.
	m2, err := newQoSManager(path, newQoSClock())
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.forVolume("vm1").limits(); got != q {
		t.Fatalf("after a restart: %+v, want %+v", got, q)
	}
	// Clearing every limit drops the entry; a deleted volume's go.
	zero := int64(0)
	if _, err := m2.set("vm1", control.QoSChange{IOPS: &zero, WriteBW: &zero, Burst: new(DefaultBurst)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := m2.limits("vm1"); ok {
		t.Fatal("cleared limits still listed")
	}
	if _, err := m2.set("vm3", control.QoSChange{ReadIOPS: &iops}); err != nil {
		t.Fatal(err)
	}
	if err := m2.forget("vm3"); err != nil {
		t.Fatal(err)
	}
	m3, err := newQoSManager(path, newQoSClock())
	if err != nil {
		t.Fatal(err)
	}
	if all := m3.all(); len(all) != 0 {
		t.Fatalf("after clearing and forgetting: %+v", all)
	}
}

// TestQoSExports: a volume created through the API or at start gets the pool's
// default limits; its head export and its snapshot exports draw on one
// set of buckets; a read-limited export declines the inline read paths
// until the limit is cleared.
func TestQoSExports(t *testing.T) {
	ctx := context.Background()
	d, c := start(t, t.TempDir(), func(o *Options) {
		o.DefaultQoS = control.QoS{ReadIOPS: 20, Burst: 0}
		o.Volumes = []VolumeSpec{{Name: "boot", Size: 1 << 20}} // created at start
	})
	if _, err := c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "w", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	all, err := c.QoS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"w", "boot"} {
		if got := all[v]; got != (control.QoS{ReadIOPS: 20}) {
			t.Fatalf("new volume %s's limits: %+v, want the pool default", v, got)
		}
	}
	x := d.exporter()
	head, err := x.Open("w")
	if err != nil {
		t.Fatal(err)
	}
	defer head.Close()
	buf := make([]byte, 4096)
	if _, err := head.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, "w", control.SnapshotRequest{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	snap, err := x.Open("w@s")
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if ok, _ := head.(*throttledVolume).TryReadAt(buf, 0); ok {
		t.Fatal("a read-limited export served a read inline, past its limit")
	}
	// Four reads at 20 IOPS with no burst: 4 × 50 ms, shared by the two
	// exports.
	t0 := time.Now()
	for _, e := range []nbd.Export{head, snap, head, snap} {
		if _, err := e.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(t0); el < 190*time.Millisecond || el > 2*time.Second {
		t.Fatalf("four reads at 20 IOPS took %v, want 200ms", el)
	}
	zero := int64(0)
	if err := c.SetVolume(ctx, "w", control.SettingsRequest{QoS: &control.QoSChange{ReadIOPS: &zero}}); err != nil {
		t.Fatal(err)
	}
	inner := head.(*throttledVolume).headExport
	okInner, _ := inner.TryReadAt(buf, 0)
	if ok, _ := head.(*throttledVolume).TryReadAt(buf, 0); ok != okInner {
		t.Fatalf("unlimited: TryReadAt %v, the volume's own %v", ok, okInner)
	}
}

// TestQoSConcurrent: many requests of both directions against limits that
// change under them (run with -race); every request returns.
func TestQoSConcurrent(t *testing.T) {
	l := testLimiter(realClock{})
	l.set(control.QoS{IOPS: 4000, WriteBW: 64 << 20, Burst: 0})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 50 {
				l.wait(g%2, 64<<10)
			}
		})
	}
	stop := make(chan struct{})
	changer := make(chan struct{})
	go func() {
		defer close(changer)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			l.set([]control.QoS{{IOPS: 2000}, {WriteIOPS: 8000, Burst: 0.01}, {}, {ReadBW: 32 << 20, Burst: 0}}[i%4])
		}
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("requests still waiting after 20 s")
	}
	close(stop)
	<-changer
}

// TestQoSRelease: at shutdown a request waiting for a long debt goes at
// once, and the limits stay saved for the next start.
func TestQoSRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qos.json")
	c := newQoSClock()
	m, err := newQoSManager(path, c)
	if err != nil {
		t.Fatal(err)
	}
	bw, burst := int64(1), 0.0
	if _, err := m.set("v", control.QoSChange{WriteBW: &bw, Burst: &burst}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.set("u", control.QoSChange{WriteBW: &bw}); err != nil {
		t.Fatal(err)
	}
	x := waitAsync(m.forVolume("v"), opWrite, 1<<20) // 12 days at 1 B/s
	waitPending(t, c, 1)
	m.release()
	if !isDone(x) {
		t.Fatal("a waiting request still waits after release")
	}
	if l := m.forVolume("u"); l.on[opWrite].Load() || l.on[opRead].Load() {
		t.Fatal("a limiter made after release has its saved limits in force")
	}
	m2, err := newQoSManager(path, c)
	if err != nil {
		t.Fatal(err)
	}
	if q, ok := m2.limits("v"); !ok || q.WriteBW != 1 {
		t.Fatalf("limits after release and restart: %+v %v", q, ok)
	}
}
