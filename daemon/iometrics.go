package daemon

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-storage/strata/cow"
)

// Latency buckets (seconds) for the I/O histograms.
var latencyBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1}

// histogram is a fixed-bucket latency histogram safe for concurrent use.
type histogram struct {
	counts [14]atomic.Uint64 // one per bucket, then +Inf
	sumNs  atomic.Uint64
	n      atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := sort.SearchFloat64s(latencyBuckets, s)
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(d))
	h.n.Add(1)
}

// opMetrics are one volume's counters for one operation.
type opMetrics struct {
	bytes atomic.Uint64
	errs  atomic.Uint64
	lat   histogram
}

var ioOps = []string{"read", "write", "flush", "trim", "zero"}

// ioMetrics holds every volume's I/O counters.
type ioMetrics struct {
	mu   sync.Mutex
	vols map[string]map[string]*opMetrics
}

func (m *ioMetrics) forVolume(name string) map[string]*opMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.vols == nil {
		m.vols = map[string]map[string]*opMetrics{}
	}
	ops := m.vols[name]
	if ops == nil {
		ops = map[string]*opMetrics{}
		for _, op := range ioOps {
			ops[op] = &opMetrics{}
		}
		m.vols[name] = ops
	}
	return ops
}

// meteredVolume is an export that counts its I/O; everything else is the
// volume's own (the NBD server still finds Trimmer, Zeroer, BlockStatuser).
type meteredVolume struct {
	*cow.Volume
	ops map[string]*opMetrics
}

func (v *meteredVolume) note(op string, start time.Time, n int, err error) {
	m := v.ops[op]
	m.lat.observe(time.Since(start))
	if err != nil {
		m.errs.Add(1)
		return
	}
	m.bytes.Add(uint64(n))
}

func (v *meteredVolume) ReadAt(p []byte, off int64) (int, error) {
	t := time.Now()
	n, err := v.Volume.ReadAt(p, off)
	v.note("read", t, n, err)
	return n, err
}

// TryReadAt counts the reads the volume serves from memory
// (blockdev.FastReader); a read it declines is counted by ReadAt.
func (v *meteredVolume) TryReadAt(p []byte, off int64) (bool, error) {
	t := time.Now()
	ok, err := v.Volume.TryReadAt(p, off)
	if ok || err != nil {
		v.note("read", t, len(p), err)
	}
	return ok, err
}

func (v *meteredVolume) WriteAt(p []byte, off int64) (int, error) {
	t := time.Now()
	n, err := v.Volume.WriteAt(p, off)
	v.note("write", t, n, err)
	return n, err
}

func (v *meteredVolume) Flush() error {
	t := time.Now()
	err := v.Volume.Flush()
	v.note("flush", t, 0, err)
	return err
}

func (v *meteredVolume) Trim(off, length int64) error {
	t := time.Now()
	err := v.Volume.Trim(off, length)
	v.note("trim", t, int(length), err)
	return err
}

func (v *meteredVolume) WriteZeroes(off, length int64, noHole bool) error {
	t := time.Now()
	err := v.Volume.WriteZeroes(off, length, noHole)
	v.note("zero", t, int(length), err)
	return err
}

// writeHistogram writes one Prometheus histogram series.
func writeHistogram(b *strings.Builder, name, labels string, h *histogram) {
	var cum uint64
	for i, le := range latencyBuckets {
		cum += h.counts[i].Load()
		fmt.Fprintf(b, "%s_bucket{%s,le=\"%g\"} %d\n", name, labels, le, cum)
	}
	cum += h.counts[len(latencyBuckets)].Load()
	fmt.Fprintf(b, "%s_bucket{%s,le=\"+Inf\"} %d\n", name, labels, cum)
	fmt.Fprintf(b, "%s_sum{%s} %g\n", name, labels, float64(h.sumNs.Load())/1e9)
	fmt.Fprintf(b, "%s_count{%s} %d\n", name, labels, h.n.Load())
}

// write appends the I/O metrics.
func (m *ioMetrics) write(b *strings.Builder) {
	m.mu.Lock()
	names := make([]string, 0, len(m.vols))
	for n := range m.vols {
		names = append(names, n)
	}
	m.mu.Unlock()
	sort.Strings(names)
	fmt.Fprintf(b, "# HELP strata_io_seconds NBD request latency by volume and operation.\n# TYPE strata_io_seconds histogram\n")
	for _, n := range names {
		ops := m.forVolume(n)
		for _, op := range ioOps {
			writeHistogram(b, "strata_io_seconds", fmt.Sprintf("volume=%q,op=%q", n, op), &ops[op].lat)
		}
	}
	fmt.Fprintf(b, "# HELP strata_io_bytes_total Bytes read, written, trimmed or zeroed by volume.\n# TYPE strata_io_bytes_total counter\n")
	for _, n := range names {
		ops := m.forVolume(n)
		for _, op := range ioOps {
			fmt.Fprintf(b, "strata_io_bytes_total{volume=%q,op=%q} %d\n", n, op, ops[op].bytes.Load())
		}
	}
	fmt.Fprintf(b, "# HELP strata_io_errors_total Failed requests by volume and operation.\n# TYPE strata_io_errors_total counter\n")
	for _, n := range names {
		ops := m.forVolume(n)
		for _, op := range ioOps {
			fmt.Fprintf(b, "strata_io_errors_total{volume=%q,op=%q} %d\n", n, op, ops[op].errs.Load())
		}
	}
}
