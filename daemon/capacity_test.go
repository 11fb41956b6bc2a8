package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/metricstest"
)

// The forecast on a synthetic history: each window's rate is the change
// since its oldest sample, per day; the filesystem fills at the faster.
func TestForecast(t *testing.T) {
	now := time.Date(2027, 3, 31, 15, 4, 0, 0, time.UTC)
	d := func(ago int) string { return day(now.AddDate(0, 0, -ago)) }
	hist := []dayBytes{{d(40), 0}, {d(30), 10_000}, {d(20), 15_000}, {d(7), 24_000}, {d(1), 30_000}, {d(0), 30_500}}
	f := forecast(hist, now, 31_000, 70_000)
	// 7 days: (31000-24000)/7 = 1000 a day; 30 days: (31000-10000)/30 = 700.
	if f.Growth7d == nil || *f.Growth7d != 1000 || f.Growth30d == nil || *f.Growth30d != 700 {
		t.Fatalf("growth %v/%v a day, want 1000 and 700", fmtp(f.Growth7d), fmtp(f.Growth30d))
	}
	if f.DaysUntilFull == nil || *f.DaysUntilFull != 70 || f.Warning {
		t.Fatalf("days until full %s (warning %v), want 70 at the faster rate", fmtp(f.DaysUntilFull), f.Warning)
	}
	if f = forecast(hist, now, 31_000, 13_000); f.DaysUntilFull == nil || *f.DaysUntilFull != 13 || !f.Warning {
		t.Fatalf("13 days left: %s, warning %v", fmtp(f.DaysUntilFull), f.Warning)
	}
	// A gap: the 7-day window starts at its oldest sample (5 days ago),
	// the 30-day one at 10 days ago.
	gappy := []dayBytes{{d(10), 1_000}, {d(5), 2_000}}
	if f = forecast(gappy, now, 4_500, 1_000_000); *f.Growth7d != 500 || *f.Growth30d != 350 || *f.DaysUntilFull != 2000 {
		t.Fatalf("with gaps: %s, %s, %s; want 500, 350, 2000", fmtp(f.Growth7d), fmtp(f.Growth30d), fmtp(f.DaysUntilFull))
	}
	// Only today: no rate yet. Shrinking: never full.
	if f = forecast([]dayBytes{{d(0), 5}}, now, 50, 100); f.Growth7d != nil || f.Growth30d != nil || f.DaysUntilFull != nil {
		t.Fatalf("one day of history gave a forecast: %+v", f)
	}
	if f = forecast(hist, now, 9_000, 100); f.DaysUntilFull != nil || *f.Growth7d >= 0 {
		t.Fatalf("a shrinking pool gave a fill date: %+v", f)
	}
	// The history stays bounded.
	var long []dayBytes
	for i := 0; i < historyDays+50; i++ {
		long = addDay(long, d(historyDays+50-i), int64(i), true)
	}
	if len(long) != historyDays || long[len(long)-1].Day != d(1) {
		t.Fatalf("history of %d days, last %s", len(long), long[len(long)-1].Day)
	}
}

func fmtp(p *float64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

// A daemon on a test clock: owners, labels and expiry; idle and expired
// volumes found; what the report says deleting a volume frees is what
// deleting it frees; written bytes per day and the last write and attach;
// a clone without its source's expiry; all of it across a restart, and
// in the metrics.
func TestCapacityReport(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock("2026-12-10T09:00:00Z")
	edit := func(o *Options) { o.Clock = clk; o.Pool.Now = clk.Now }
	d, cl := start(t, dir, edit)
	ctx := context.Background()
	str := func(s string) *string { return &s }
	create := func(name string, m control.MetaChange) {
		t.Helper()
		if _, err := cl.CreateVolume(ctx, control.CreateVolumeRequest{Name: name, Size: 1 << 20, MetaChange: m}); err != nil {
			t.Fatal(err)
		}
	}
	create("web", control.MetaChange{Owner: str("alice"), Labels: map[string]string{"team": "web", "env": "prod"}, Expires: str("2027-01-31")})
	create("scratch", control.MetaChange{Owner: str("bob"), Expires: str("10d")})
	create("old", control.MetaChange{})
	create("keep", control.MetaChange{Labels: map[string]string{"team": "db"}})
	if _, err := cl.CreateVolume(ctx, control.CreateVolumeRequest{Name: "bad", Size: 1 << 20, MetaChange: control.MetaChange{Expires: str("soon")}}); apiCode(err) != control.CodeInvalid {
		t.Fatalf("--expires soon: %v", err)
	}
	if err := cl.SetVolume(ctx, "web", control.SettingsRequest{MetaChange: control.MetaChange{Labels: map[string]string{"env": ""}}}); err != nil {
		t.Fatal(err)
	}
	e := d.exporter()
	write := func(vol string, n int) {
		t.Helper()
		x, err := e.Open(vol)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x.WriteAt(bytes.Repeat([]byte{'x'}, n), 0); err != nil {
			t.Fatal(err)
		}
		x.Close()
		d.capacity.sample()
	}
	write("web", 64<<10)
	write("scratch", 128<<10)
	write("old", 32<<10)
	clk.set(clk.Now().Add(20 * 24 * time.Hour)) // 2026-12-30
	write("web", 8<<10)
	lastWeb := clk.Now()
	held, err := e.Open("keep") // attached from now on
	if err != nil {
		t.Fatal(err)
	}
	clk.set(clk.Now().Add(15 * 24 * time.Hour)) // 2027-01-14, 35 days in
	rep, err := cl.Report(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]control.VolumeReport{}
	for _, v := range rep.Volumes {
		by[v.Name] = v
	}
	if rep.IdleDays != 30 || !slices.Equal(sorted(rep.Idle), []string{"old", "scratch"}) || !slices.Equal(rep.Expired, []string{"scratch"}) {
		t.Fatalf("idle %v (threshold %d), expired %v; want [old scratch] and [scratch]", rep.Idle, rep.IdleDays, rep.Expired)
	}
	w := by["web"]
	if w.Owner != "alice" || w.Labels["team"] != "web" || len(w.Labels) != 1 || !w.Expires.Equal(time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("web's metadata: %+v", w.VolumeMeta)
	}
	// The first 64 KiB were written 35 days ago: outside the 30 days.
	if !w.LastWrite.Equal(lastWeb) || w.Written30d != 8<<10 || w.Written7d != 0 || w.IdleDays != 15 {
		t.Fatalf("web: last write %v (want %v), written 30d %d, 7d %d, idle %v days", w.LastWrite, lastWeb, w.Written30d, w.Written7d, w.IdleDays)
	}
	if k := by["keep"]; k.Idle || k.Attached != 1 || k.LastAttach.IsZero() {
		t.Fatalf("keep is attached, not idle: %+v", k)
	}
	if s := by["scratch"]; !s.Expires.Equal(time.Date(2026, 12, 20, 9, 0, 0, 0, time.UTC)) || s.Reclaimable != 128<<10 {
		t.Fatalf("scratch: expires %v, reclaimable %d", s.Expires, s.Reclaimable)
	}
	if rep.Volumes[0].Name != "scratch" || rep.IdleBytes != (128+32)<<10 || rep.ExpiredBytes != 128<<10 {
		t.Fatalf("largest first %s; idle frees %d, expired %d", rep.Volumes[0].Name, rep.IdleBytes, rep.ExpiredBytes)
	}
	// What the report says deleting old frees is what deleting it frees.
	before, err := cl.Space(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.DeleteVolume(ctx, "old", false); err != nil {
		t.Fatal(err)
	}
	after, _ := cl.Space(ctx)
	if got := before.LiveBytes - after.LiveBytes; got != by["old"].Reclaimable || got == 0 {
		t.Fatalf("deleting old freed %d bytes, the report said %d", got, by["old"].Reclaimable)
	}
	// A clone keeps the owner and labels, not the expiry.
	if _, err := cl.Clone(ctx, control.CloneRequest{Source: "web@seq:9", Name: "web2"}); err != nil {
		t.Fatal(err)
	}
	metas, err := cl.VolumeMetas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := metas["web2"]; m.Owner != "alice" || m.Labels["team"] != "web" || !m.Expires.IsZero() {
		t.Fatalf("clone's metadata: %+v", m)
	}
	if _, ok := metas["old"]; ok {
		t.Fatal("a deleted volume kept its metadata")
	}
	fams, err := scrape(cl)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := fams.Value("strata_volume_last_write_timestamp_seconds", "volume", "web"); err != nil || v != float64(lastWeb.Unix()) {
		t.Fatalf("last write metric %v, %v; want %d", v, err, lastWeb.Unix())
	}
	if _, err := fams.Value("strata_pool_days_until_full"); err != nil {
		t.Fatal(err)
	}
	clk.set(time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC))
	if rep, _ = cl.Report(ctx, 60); !slices.Equal(sorted(rep.Expired), []string{"scratch", "web"}) || len(rep.Idle) != 0 {
		t.Fatalf("on 2027-01-31 with --idle-days 60: expired %v, idle %v", rep.Expired, rep.Idle)
	}

	// Across a restart: metadata and activity as they were.
	held.Close()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	acts, metas := d.capacity.activity(), d.capacity.metas()
	if len(acts["web"].Written) != 2 || acts["web"].Written[1] != (dayBytes{"2026-12-30", 8 << 10}) {
		t.Fatalf("web's daily history: %+v", acts["web"].Written)
	}
	d2, _ := start(t, dir, edit)
	if got := d2.capacity.activity(); !reflect.DeepEqual(got, acts) {
		t.Fatalf("activity after a restart:\n%+v\nbefore:\n%+v", got, acts)
	}
	if got := d2.capacity.metas(); !reflect.DeepEqual(got, metas) {
		t.Fatalf("metadata after a restart:\n%+v\nbefore:\n%+v", got, metas)
	}
	d2.capacity.mu.Lock()
	defer d2.capacity.mu.Unlock()
	if n := len(d2.capacity.mu.pool); n != 4 {
		t.Fatalf("pool history of %d days after a restart, want 4 (Dec 10, Dec 30, Jan 14, Jan 31)", n)
	}
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

func scrape(cl *control.Client) (metricstest.Families, error) {
	m, err := cl.Metrics(context.Background())
	if err != nil {
		return nil, err
	}
	return metricstest.Parse(m)
}

// The log and status warn when the filesystem fills within 14 days.
func TestForecastWarns(t *testing.T) {
	var logs bytes.Buffer
	clk := newFakeClock("2026-12-10T09:00:00Z")
	d, cl := start(t, t.TempDir(), func(o *Options) {
		o.Clock = clk
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	st, err := cl.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c := st.Capacity; c == nil || c.Warning || c.DaysUntilFull != nil || c.FreeBytes <= 0 {
		t.Fatalf("a new pool's forecast: %+v", c)
	}
	// Yesterday the pool was a petabyte smaller: it fills in no time.
	d.capacity.mu.Lock()
	d.capacity.mu.pool = []dayBytes{{day(clk.Now().AddDate(0, 0, -1)), -1 << 50}}
	d.capacity.mu.Unlock()
	st, _ = cl.Status(context.Background())
	if c := st.Capacity; c == nil || !c.Warning || c.DaysUntilFull == nil || *c.DaysUntilFull >= 1 {
		t.Fatalf("status forecast %+v, want a warning", c)
	}
	d.capacity.warn()
	d.capacity.warn() // not repeated within warnEvery
	if n := strings.Count(logs.String(), "fills soon"); n != 1 {
		t.Fatalf("%d warnings in the log:\n%s", n, logs.String())
	}
}

// A replica its source ships to is in use however long nobody attached
// it; once promoted it is a volume like any other.
func TestReportReplicaNotIdle(t *testing.T) {
	now := time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	long := now.AddDate(0, -3, 0)
	vols := []control.VolumeInfo{
		{Name: "plain", Created: long},
		{Name: "replica", Created: long, Replica: &control.ReplicaState{SourcePool: "p1", SourceName: "src"}},
		{Name: "promoted", Created: long, Replica: &control.ReplicaState{SourcePool: "p1", SourceName: "src", Promoted: true}},
	}
	rep := buildReport(now, 30, vols, control.Space{}, nil, nil, control.Forecast{})
	if !slices.Equal(sorted(rep.Idle), []string{"plain", "promoted"}) {
		t.Fatalf("idle %v, want [plain promoted]", rep.Idle)
	}
}
