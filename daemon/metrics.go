package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/strata-storage/strata/cdp"
	"github.com/strata-storage/strata/control"
)

// The daemon's metrics live in a registry of its own (never the global
// one), so several daemons in one process, as tests run them, do not
// collide. /metrics serves it on the control socket and, with
// --metrics-listen, on TCP for scrapers.

// family is one metric family the pool collector reports.
type family struct {
	name, help string
	typ        prometheus.ValueType // unused by the histogram
	labels     []string
}

// poolFamilies are the families read from the pool, the NBD server, garbage
// collection and replication at scrape time. Their names, types and labels
// are a contract with dashboards and alerts: never rename one.
var poolFamilies = []family{
	{"strata_cache_max_bytes", "Read cache capacity (0: off).", prometheus.GaugeValue, nil},
	{"strata_cache_bytes", "Bytes in the read cache.", prometheus.GaugeValue, nil},
	{"strata_cache_hits_total", "Read cache hits.", prometheus.CounterValue, nil},
	{"strata_cache_misses_total", "Read cache misses.", prometheus.CounterValue, nil},
	{"strata_cache_evictions_total", "Blocks evicted from the read cache.", prometheus.CounterValue, nil},
	{"strata_cache_hit_ratio", "Read cache hits / lookups since start.", prometheus.GaugeValue, nil},
	{"strata_read_ahead_bytes_total", "Journal bytes hinted to the kernel by read-ahead.", prometheus.CounterValue, nil},
	{"strata_journal_bytes", "Journal size on disk.", prometheus.GaugeValue, nil},
	{"strata_journal_segments", "Journal segment files.", prometheus.GaugeValue, nil},
	{"strata_journal_last_seq", "Sequence number of the newest record.", prometheus.GaugeValue, nil},
	{"strata_journal_synced_seq", "Every record up to this one is durable.", prometheus.GaugeValue, nil},
	{"strata_journal_fsyncs_total", "Journal fsyncs (group commits).", prometheus.CounterValue, nil},
	{"strata_journal_damaged_blocks", "Blocks found damaged when the pool opened, and not repaired by a scrub since; they read as I/O errors.", prometheus.GaugeValue, nil},
	{"strata_journal_fsync_seconds", "Journal fsync latency.", 0, nil},
	{"strata_index_bytes", "Block index size on disk.", prometheus.GaugeValue, nil},
	{"strata_index_memory_bytes", "Block index memory: head map pages, memtables, index block cache.", prometheus.GaugeValue, nil},
	{"strata_read_damaged_blocks_total", "Reads since start that found a block failing its checksum (answered with an I/O error).", prometheus.CounterValue, nil},
	{"strata_pool_failed", "1 after a failed fsync: the pool refuses writes until restarted.", prometheus.GaugeValue, nil},
	{"strata_nbd_connections", "Open NBD connections.", prometheus.GaugeValue, nil},
	{"strata_access_denied_total", "NBD opens of the volume refused by its access rules since start.", prometheus.CounterValue, []string{"volume"}},
	{"strata_volume_size_bytes", "Volume size.", prometheus.GaugeValue, []string{"volume"}},
	{"strata_volume_written_bytes", "Bytes whose newest version holds data.", prometheus.GaugeValue, []string{"volume"}},
	{"strata_gc_last_bytes_freed", "Bytes freed by the last garbage collection pass.", prometheus.GaugeValue, nil},
	{"strata_gc_last_bytes_relocated", "Bytes copied forward by the last pass.", prometheus.GaugeValue, nil},
	{"strata_gc_last_run_timestamp_seconds", "When the last pass ran.", prometheus.GaugeValue, nil},
	{"strata_replication_acked_seq", "The source point the target holds.", prometheus.GaugeValue, []string{"volume", "target"}},
	{"strata_replication_lag_records", "Changes of the volume the target does not hold yet.", prometheus.GaugeValue, []string{"volume", "target"}},
	{"strata_replication_lag_bytes", "Data bytes the target does not hold yet.", prometheus.GaugeValue, []string{"volume", "target"}},
	{"strata_replication_lag_seconds", "Age of the oldest change the target does not hold (0: up to date).", prometheus.GaugeValue, []string{"volume", "target"}},
	{"strata_replication_failing", "1 when the last run to the target failed.", prometheus.GaugeValue, []string{"volume", "target"}},
	{"strata_mirror_primary", "1 when this host is the mirrored volume's primary, 0 when its secondary.", prometheus.GaugeValue, []string{"volume"}},
	{"strata_mirror_state", "1 for the mirrored volume's current state (syncing, in sync, degraded, fenced, following).", prometheus.GaugeValue, []string{"volume", "state"}},
	{"strata_mirror_epoch", "The mirror's epoch (it rises at every change of primary).", prometheus.GaugeValue, []string{"volume"}},
	{"strata_mirror_lag_bytes", "Primary: data bytes the secondary does not hold yet (-1: unknown).", prometheus.GaugeValue, []string{"volume"}},
	{"strata_mirror_lease_seconds", "Primary: how long its lease at the witness lasts (0: none).", prometheus.GaugeValue, []string{"volume"}},
	{"strata_schedule_snapshots", "Scheduled snapshots the volume holds.", prometheus.GaugeValue, []string{"volume"}},
	{"strata_schedule_last_snapshot_timestamp_seconds", "When the volume's newest scheduled snapshot was taken.", prometheus.GaugeValue, []string{"volume"}},
	{"strata_schedule_pruned_total", "Scheduled snapshots thinned since the daemon started.", prometheus.CounterValue, []string{"volume"}},
	{"strata_schedule_failing", "1 when the schedule's last pass met an error (a failed freeze, snapshot or prune).", prometheus.GaugeValue, []string{"volume"}},
	{"strata_scrub_last_completed_timestamp_seconds", "When the last scrub pass ended (absent before the first).", prometheus.GaugeValue, nil},
	{"strata_scrub_unrepaired_errors", "Damage the last scrub pass left unrepaired: blocks whose reads fail with an I/O error.", prometheus.GaugeValue, nil},
	{"strata_scrub_running", "1 while a scrub pass runs.", prometheus.GaugeValue, nil},
	{"strata_scrub_bytes_checked_total", "Bytes scrub passes read and checked since the daemon started.", prometheus.CounterValue, nil},
	{"strata_scrub_errors_found_total", "Damaged blocks and records scrub passes found since the daemon started.", prometheus.CounterValue, nil},
	{"strata_scrub_errors_repaired_total", "Damaged blocks scrub passes healed from a replica site since the daemon started.", prometheus.CounterValue, nil},
}

// scrapeTimeout bounds what one scrape spends measuring replication lag.
const scrapeTimeout = 10 * time.Second

// poolCollector reads the daemon's state when scraped: nothing updates
// gauges in the background, so a scrape always sees the pool as it is.
type poolCollector struct {
	d     *Daemon
	descs map[string]*prometheus.Desc
	types map[string]prometheus.ValueType
}

func newPoolCollector(d *Daemon) *poolCollector {
	c := &poolCollector{d: d, descs: map[string]*prometheus.Desc{}, types: map[string]prometheus.ValueType{}}
	for _, f := range poolFamilies {
		c.descs[f.name] = prometheus.NewDesc(f.name, f.help, f.labels, nil)
		c.types[f.name] = f.typ
	}
	return c
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range poolFamilies {
		ch <- c.descs[f.name]
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	emit := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.descs[name], c.types[name], v, labels...)
	}
	bit := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	st := d.pool.Stats()
	ca, j, im := st.Cache, st.Journal, st.IndexMemory
	emit("strata_cache_max_bytes", float64(ca.MaxBytes))
	emit("strata_cache_bytes", float64(ca.Bytes))
	emit("strata_cache_hits_total", float64(ca.Hits))
	emit("strata_cache_misses_total", float64(ca.Misses))
	emit("strata_cache_evictions_total", float64(ca.Evictions))
	emit("strata_cache_hit_ratio", ca.HitRatio)
	emit("strata_read_ahead_bytes_total", float64(st.ReadAhead))
	emit("strata_journal_bytes", float64(j.Bytes))
	emit("strata_journal_segments", float64(j.Segments))
	emit("strata_journal_last_seq", float64(j.LastSeq))
	emit("strata_journal_synced_seq", float64(j.SyncedSeq))
	emit("strata_journal_fsyncs_total", float64(j.Fsyncs))
	damaged := 0 // those a scrub has not repaired since
	for _, dm := range st.Damaged {
		damaged += len(dm.Blocks)
	}
	emit("strata_journal_damaged_blocks", float64(damaged))
	emit("strata_index_bytes", float64(st.IndexBytes))
	emit("strata_index_memory_bytes", float64(im.HeadMapBytes)+float64(im.MemTableBytes)+float64(im.BlockCacheBytes))
	emit("strata_read_damaged_blocks_total", float64(st.ReadDamaged))
	emit("strata_pool_failed", bit(st.JournalError != ""))
	emit("strata_nbd_connections", float64(len(d.nbd.Connections())))
	ch <- fsyncHistogram(c.descs["strata_journal_fsync_seconds"], d.pool.FsyncLatency())
	for _, v := range d.pool.Volumes() {
		emit("strata_volume_size_bytes", float64(v.Size), v.Name)
		emit("strata_volume_written_bytes", float64(v.Written), v.Name)
	}
	for vol, n := range d.access.deniedCounts() {
		emit("strata_access_denied_total", float64(n), vol)
	}
	if g := d.lastGC(); g != nil {
		emit("strata_gc_last_bytes_freed", float64(g.Stats.BytesFreed))
		emit("strata_gc_last_bytes_relocated", float64(g.Stats.BytesRelocated))
		emit("strata_gc_last_run_timestamp_seconds", float64(g.At.Unix()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	for _, r := range d.repl.statuses(ctx) {
		emit("strata_replication_acked_seq", float64(r.Acked), r.Volume, r.Target)
		emit("strata_replication_lag_records", float64(r.LagRecords), r.Volume, r.Target)
		emit("strata_replication_lag_bytes", float64(r.LagBytes), r.Volume, r.Target)
		emit("strata_replication_lag_seconds", r.LagSeconds, r.Volume, r.Target)
		emit("strata_replication_failing", bit(r.LastError != ""), r.Volume, r.Target)
	}
	for _, m := range d.mirrors.statuses(ctx) {
		emit("strata_mirror_primary", bit(m.Role == control.RolePrimary), m.Volume)
		for _, st := range []string{control.MirrorSyncing, control.MirrorInSync, control.MirrorDegraded, control.MirrorFenced, control.MirrorFollowing} {
			emit("strata_mirror_state", bit(m.State == st), m.Volume, st)
		}
		emit("strata_mirror_epoch", float64(m.Epoch), m.Volume)
		if m.Role == control.RolePrimary {
			emit("strata_mirror_lag_bytes", float64(m.LagBytes), m.Volume)
			lease, _ := time.ParseDuration(m.LeaseLeft)
			emit("strata_mirror_lease_seconds", lease.Seconds(), m.Volume)
		}
	}
	for _, s := range d.sched.statuses() {
		emit("strata_schedule_snapshots", float64(s.Scheduled), s.Volume)
		if !s.Last.IsZero() {
			emit("strata_schedule_last_snapshot_timestamp_seconds", float64(s.Last.Unix()), s.Volume)
		}
		emit("strata_schedule_pruned_total", float64(s.Pruned), s.Volume)
		emit("strata_schedule_failing", bit(s.LastError != ""), s.Volume)
	}
	sc := d.scrub.status()
	if sc.Last != nil && !sc.Last.Finished.IsZero() {
		emit("strata_scrub_last_completed_timestamp_seconds", float64(sc.Last.Finished.Unix()))
		emit("strata_scrub_unrepaired_errors", float64(sc.Last.Unrepaired()))
	}
	emit("strata_scrub_running", bit(sc.Running != nil))
	emit("strata_scrub_bytes_checked_total", float64(d.scrub.bytes.Load()))
	emit("strata_scrub_errors_found_total", float64(d.scrub.found.Load()))
	emit("strata_scrub_errors_repaired_total", float64(d.scrub.repaired.Load()))
}

// fsyncHistogram is the journal's fsync latency histogram, which package
// cdp keeps in buckets of its own.
func fsyncHistogram(desc *prometheus.Desc, f cdp.FsyncStats) prometheus.Metric {
	buckets := make(map[float64]uint64, len(cdp.FsyncBuckets))
	var cum uint64
	for i, le := range cdp.FsyncBuckets {
		cum += f.Counts[i]
		buckets[le.Seconds()] = cum
	}
	cum += f.Counts[len(cdp.FsyncBuckets)]
	return prometheus.MustNewConstHistogram(desc, cum, f.Sum.Seconds(), buckets)
}

// newRegistry is the daemon's registry: the pool's families, the I/O
// metrics of the NBD exports, and the process and Go runtime collectors
// (process_*, go_*).
func (d *Daemon) newRegistry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		newPoolCollector(d),
		d.io,
		newCapacityCollector(d.capacity),
		d.qos,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return reg, nil
}

// metricsHandler serves the registry in the format the scraper asks for
// (the Prometheus text format by default). A family that fails to collect
// is logged and left out; the others are still served.
func (d *Daemon) metricsHandler() http.Handler {
	return promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{
		ErrorLog:      promLogger{d.opts.Logger},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// promLogger passes promhttp's errors to the daemon's log.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn("metrics: " + fmt.Sprint(v...)) }
