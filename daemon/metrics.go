package daemon

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/strata-storage/strata/cdp"
)

// metrics serves the daemon's counters in the Prometheus text format, on the
// control socket (GET /metrics) and, with --metrics-listen, on TCP for
// scrapers.
func (d *Daemon) metrics(w http.ResponseWriter, req *http.Request) {
	st := d.pool.Stats()
	var b strings.Builder
	metric := func(name, typ, help string, v any, labels ...string) {
		if !strings.Contains(b.String(), "# TYPE "+name+" ") {
			fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		}
		l := ""
		if len(labels) == 2 && labels[0] == "" {
			l = labels[1] // preformatted
		} else if len(labels) == 2 {
			l = fmt.Sprintf("{%s=%q}", labels[0], labels[1])
		}
		fmt.Fprintf(&b, "%s%s %v\n", name, l, v)
	}
	c := st.Cache
	metric("strata_cache_max_bytes", "gauge", "Read cache capacity (0: off).", c.MaxBytes)
	metric("strata_cache_bytes", "gauge", "Bytes in the read cache.", c.Bytes)
	metric("strata_cache_hits_total", "counter", "Read cache hits.", c.Hits)
	metric("strata_cache_misses_total", "counter", "Read cache misses.", c.Misses)
	metric("strata_cache_evictions_total", "counter", "Blocks evicted from the read cache.", c.Evictions)
	metric("strata_cache_hit_ratio", "gauge", "Read cache hits / lookups since start.", c.HitRatio)
	metric("strata_read_ahead_bytes_total", "counter", "Journal bytes hinted to the kernel by read-ahead.", st.ReadAhead)
	j := st.Journal
	metric("strata_journal_bytes", "gauge", "Journal size on disk.", j.Bytes)
	metric("strata_journal_segments", "gauge", "Journal segment files.", j.Segments)
	metric("strata_journal_last_seq", "gauge", "Sequence number of the newest record.", j.LastSeq)
	metric("strata_journal_synced_seq", "gauge", "Every record up to this one is durable.", j.SyncedSeq)
	metric("strata_journal_fsyncs_total", "counter", "Journal fsyncs (group commits).", j.Fsyncs)
	metric("strata_journal_damaged_blocks", "gauge", "Blocks found damaged when the pool opened; they read as I/O errors.", j.DamagedBlocks)
	metric("strata_index_bytes", "gauge", "Block index size on disk.", st.IndexBytes)
	metric("strata_read_damaged_blocks_total", "counter", "Reads since start that found a block failing its checksum (answered with an I/O error).", uint64(st.ReadDamaged))
	metric("strata_index_memory_bytes", "gauge", "Block index memory: head map pages, memtables, index block cache.",
		uint64(st.IndexMemory.HeadMapBytes)+st.IndexMemory.MemTableBytes+uint64(st.IndexMemory.BlockCacheBytes))
	failed := 0
	if st.JournalError != "" {
		failed = 1
	}
	metric("strata_pool_failed", "gauge", "1 after a failed fsync: the pool refuses writes until restarted.", failed)
	metric("strata_nbd_connections", "gauge", "Open NBD connections.", len(d.nbd.Connections()))
	for _, v := range d.pool.Volumes() {
		metric("strata_volume_size_bytes", "gauge", "Volume size.", v.Size, "volume", v.Name)
		metric("strata_volume_written_bytes", "gauge", "Bytes whose newest version holds data.", v.Written, "volume", v.Name)
	}
	if g := d.lastGC(); g != nil {
		metric("strata_gc_last_bytes_freed", "gauge", "Bytes freed by the last garbage collection pass.", g.Stats.BytesFreed)
		metric("strata_gc_last_bytes_relocated", "gauge", "Bytes copied forward by the last pass.", g.Stats.BytesRelocated)
		metric("strata_gc_last_run_timestamp_seconds", "gauge", "When the last pass ran.", g.At.Unix())
	}
	for _, r := range d.repl.statuses(req.Context()) {
		l := fmt.Sprintf("{volume=%q,target=%q}", r.Volume, r.Target)
		metric("strata_replication_acked_seq", "gauge", "The source point the target holds.", r.Acked, "", l)
		metric("strata_replication_lag_records", "gauge", "Changes of the volume the target does not hold yet.", r.LagRecords, "", l)
		metric("strata_replication_lag_bytes", "gauge", "Data bytes the target does not hold yet.", r.LagBytes, "", l)
		metric("strata_replication_lag_seconds", "gauge", "Age of the oldest change the target does not hold (0: up to date).", r.LagSeconds, "", l)
		metric("strata_replication_failing", "gauge", "1 when the last run to the target failed.", nonEmpty(r.LastError), "", l)
	}
	for _, s := range d.sched.statuses() {
		metric("strata_schedule_snapshots", "gauge", "Scheduled snapshots the volume holds.", s.Scheduled, "volume", s.Volume)
		if !s.Last.IsZero() {
			metric("strata_schedule_last_snapshot_timestamp_seconds", "gauge", "When the volume's newest scheduled snapshot was taken.", s.Last.Unix(), "volume", s.Volume)
		}
		metric("strata_schedule_pruned_total", "counter", "Scheduled snapshots thinned since the daemon started.", s.Pruned, "volume", s.Volume)
		metric("strata_schedule_failing", "gauge", "1 when the schedule's last pass met an error (a failed freeze, snapshot or prune).", nonEmpty(s.LastError), "volume", s.Volume)
	}
	d.io.write(&b)
	fmt.Fprintf(&b, "# HELP strata_journal_fsync_seconds Journal fsync latency.\n# TYPE strata_journal_fsync_seconds histogram\n")
	writeFsyncHistogram(&b, d.pool.FsyncLatency())
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprint(w, b.String())
}

// writeFsyncHistogram writes the journal's fsync latency histogram.
func writeFsyncHistogram(b *strings.Builder, f cdp.FsyncStats) {
	var cum uint64
	for i, le := range cdp.FsyncBuckets {
		cum += f.Counts[i]
		fmt.Fprintf(b, "strata_journal_fsync_seconds_bucket{le=\"%g\"} %d\n", le.Seconds(), cum)
	}
	cum += f.Counts[len(cdp.FsyncBuckets)]
	fmt.Fprintf(b, "strata_journal_fsync_seconds_bucket{le=\"+Inf\"} %d\n", cum)
	fmt.Fprintf(b, "strata_journal_fsync_seconds_sum %g\n", f.Sum.Seconds())
	fmt.Fprintf(b, "strata_journal_fsync_seconds_count %d\n", cum)
}

// nonEmpty is 1 for an error message, 0 for none.
func nonEmpty(msg string) int {
	if msg != "" {
		return 1
	}
	return 0
}
