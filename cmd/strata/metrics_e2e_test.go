package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/metricstest"
)

// TestE2EMetrics: the control socket serves the counters, the read cache's
// among them, in the Prometheus text format.
func TestE2EMetrics(t *testing.T) {
	need(t, "qemu-io")
	s := startServer(t)
	s.createVolume("m", "16MiB")
	mustQemuIO(t, s.uri("m"), "write -P 0x5a 0 1M")
	// Small reads, twice: the second pass hits the read cache.
	for i := 0; i < 2; i++ {
		mustQemuIO(t, s.uri("m"), "read -P 0x5a 0 4k", "read -P 0x5a 4k 4k", "read -P 0x5a 8k 4k")
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(s.dir, "control.sock"))
	}}}
	resp, err := hc.Get("http://strata/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fams, err := metricstest.Parse(string(body))
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	value := func(name string, labels ...string) float64 {
		t.Helper()
		v, err := fams.Value(name, labels...)
		if err != nil {
			t.Fatalf("%v\n%s", err, body)
		}
		return v
	}
	if v := value("strata_volume_written_bytes", "volume", "m"); v != 1<<20 {
		t.Errorf("written %v, want 1 MiB", v)
	}
	if v := value("strata_cache_hits_total"); v < 3 {
		t.Errorf("cache hits %v after reading the same blocks twice", v)
	}
	if v := value("strata_cache_max_bytes"); v != 256<<20 {
		t.Errorf("cache capacity %v, want the 256 MiB default", v)
	}
	if v := value("strata_journal_fsyncs_total"); v < 1 {
		t.Errorf("fsyncs %v", v)
	}
	value("strata_pool_failed")
	// Per-volume I/O: bytes and latency histograms by operation.
	if v := value("strata_io_bytes_total", "volume", "m", "op", "write"); v != 1<<20 {
		t.Errorf("io write bytes %v, want 1 MiB", v)
	}
	if v := value("strata_io_seconds_count", "volume", "m", "op", "read"); v < 6 {
		t.Errorf("read latency count %v, want the 6 reads", v)
	}
	if v := value("strata_io_seconds_bucket", "volume", "m", "op", "read", "le", "+Inf"); v != value("strata_io_seconds_count", "volume", "m", "op", "read") {
		t.Errorf("+Inf bucket %v differs from the count", v)
	}
	if v := value("strata_journal_fsync_seconds_count"); v < 1 {
		t.Errorf("fsync latency count %v", v)
	}
	if v := value("process_resident_memory_bytes"); v <= 0 {
		t.Errorf("process collector: resident memory %v", v)
	}
	if v := value("go_goroutines"); v < 1 {
		t.Errorf("Go collector: goroutines %v", v)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || fams["strata_cache_hits_total"].GetType() != dto.MetricType_COUNTER {
		t.Errorf("not the Prometheus text format (%s):\n%s", ct, body)
	}
}

// The same metrics over TCP with --metrics-listen, for scrapers.
func TestE2EMetricsListen(t *testing.T) {
	port := freePort(t)
	s := startServer(t, "--metrics-listen", "127.0.0.1:"+strconv.Itoa(port))
	s.createVolume("x", "4MiB")
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fams, err := metricstest.Parse(string(body))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := fams.Value("strata_volume_size_bytes", "volume", "x"); err != nil || v != 4<<20 {
		t.Fatalf("TCP metrics: size of x %v, %v:\n%s", v, err, body)
	}
	// Only /metrics: the control API stays on the control socket.
	r2, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/v1/volumes")
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusNotFound {
		t.Fatalf("the metrics listener answers the control API: %s", r2.Status)
	}
}

// scrape reads the daemon's /metrics on the control socket and parses it
// with Prometheus's text parser; it returns the text too, for messages.
func (s *server) scrape(t *testing.T) (metricstest.Families, string) {
	t.Helper()
	text, err := control.NewClient(filepath.Join(s.dir, "control.sock")).Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Parse(text)
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	return fams, text
}
