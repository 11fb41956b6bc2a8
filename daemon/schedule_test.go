package daemon

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
)

// fakeClock is a Clock that moves only when the test says: every After
// is reported on sleeping, and the test fires it after setting the time.
type fakeClock struct {
	mu       sync.Mutex
	now      time.Time
	sleeping chan sleeper
	held     *sleeper // a request runUntil left for its next call
}

type sleeper struct {
	until time.Time
	ch    chan time.Time
}

func newFakeClock(start string) *fakeClock {
	t, err := time.Parse(time.RFC3339, start)
	if err != nil {
		panic(err)
	}
	return &fakeClock{now: t, sleeping: make(chan sleeper, 1<<16)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.sleeping <- sleeper{c.Now().Add(d), ch}
	return ch
}

// runUntil wakes the manager at each time it asks for, until it asks for
// one at or after end (the clock stays before it; that request waits for
// the next runUntil).
func (c *fakeClock) runUntil(t *testing.T, end time.Time) {
	t.Helper()
	for {
		var s sleeper
		if c.held != nil {
			s, c.held = *c.held, nil
		} else {
			select {
			case s = <-c.sleeping:
			case <-time.After(10 * time.Second):
				t.Fatal("the schedule manager stopped asking for time")
			}
		}
		if !s.until.Before(end) {
			c.held = &s
			return
		}
		c.set(s.until)
		s.ch <- c.Now()
	}
}

// startOnClock starts m without the wake-up set left for it: the first
// pass runs anyway, and a second one would leave a request for time that
// runUntil grants while that pass runs (its snapshot then carries the
// next slot's time, and that slot gets none).
func startOnClock(m *scheduleManager) {
	select {
	case <-m.kick:
	default:
	}
	m.start()
}

// memPool is a pool in memory whose records are timed by clk, with 1 MiB
// volumes vols.
func memPool(t *testing.T, clk *fakeClock, vols ...string) *cow.Pool {
	t.Helper()
	p, err := cow.Open(cow.Options{Dir: "data", FS: vfs.NewMem(), SegmentSize: 1 << 20, GCInterval: -1, CheckpointInterval: -1,
		IndexMemTableSize: 1 << 20, Now: clk.Now, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for _, v := range vols {
		if _, err := p.CreateVolume(v, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func snapNames(t *testing.T, p *cow.Pool, vol string, scheduled bool) []string {
	t.Helper()
	snaps, err := p.Snapshots(vol)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, sn := range snaps {
		if sn.Scheduled == scheduled {
			out = append(out, sn.Name)
		}
	}
	slices.Sort(out)
	return out
}

func mustKeep(t *testing.T, s string) control.Keep {
	t.Helper()
	k, err := control.ParseKeep(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A month of 15-minute snapshots under hourly=24,daily=14,weekly=8,
// monthly=12 leaves exactly the newest of each of the last 24 hours, 14
// days and 6 weeks (of which November 2026 has parts of six) and never
// touches a snapshot taken by hand. Stopped for five hours, the manager
// takes one snapshot at its start, not one for each missed slot.
func TestScheduleMonth(t *testing.T) {
	clk := newFakeClock("2026-11-01T00:00:00Z")
	p := memPool(t, clk, "vm")
	if _, err := p.CreateSnapshot("vm", "before-upgrade", ""); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "schedules.json")
	log := slog.New(slog.DiscardHandler)
	m, err := newScheduleManager(p, log, clk, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.set(control.Schedule{Volume: "vm", Every: 15 * time.Minute, Keep: mustKeep(t, "hourly=24,daily=14,weekly=8,monthly=12")}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	startOnClock(m)
	end, _ := time.Parse(time.RFC3339, "2026-12-01T00:00:00Z")
	clk.runUntil(t, end)
	m.close()
	t.Logf("a month of schedule took %s", time.Since(start))

	var want []string
	for h := 0; h < 24; h++ {
		want = append(want, time.Date(2026, 11, 30, h, 45, 0, 0, time.UTC).Format("auto-20060102T150405Z"))
	}
	for day := 17; day <= 29; day++ {
		want = append(want, time.Date(2026, 11, day, 23, 45, 0, 0, time.UTC).Format("auto-20060102T150405Z"))
	}
	want = append(want, "auto-20261101T234500Z", "auto-20261108T234500Z", "auto-20261115T234500Z")
	slices.Sort(want)
	if got := snapNames(t, p, "vm", true); !slices.Equal(got, want) {
		t.Fatalf("scheduled snapshots left after a month:\n got %v\nwant %v", got, want)
	}
	if got := snapNames(t, p, "vm", false); !slices.Equal(got, []string{"before-upgrade"}) {
		t.Fatalf("snapshots taken by hand: %v", got)
	}
	st := m.statuses()
	if len(st) != 1 || st[0].Scheduled != 40 || st[0].Pruned != 30*24*4-40 || st[0].LastError != "" {
		t.Fatalf("status: %+v", st)
	}

	// Down for five hours and ten minutes: the schedule is read back from
	// its file, and one snapshot stands for the twenty slots missed.
	clk.set(end.Add(5*time.Hour + 10*time.Minute))
	m, err = newScheduleManager(p, log, clk, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.start()
	s := <-clk.sleeping // the first pass is done
	m.close()
	// The new hour and the new day push the oldest hourly and daily out.
	want = slices.DeleteFunc(want, func(n string) bool { return n == "auto-20261130T004500Z" || n == "auto-20261117T234500Z" })
	want = append(want, "auto-20261201T051000Z")
	if got := snapNames(t, p, "vm", true); !slices.Equal(got, want) {
		t.Fatalf("after a restart:\n got %v\nwant %v", got, want)
	}
	if want := end.Add(5*time.Hour + 15*time.Minute); !s.until.Equal(want) {
		t.Fatalf("next pass at %s, want %s", s.until, want)
	}
}

// A replica's schedule takes no snapshots: it thins the copies of the
// source's scheduled snapshots by its own, longer policy, by the times
// in their names (when the source took them, not when they arrived).
func TestScheduleReplicaThinsOnly(t *testing.T) {
	clk := newFakeClock("2026-12-01T12:00:00Z")
	p := memPool(t, clk, "r")
	if err := p.SetReplicaState("r", &cow.ReplicaState{SourcePool: "0123", SourceVol: 1, SourceName: "vm"}); err != nil {
		t.Fatal(err)
	}
	// Four days of the source's hourly snapshots, all arriving now.
	for h := 0; h < 96; h++ {
		name := time.Date(2026, 11, 27, h, 0, 0, 0, time.UTC).Format("auto-20060102T150405Z")
		if _, err := p.CreateSnapshotWith("r", name, cow.SnapshotOptions{Scheduled: true}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.CreateSnapshot("r", "auto-by-hand", ""); err != nil {
		t.Fatal(err)
	}
	m, err := newScheduleManager(p, slog.New(slog.DiscardHandler), clk, filepath.Join(t.TempDir(), "s.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.set(control.Schedule{Volume: "r", Every: time.Hour, Keep: mustKeep(t, "daily=3")}); err != nil {
		t.Fatal(err)
	}
	m.pass(context.Background())
	want := []string{"auto-20261128T230000Z", "auto-20261129T230000Z", "auto-20261130T230000Z"}
	if got := snapNames(t, p, "r", true); !slices.Equal(got, want) {
		t.Fatalf("replica kept %v, want %v", got, want)
	}
	if got := snapNames(t, p, "r", false); !slices.Equal(got, []string{"auto-by-hand"}) {
		t.Fatalf("snapshots taken by hand: %v", got)
	}
	if st := m.statuses(); len(st) != 1 || !st[0].Replica || st[0].Pruned != 93 {
		t.Fatalf("status: %+v", st)
	}
}

// The pool-wide default applies to volumes without a schedule of their
// own; a volume's own schedule overrides it, and removing it goes back
// to the default.
func TestScheduleDefaultAndOverride(t *testing.T) {
	clk := newFakeClock("2026-12-01T12:00:00Z")
	p := memPool(t, clk, "a", "b")
	def := &control.Schedule{Every: time.Hour, Keep: mustKeep(t, "frequent=2")}
	m, err := newScheduleManager(p, slog.New(slog.DiscardHandler), clk, filepath.Join(t.TempDir(), "s.json"), def)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.set(control.Schedule{Volume: "b", Every: 30 * time.Minute, Keep: mustKeep(t, "frequent=4")}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		m.pass(context.Background())
		clk.set(clk.Now().Add(30 * time.Minute))
	}
	if a, b := snapNames(t, p, "a", true), snapNames(t, p, "b", true); len(a) != 2 || len(b) != 4 {
		t.Fatalf("default kept %v on a, the override %v on b", a, b)
	}
	st := m.statuses()
	if len(st) != 2 || !st[0].Default || st[1].Default || st[1].Every != 30*time.Minute {
		t.Fatalf("statuses: %+v", st)
	}
	if err := m.remove("b"); err != nil {
		t.Fatal(err)
	}
	if err := m.remove("b"); err == nil {
		t.Fatal("removing a schedule twice succeeded")
	}
	m.pass(context.Background())
	if b := snapNames(t, p, "b", true); len(b) != 2 {
		t.Fatalf("b back on the default kept %v", b)
	}
}

// Through the control API: a schedule is set, refused when malformed,
// kept across a restart, and dropped with its volume (a new volume of the
// same name does not inherit it).
func TestScheduleAPI(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d, c := start(t, dir, nil)
	for _, v := range []string{"v", "w"} {
		if _, err := c.CreateVolume(ctx, control.CreateVolumeRequest{Name: v, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	keep := mustKeep(t, "daily=7")
	if _, err := c.SetSchedule(ctx, control.Schedule{Volume: "v", Every: 7 * time.Minute, Keep: keep}); apiCode(err) != control.CodeInvalid {
		t.Fatalf("an interval that does not divide a day: %v", err)
	}
	if _, err := c.SetSchedule(ctx, control.Schedule{Volume: "nope", Every: time.Hour, Keep: keep}); apiCode(err) != control.CodeNotFound {
		t.Fatalf("a schedule for a missing volume: %v", err)
	}
	for _, v := range []string{"v", "w"} {
		if _, err := c.SetSchedule(ctx, control.Schedule{Volume: v, Every: time.Hour, Keep: keep}); err != nil {
			t.Fatal(err)
		}
	}
	waitSchedules(t, c, func(l []control.ScheduleStatus) bool {
		return len(l) == 2 && l[0].Scheduled == 1 && l[1].Scheduled == 1
	})
	if _, err := c.DeleteVolume(ctx, "v", false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	d.Close(ctx)
	_, c = start(t, dir, nil)
	l := waitSchedules(t, c, func(l []control.ScheduleStatus) bool { return len(l) == 1 && l[0].Scheduled == 1 })
	if l[0].Volume != "w" || l[0].Every != time.Hour || l[0].Keep != keep {
		t.Fatalf("after a restart: %+v", l)
	}
	if m, err := c.Metrics(ctx); err != nil || !strings.Contains(m, `strata_schedule_snapshots{volume="w"} 1`) || !strings.Contains(m, `strata_schedule_failing{volume="w"} 0`) {
		t.Fatalf("metrics: %v\n%s", err, m)
	}
	if err := c.RemoveSchedule(ctx, "v"); apiCode(err) != control.CodeNotFound {
		t.Fatalf("removing a schedule that is not there: %v", err)
	}
}

// waitSchedules polls the daemon's schedules (10 s at most) until ok.
func waitSchedules(t *testing.T, c *control.Client, ok func([]control.ScheduleStatus) bool) []control.ScheduleStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := c.Schedules(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ok(l) {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("schedules after 10 s: %+v", l)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A DR site keeps a longer policy than the source: the source keeps three
// days, the replica, shipped to once a simulated day, thins the copies of
// every scheduled snapshot it received to two days of hours and a month
// of days, and takes none itself.
func TestScheduleReplicaSite(t *testing.T) {
	ctx := context.Background()
	token, err := filepath.Abs(filepath.Join("testdata", "token"))
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	srcClk, dstClk := newFakeClock("2026-11-01T00:00:00Z"), newFakeClock("2026-11-01T00:00:00Z")
	_, src := start(t, t.TempDir(), func(o *Options) {
		o.Volumes = []VolumeSpec{{Name: "v", Size: 1 << 20}}
		o.Clock, o.Pool.Now = srcClk, srcClk.Now
	})
	_, dst := start(t, t.TempDir(), func(o *Options) {
		o.ReplicaListen, o.ReplicaTokenFile = addr, token
		o.Clock, o.Pool.Now = dstClk, dstClk.Now
	})
	target := control.TargetSpec{To: "strata://" + addr, TokenFile: token}
	ship := func() {
		t.Helper()
		if _, err := src.Replicate(ctx, control.ReplicateRequest{Volume: "v", TargetSpec: target}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The first copy goes before any snapshot: every later one travels
	// as a record, deleted at the source or not.
	ship()
	dstPolicy := control.Schedule{Volume: "v", Every: time.Hour, Keep: mustKeep(t, "hourly=48,daily=30")}
	if _, err := dst.SetSchedule(ctx, dstPolicy); err != nil {
		t.Fatal(err)
	}
	if _, err := src.SetSchedule(ctx, control.Schedule{Volume: "v", Every: time.Hour, Keep: mustKeep(t, "daily=3")}); err != nil {
		t.Fatal(err)
	}
	start := srcClk.Now()
	for day := 1; day <= 10; day++ {
		srcClk.runUntil(t, start.Add(time.Duration(day)*24*time.Hour))
		ship()
	}
	// One more pass at the replica, after the last shipment.
	for len(dstClk.sleeping) > 0 {
		<-dstClk.sleeping
	}
	if _, err := dst.SetSchedule(ctx, dstPolicy); err != nil {
		t.Fatal(err)
	}
	<-dstClk.sleeping

	names := func(c *control.Client) []string {
		snaps, err := c.Snapshots(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, sn := range snaps {
			if !sn.Scheduled {
				t.Fatalf("snapshot %s is not marked as scheduled", sn.Name)
			}
			out = append(out, sn.Name)
		}
		slices.Sort(out)
		return out
	}
	name := func(day, hour int) string {
		return time.Date(2026, 11, day, hour, 0, 0, 0, time.UTC).Format("auto-20060102T150405Z")
	}
	if got, want := names(src), []string{name(8, 23), name(9, 23), name(10, 23)}; !slices.Equal(got, want) {
		t.Fatalf("the source keeps %v, want %v", got, want)
	}
	var want []string
	for h := 0; h < 48; h++ {
		want = append(want, name(9+h/24, h%24))
	}
	for day := 1; day <= 8; day++ {
		want = append(want, name(day, 23))
	}
	slices.Sort(want)
	if got := names(dst); !slices.Equal(got, want) {
		t.Fatalf("the replica keeps\n%v\nwant\n%v", got, want)
	}
	l, err := dst.Schedules(ctx)
	if err != nil || len(l) != 1 || !l[0].Replica || l[0].Scheduled != len(want) || l[0].Pruned != 240-int64(len(want)) {
		t.Fatalf("replica schedule status: %+v %v", l, err)
	}
}
