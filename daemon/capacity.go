package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/units"
)

// The capacity and sprawl report (strata report): who owns each volume and
// when it may go (DATA/volmeta.json), when each was last attached and
// written and how much it was written each day (DATA/activity.json), and
// the pool's size each day, from which its growth and the day its
// filesystem fills are forecast.

const (
	// historyDays bounds the daily history kept per volume and for the
	// pool.
	historyDays = 400
	// defaultIdleDays: a volume neither attached nor written for this
	// long is idle.
	defaultIdleDays = 30
	// forecastWarnDays: status, the log and the console warn when the
	// filesystem fills sooner at the pool's growth rate.
	forecastWarnDays = 14
	// sampleEvery is how often activity is sampled, saveEvery how often
	// it is saved (and at a clean stop); warnEvery how often the log
	// repeats the forecast warning.
	sampleEvery = 10 * time.Second
	saveEvery   = time.Minute
	warnEvery   = 6 * time.Hour
	dayLayout   = "2006-01-02"
)

// volMeta is one volume's metadata as volmeta.json keeps it.
type volMeta struct {
	Volume string `json:"volume"`
	control.VolumeMeta
}

// dayBytes is a figure for one UTC day.
type dayBytes struct {
	Day   string `json:"day"` // 2006-01-02
	Bytes int64  `json:"bytes"`
}

// volActivity is one volume's use as activity.json keeps it.
type volActivity struct {
	Volume     string    `json:"volume"`
	LastAttach time.Time `json:"last_attach,omitzero"`
	LastWrite  time.Time `json:"last_write,omitzero"`
	// Written is the bytes written each day, oldest first (days
	// without writes are left out), at most historyDays.
	Written []dayBytes `json:"written,omitempty"`
}

// activityFile is DATA/activity.json.
type activityFile struct {
	Version int            `json:"version"`
	Volumes []*volActivity `json:"volumes"`
	// Pool is the pool's size on disk (journal and index) at the last
	// sample of each day, oldest first, at most historyDays.
	Pool []dayBytes `json:"pool"`
}

const activityVersion = 1

// capacity keeps volumes' metadata and activity. Its methods are safe for
// concurrent use; the metadata is saved before a change takes effect, the
// activity every saveEvery and at close.
type capacity struct {
	metaPath, actPath string
	clock             Clock
	log               *slog.Logger
	pool              *cow.Pool
	io                *ioMetrics

	mu struct {
		sync.Mutex
		meta     map[string]*volMeta
		act      map[string]*volActivity
		pool     []dayBytes
		seen     map[string]int64 // write counters at the last sample, by volume
		dirty    bool
		lastWarn time.Time
	}
	stop chan struct{}
	done chan struct{}
}

func newCapacity(metaPath, actPath string, clock Clock, log *slog.Logger, pool *cow.Pool, io *ioMetrics) (*capacity, error) {
	meta, err := loadEntries(metaPath, func(m *volMeta) string { return m.Volume })
	if err != nil {
		return nil, err
	}
	c := &capacity{metaPath: metaPath, actPath: actPath, clock: clock, log: log, pool: pool, io: io}
	c.mu.meta, c.mu.act, c.mu.seen = meta, map[string]*volActivity{}, map[string]int64{}
	b, err := os.ReadFile(actPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(b) > 0 {
		var f activityFile
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("%s: %w", actPath, err)
		}
		if f.Version > activityVersion {
			return nil, fmt.Errorf("%s: format version %d is newer than this strata's (%d)", actPath, f.Version, activityVersion)
		}
		for _, a := range f.Volumes {
			c.mu.act[a.Volume] = a
		}
		c.mu.pool = f.Pool
	}
	return c, nil
}

// start samples and saves in the background until close.
func (c *capacity) start() {
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(c.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		saved := time.Now()
		for {
			select {
			case <-c.stop:
				return
			case <-t.C:
			}
			c.sample()
			c.warn()
			if time.Since(saved) >= saveEvery {
				saved = time.Now()
				if err := c.save(); err != nil {
					c.log.Error("saving volume activity", "err", err)
				}
			}
		}
	}()
}

// close stops the background work and saves a last sample.
func (c *capacity) close() error {
	if c.stop != nil {
		close(c.stop)
		<-c.done
	}
	c.sample()
	return c.save()
}

func day(t time.Time) string { return t.UTC().Format(dayLayout) }

// addDay adds n to day's figure (set: replaces it) in a list kept in day
// order and at most historyDays long.
func addDay(list []dayBytes, d string, n int64, set bool) []dayBytes {
	if k := len(list) - 1; k >= 0 && list[k].Day == d {
		if set {
			list[k].Bytes = n
		} else {
			list[k].Bytes += n
		}
		return list
	}
	list = append(list, dayBytes{d, n})
	if len(list) > historyDays {
		list = slices.Delete(list, 0, len(list)-historyDays)
	}
	return list
}

func (c *capacity) actLocked(vol string) *volActivity {
	a := c.mu.act[vol]
	if a == nil {
		a = &volActivity{Volume: vol}
		c.mu.act[vol] = a
	}
	return a
}

// attached notes that a client opened vol.
func (c *capacity) attached(vol string) {
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.actLocked(vol).LastAttach = now
	c.mu.dirty = true
}

// sample notes, as of now, which volumes are attached, what was written
// since the last sample, and the pool's size.
func (c *capacity) sample() {
	now := c.clock.Now()
	vols := c.pool.Volumes()
	written := c.io.writtenBytes()
	st := c.pool.Stats()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range vols {
		if v.Handles > 0 {
			c.actLocked(v.Name).LastAttach = now
		}
		// Counters only grow: a sample that read them before another
		// one that got the lock first finds nothing new.
		if n := written[v.Name] - c.mu.seen[v.Name]; n > 0 {
			a := c.actLocked(v.Name)
			a.LastWrite = now
			a.Written = addDay(a.Written, day(now), n, false)
			c.mu.seen[v.Name] = written[v.Name]
		}
	}
	c.mu.pool = addDay(c.mu.pool, day(now), st.Journal.Bytes+int64(st.IndexBytes), true)
	c.mu.dirty = true
}

// save writes activity.json durably if anything changed.
func (c *capacity) save() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.mu.dirty {
		return nil
	}
	f := activityFile{Version: activityVersion, Pool: c.mu.pool}
	for _, k := range slices.Sorted(maps.Keys(c.mu.act)) {
		f.Volumes = append(f.Volumes, c.mu.act[k])
	}
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := writeFileDurable(c.actPath, b); err != nil {
		return err
	}
	c.mu.dirty = false
	return nil
}

// parseExpires reads --expires: a date (2027-01-31, the start of that day
// in UTC), an RFC 3339 time, a duration from now (30d, 12h), or never.
func parseExpires(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "", "never", "none":
		return time.Time{}, nil
	}
	if t, err := time.Parse(dayLayout, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	d, err := units.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%w: expires %q: give a date (2027-01-31), a duration from now (30d, 12h) or never", errBadRequest, s)
	}
	return now.Add(d).UTC().Truncate(time.Second), nil
}

// checkMeta validates a change before anything is created or saved.
func checkMeta(m control.MetaChange, now time.Time) error {
	for k := range m.Labels {
		if k == "" || strings.ContainsAny(k, "=, \t\n") {
			return fmt.Errorf("%w: label key %q: use letters, digits and . _ - / (no '=', ',' or spaces)", errBadRequest, k)
		}
	}
	if m.Expires != nil {
		if _, err := parseExpires(*m.Expires, now); err != nil {
			return err
		}
	}
	return nil
}

// setMeta applies a change to vol's metadata and saves it.
func (c *capacity) setMeta(vol string, m control.MetaChange) error {
	now := c.clock.Now()
	if err := checkMeta(m, now); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := volMeta{Volume: vol}
	if old := c.mu.meta[vol]; old != nil {
		r = *old
		r.Labels = maps.Clone(old.Labels)
	}
	if m.Owner != nil {
		r.Owner = strings.TrimSpace(*m.Owner)
	}
	for k, v := range m.Labels {
		if v == "" {
			delete(r.Labels, k)
			continue
		}
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		r.Labels[k] = v
	}
	if len(r.Labels) == 0 {
		r.Labels = nil
	}
	if m.Expires != nil {
		r.Expires, _ = parseExpires(*m.Expires, now)
	}
	return c.putMetaLocked(vol, &r)
}

// putMetaLocked saves vol's metadata (nil or empty: none) and then uses it.
func (c *capacity) putMetaLocked(vol string, r *volMeta) error {
	next := maps.Clone(c.mu.meta)
	if r == nil || (r.Owner == "" && len(r.Labels) == 0 && r.Expires.IsZero()) {
		if _, ok := next[vol]; !ok {
			return nil
		}
		delete(next, vol)
	} else {
		next[vol] = r
	}
	if err := saveEntries(c.metaPath, next); err != nil {
		return err
	}
	c.mu.meta = next
	return nil
}

// inherit gives a clone its source's owner and labels; never its expiry.
func (c *capacity) inherit(src, clone string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.mu.meta[src]
	if m == nil {
		return nil
	}
	return c.putMetaLocked(clone, &volMeta{Volume: clone, VolumeMeta: control.VolumeMeta{Owner: m.Owner, Labels: maps.Clone(m.Labels)}})
}

// forget drops a deleted volume's metadata and activity.
func (c *capacity) forget(vol string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.mu.act[vol]; ok {
		delete(c.mu.act, vol)
		c.mu.dirty = true
	}
	return c.putMetaLocked(vol, nil)
}

// metas is every volume's metadata.
func (c *capacity) metas() map[string]control.VolumeMeta {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]control.VolumeMeta, len(c.mu.meta))
	for k, v := range c.mu.meta {
		m := v.VolumeMeta
		m.Labels = maps.Clone(m.Labels)
		out[k] = m
	}
	return out
}

// activity is a copy of every volume's activity.
func (c *capacity) activity() map[string]volActivity {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]volActivity, len(c.mu.act))
	for k, v := range c.mu.act {
		a := *v
		a.Written = slices.Clone(v.Written)
		out[k] = a
	}
	return out
}

// forecast is the pool's growth as of now (without a new sample).
func (c *capacity) forecast() control.Forecast {
	st := c.pool.Stats()
	free, err := c.pool.FreeBytes()
	if err != nil {
		c.log.Warn("capacity forecast", "err", err)
	}
	c.mu.Lock()
	hist := slices.Clone(c.mu.pool)
	c.mu.Unlock()
	return forecast(hist, c.clock.Now(), st.Journal.Bytes+int64(st.IndexBytes), free)
}

// warn logs the forecast when the filesystem fills within
// forecastWarnDays, at most every warnEvery.
func (c *capacity) warn() {
	f := c.forecast()
	now := c.clock.Now()
	c.mu.Lock()
	due := f.Warning && now.Sub(c.mu.lastWarn) >= warnEvery
	if due {
		c.mu.lastWarn = now
	}
	c.mu.Unlock()
	if due {
		c.log.Warn("the pool's filesystem fills soon at its growth rate: free space, delete idle or expired volumes (strata report)",
			"days_until_full", fmt.Sprintf("%.1f", *f.DaysUntilFull), "free", units.FormatSize(f.FreeBytes),
			"growth_per_day", units.FormatSize(int64(max(deref(f.Growth7d), deref(f.Growth30d)))))
	}
}

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

// forecast computes growth rates from the daily pool sizes hist (oldest
// first) and the size used now: over a window of N days the rate is the
// change since the oldest sample no more than N days before today, per
// day between them. The filesystem fills in free / the faster rate.
func forecast(hist []dayBytes, now time.Time, used, free int64) control.Forecast {
	f := control.Forecast{UsedBytes: used, FreeBytes: free}
	today, _ := time.Parse(dayLayout, day(now))
	rate := func(window int) *float64 {
		from := today.AddDate(0, 0, -window)
		for _, s := range hist {
			d, err := time.Parse(dayLayout, s.Day)
			if err != nil || d.Before(from) {
				continue
			}
			if !d.Before(today) {
				return nil
			}
			g := float64(used-s.Bytes) / (today.Sub(d).Hours() / 24)
			return &g
		}
		return nil
	}
	f.Growth7d, f.Growth30d = rate(7), rate(30)
	if g := max(deref(f.Growth7d), deref(f.Growth30d)); g > 0 {
		days := float64(free) / g
		f.DaysUntilFull = &days
		f.Warning = days < forecastWarnDays
	}
	return f
}

// report is `strata report` as of now.
func (d *Daemon) report(idleDays int) (control.Report, error) {
	if idleDays <= 0 {
		idleDays = defaultIdleDays
	}
	c := d.capacity
	c.sample()
	sp, err := d.pool.Space()
	if err != nil {
		return control.Report{}, err
	}
	return buildReport(c.clock.Now(), idleDays, d.pool.Volumes(), sp, c.metas(), c.activity(), c.forecast()), nil
}

// buildReport puts the report together from what the pool and the
// capacity keeper know.
func buildReport(now time.Time, idleDays int, vols []control.VolumeInfo, sp control.Space, metas map[string]control.VolumeMeta,
	acts map[string]volActivity, fc control.Forecast) control.Report {
	r := control.Report{At: now.UTC(), IdleDays: idleDays, Volumes: []control.VolumeReport{}, Idle: []string{}, Expired: []string{}, Forecast: fc}
	reclaim := map[string]int64{}
	for _, vs := range sp.Volumes {
		reclaim[vs.Name] = vs.Reclaimable
	}
	today, _ := time.Parse(dayLayout, day(now))
	for _, v := range vols {
		a := acts[v.Name]
		vr := control.VolumeReport{Name: v.Name, VolumeMeta: metas[v.Name], Size: v.Size, Written: v.Written, Created: v.Created,
			Attached: v.Handles, LastAttach: a.LastAttach, LastWrite: a.LastWrite, Reclaimable: reclaim[v.Name]}
		for _, w := range a.Written {
			dd, err := time.Parse(dayLayout, w.Day)
			if err != nil {
				continue
			}
			if ago := today.Sub(dd); ago < 7*24*time.Hour {
				vr.Written7d += w.Bytes
			}
			if ago := today.Sub(dd); ago < 30*24*time.Hour {
				vr.Written30d += w.Bytes
			}
		}
		active := v.Created
		for _, t := range []time.Time{a.LastAttach, a.LastWrite} {
			if t.After(active) {
				active = t
			}
		}
		vr.IdleDays = math.Max(0, math.Floor(now.Sub(active).Hours()/24*10)/10)
		// A replica is in use while its source ships to it, whoever
		// attaches it.
		replica := v.Replica != nil && v.Replica.SourcePool != "" && !v.Replica.Promoted
		vr.Idle = v.Handles == 0 && !replica && now.Sub(active) >= time.Duration(idleDays)*24*time.Hour
		vr.Expired = !vr.Expires.IsZero() && !now.Before(vr.Expires)
		r.Volumes = append(r.Volumes, vr)
	}
	sort.SliceStable(r.Volumes, func(i, j int) bool { return r.Volumes[i].Reclaimable > r.Volumes[j].Reclaimable })
	for _, vr := range r.Volumes {
		if vr.Idle {
			r.Idle = append(r.Idle, vr.Name)
			r.IdleBytes += vr.Reclaimable
		}
		if vr.Expired {
			r.Expired = append(r.Expired, vr.Name)
			r.ExpiredBytes += vr.Reclaimable
		}
	}
	return r
}

// capacityCollector reports the forecast and each volume's last attach,
// last write and expiry.
type capacityCollector struct {
	c                              *capacity
	daysLeft, growth, free         *prometheus.Desc
	lastWrite, lastAttach, expires *prometheus.Desc
}

func newCapacityCollector(c *capacity) *capacityCollector {
	vol := []string{"volume"}
	return &capacityCollector{c: c,
		daysLeft:   prometheus.NewDesc("strata_pool_days_until_full", "Days until the pool's filesystem is full at its growth rate (the faster of 7 and 30 days; +Inf: not growing, or less than a day of history).", nil, nil),
		growth:     prometheus.NewDesc("strata_pool_growth_bytes_per_day", "Growth of the pool on disk (journal and index) per day over the window.", []string{"window"}, nil),
		free:       prometheus.NewDesc("strata_pool_free_bytes", "Free space on the pool's filesystem.", nil, nil),
		lastWrite:  prometheus.NewDesc("strata_volume_last_write_timestamp_seconds", "When the volume was last written (within 10 seconds).", vol, nil),
		lastAttach: prometheus.NewDesc("strata_volume_last_attach_timestamp_seconds", "When a client last had the volume attached.", vol, nil),
		expires:    prometheus.NewDesc("strata_volume_expires_timestamp_seconds", "When the volume expires (strata volume set --expires).", vol, nil),
	}
}

func (cc *capacityCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cc.daysLeft, cc.growth, cc.free, cc.lastWrite, cc.lastAttach, cc.expires} {
		ch <- d
	}
}

func (cc *capacityCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	f := cc.c.forecast()
	days := math.Inf(1)
	if f.DaysUntilFull != nil {
		days = *f.DaysUntilFull
	}
	gauge(cc.daysLeft, days)
	gauge(cc.free, float64(f.FreeBytes))
	if f.Growth7d != nil {
		gauge(cc.growth, *f.Growth7d, "7d")
	}
	if f.Growth30d != nil {
		gauge(cc.growth, *f.Growth30d, "30d")
	}
	for vol, a := range cc.c.activity() {
		if !a.LastWrite.IsZero() {
			gauge(cc.lastWrite, float64(a.LastWrite.Unix()), vol)
		}
		if !a.LastAttach.IsZero() {
			gauge(cc.lastAttach, float64(a.LastAttach.Unix()), vol)
		}
	}
	for vol, m := range cc.c.metas() {
		if !m.Expires.IsZero() {
			gauge(cc.expires, float64(m.Expires.Unix()), vol)
		}
	}
}

func (d *Daemon) capacityHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/volmeta", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.capacity.metas())
	})
	mux.HandleFunc("GET /v1/report", func(w http.ResponseWriter, r *http.Request) {
		n := 0
		if s := r.URL.Query().Get("idle_days"); s != "" {
			var err error
			if n, err = strconv.Atoi(s); err != nil || n < 1 {
				writeErr(w, fmt.Errorf("%w: idle_days %q: a whole number of days, 1 or more", errBadRequest, s))
				return
			}
		}
		rep, err := d.report(n)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
}
