package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/metricstest"
)

// strataFamilies are the families /metrics served before it moved to
// client_golang, with their types and labels: dashboards and alerts name
// them, so each must stay exactly as it was.
var strataFamilies = []struct {
	name   string
	typ    dto.MetricType
	labels []string
}{
	{"strata_cache_max_bytes", dto.MetricType_GAUGE, nil},
	{"strata_cache_bytes", dto.MetricType_GAUGE, nil},
	{"strata_cache_hits_total", dto.MetricType_COUNTER, nil},
	{"strata_cache_misses_total", dto.MetricType_COUNTER, nil},
	{"strata_cache_evictions_total", dto.MetricType_COUNTER, nil},
	{"strata_cache_hit_ratio", dto.MetricType_GAUGE, nil},
	{"strata_read_ahead_bytes_total", dto.MetricType_COUNTER, nil},
	{"strata_journal_bytes", dto.MetricType_GAUGE, nil},
	{"strata_journal_segments", dto.MetricType_GAUGE, nil},
	{"strata_journal_last_seq", dto.MetricType_GAUGE, nil},
	{"strata_journal_synced_seq", dto.MetricType_GAUGE, nil},
	{"strata_journal_fsyncs_total", dto.MetricType_COUNTER, nil},
	{"strata_journal_damaged_blocks", dto.MetricType_GAUGE, nil},
	{"strata_journal_fsync_seconds", dto.MetricType_HISTOGRAM, nil},
	{"strata_index_bytes", dto.MetricType_GAUGE, nil},
	{"strata_index_memory_bytes", dto.MetricType_GAUGE, nil},
	{"strata_read_damaged_blocks_total", dto.MetricType_COUNTER, nil},
	{"strata_pool_failed", dto.MetricType_GAUGE, nil},
	{"strata_nbd_connections", dto.MetricType_GAUGE, nil},
	{"strata_access_denied_total", dto.MetricType_COUNTER, []string{"volume"}},
	{"strata_volume_size_bytes", dto.MetricType_GAUGE, []string{"volume"}},
	{"strata_volume_written_bytes", dto.MetricType_GAUGE, []string{"volume"}},
	{"strata_gc_last_bytes_freed", dto.MetricType_GAUGE, nil},
	{"strata_gc_last_bytes_relocated", dto.MetricType_GAUGE, nil},
	{"strata_gc_last_run_timestamp_seconds", dto.MetricType_GAUGE, nil},
	{"strata_replication_acked_seq", dto.MetricType_GAUGE, []string{"target", "volume"}},
	{"strata_replication_lag_records", dto.MetricType_GAUGE, []string{"target", "volume"}},
	{"strata_replication_lag_bytes", dto.MetricType_GAUGE, []string{"target", "volume"}},
	{"strata_replication_lag_seconds", dto.MetricType_GAUGE, []string{"target", "volume"}},
	{"strata_replication_failing", dto.MetricType_GAUGE, []string{"target", "volume"}},
	{"strata_io_seconds", dto.MetricType_HISTOGRAM, []string{"op", "volume"}},
	{"strata_io_bytes_total", dto.MetricType_COUNTER, []string{"op", "volume"}},
	{"strata_io_errors_total", dto.MetricType_COUNTER, []string{"op", "volume"}},
}

// TestMetricsFamilies scrapes a daemon that has done I/O, a GC pass and a
// replication, on the control socket and on --metrics-listen: the scrape
// parses with Prometheus's text parser, every family that existed before
// client_golang is there with its type and labels, the process and Go
// runtime collectors are there, and values count what happened. Two
// daemons run in this process, each with its own registry.
func TestMetricsFamilies(t *testing.T) {
	ctx := context.Background()
	metricsAddr := freeAddr(t)
	d, src := start(t, t.TempDir(), func(o *Options) {
		o.Volumes = []VolumeSpec{{Name: "v", Size: 8 << 20}}
		o.MetricsListen = metricsAddr
		o.Pool.CacheSize = 4 << 20
	})
	_, target := replicaSite(t)

	// I/O through the export the NBD server opens, so it is metered.
	// A client refused by the volume's access rules.
	if err := d.access.set("v", &[]string{"10.0.0.0/8"}, nil); err != nil {
		t.Fatal(err)
	}
	x := d.exporter()
	// A write bandwidth limit with no burst: the 64 KiB write waits 1/16 s.
	mib, noBurst := int64(1<<20), 0.0
	if _, err := d.qos.set("v", control.QoSChange{WriteBW: &mib, Burst: &noBurst}); err != nil {
		t.Fatal(err)
	}
	if _, err := x.OpenFor(nbd.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}, "v@seq:1"); !errors.Is(err, blockdev.ErrNotFound) {
		t.Fatalf("a refused open: %v", err)
	}
	if err := d.access.set("v", &[]string{}, nil); err != nil {
		t.Fatal(err)
	}
	exp, err := x.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	vol := exp.(*throttledVolume)
	if _, err := vol.WriteAt(make([]byte, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	if err := vol.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := vol.ReadAt(make([]byte, 4096), 8<<20); err == nil {
		t.Fatal("a read past the end succeeded")
	}
	if _, err := src.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Replicate(ctx, control.ReplicateRequest{Volume: "v", TargetSpec: target}, nil); err != nil {
		t.Fatal(err)
	}

	text, err := src.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Parse(text)
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	for _, want := range strataFamilies {
		f := fams[want.name]
		if f == nil {
			t.Errorf("no family %s", want.name)
			continue
		}
		if f.GetType() != want.typ {
			t.Errorf("%s is a %s, want a %s", want.name, f.GetType(), want.typ)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s has no help", want.name)
		}
		for _, m := range f.Metric {
			var names []string
			for _, lp := range m.Label {
				names = append(names, lp.GetName())
			}
			if !slices.Equal(names, want.labels) {
				t.Errorf("%s has labels %q, want %q", want.name, names, want.labels)
			}
		}
	}
	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
		"go_goroutines", "go_memstats_heap_alloc_bytes", "go_gc_duration_seconds"} {
		if fams[name] == nil {
			t.Errorf("no family %s (process and Go runtime collectors)", name)
		}
	}

	value := func(name string, labels ...string) float64 {
		t.Helper()
		v, err := fams.Value(name, labels...)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	checks := []struct {
		what string
		got  float64
		ok   func(float64) bool
	}{
		{"size of v", value("strata_volume_size_bytes", "volume", "v"), func(v float64) bool { return v == 8<<20 }},
		{"write throttling of v", value("strata_volume_throttled_seconds_total", "volume", "v", "op", "write"), func(v float64) bool { return v >= 0.0625 && v < 1 }},
		{"read throttling of v", value("strata_volume_throttled_seconds_total", "volume", "v", "op", "read"), func(v float64) bool { return v == 0 }},
		{"write bw limit of v", value("strata_volume_qos_limit", "volume", "v", "unit", "bytes", "op", "write"), func(v float64) bool { return v == 1<<20 }},
		{"burst of v", value("strata_volume_qos_burst_seconds", "volume", "v"), func(v float64) bool { return v == 0 }},
		{"access refusals of v", value("strata_access_denied_total", "volume", "v"), func(v float64) bool { return v == 1 }},
		{"written of v", value("strata_volume_written_bytes", "volume", "v"), func(v float64) bool { return v == 64<<10 }},
		{"bytes written to v", value("strata_io_bytes_total", "volume", "v", "op", "write"), func(v float64) bool { return v == 64<<10 }},
		{"failed reads of v", value("strata_io_errors_total", "volume", "v", "op", "read"), func(v float64) bool { return v == 1 }},
		{"bytes read from v", value("strata_io_bytes_total", "volume", "v", "op", "read"), func(v float64) bool { return v == 0 }},
		{"flushes of v", value("strata_io_seconds_count", "volume", "v", "op", "flush"), func(v float64) bool { return v == 1 }},
		{"writes of v under 1s", value("strata_io_seconds_bucket", "volume", "v", "op", "write", "le", "1"), func(v float64) bool { return v == 1 }},
		{"writes of v", value("strata_io_seconds_bucket", "volume", "v", "op", "write", "le", "+Inf"), func(v float64) bool { return v == 1 }},
		{"trims of v", value("strata_io_seconds_count", "volume", "v", "op", "trim"), func(v float64) bool { return v == 0 }},
		{"fsyncs", value("strata_journal_fsyncs_total"), func(v float64) bool { return v >= 1 }},
		{"fsync latency count", value("strata_journal_fsync_seconds_count"), func(v float64) bool { return v >= 1 }},
		{"fsyncs in the +Inf bucket", value("strata_journal_fsync_seconds_bucket", "le", "+Inf"), func(v float64) bool { return v == value("strata_journal_fsync_seconds_count") }},
		{"last GC", value("strata_gc_last_run_timestamp_seconds"), func(v float64) bool { return v > 0 }},
		{"replica's acked point", value("strata_replication_acked_seq", "volume", "v", "target", target.To), func(v float64) bool { return v > 0 }},
		{"replication lag", value("strata_replication_lag_records", "volume", "v", "target", target.To), func(v float64) bool { return v == 0 }},
		{"replication failing", value("strata_replication_failing", "volume", "v", "target", target.To), func(v float64) bool { return v == 0 }},
		{"pool failed", value("strata_pool_failed"), func(v float64) bool { return v == 0 }},
		{"cache capacity", value("strata_cache_max_bytes"), func(v float64) bool { return v == 4<<20 }},
		{"process memory", value("process_resident_memory_bytes"), func(v float64) bool { return v > 0 }},
	}
	for _, c := range checks {
		if !c.ok(c.got) {
			t.Errorf("%s: %v", c.what, c.got)
		}
	}

	// The same registry over TCP for scrapers; only /metrics there.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("TCP scrape: %s %q, %v", resp.Status, resp.Header.Get("Content-Type"), err)
	}
	tcp, err := metricstest.Parse(string(body))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := tcp.Value("strata_io_bytes_total", "volume", "v", "op", "write"); err != nil || v != 64<<10 {
		t.Fatalf("TCP scrape: bytes written %v, %v", v, err)
	}
}
