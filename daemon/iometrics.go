package daemon

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cow"
)

// Latency buckets (seconds) for the I/O histograms.
var latencyBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1}

// opMetrics are one volume's counters for one operation.
type opMetrics struct {
	bytes prometheus.Counter
	errs  prometheus.Counter
	lat   prometheus.Observer
}

var ioOps = []string{"read", "write", "flush", "trim", "zero"}

// ioMetrics holds every volume's I/O counters (strata_io_seconds,
// strata_io_bytes_total, strata_io_errors_total, labelled volume and op).
// A volume's series appear once it is first exported, every operation's at
// once, and stay until the daemon stops. It is a prometheus.Collector.
type ioMetrics struct {
	lat   *prometheus.HistogramVec
	bytes *prometheus.CounterVec
	errs  *prometheus.CounterVec

	mu   sync.Mutex
	vols map[string]map[string]*opMetrics
}

func newIOMetrics() *ioMetrics {
	labels := []string{"volume", "op"}
	return &ioMetrics{
		lat: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "strata_io_seconds",
			Help: "NBD request latency by volume and operation.", Buckets: latencyBuckets}, labels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strata_io_bytes_total",
			Help: "Bytes read, written, trimmed or zeroed by volume."}, labels),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strata_io_errors_total",
			Help: "Failed requests by volume and operation."}, labels),
		vols: map[string]map[string]*opMetrics{},
	}
}

func (m *ioMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.lat.Describe(ch)
	m.bytes.Describe(ch)
	m.errs.Describe(ch)
}

func (m *ioMetrics) Collect(ch chan<- prometheus.Metric) {
	m.lat.Collect(ch)
	m.bytes.Collect(ch)
	m.errs.Collect(ch)
}

// forVolume returns the volume's counters by operation; the NBD hot path
// keeps them, so no request looks series up by label.
func (m *ioMetrics) forVolume(name string) map[string]*opMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	ops := m.vols[name]
	if ops == nil {
		ops = map[string]*opMetrics{}
		for _, op := range ioOps {
			ops[op] = &opMetrics{bytes: m.bytes.WithLabelValues(name, op), errs: m.errs.WithLabelValues(name, op),
				lat: m.lat.WithLabelValues(name, op)}
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
	m.lat.Observe(time.Since(start).Seconds())
	if err != nil {
		m.errs.Inc()
		return
	}
	m.bytes.Add(float64(n))
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

// ReadRefs counts the reads the volume serves from its memory without a
// copy (blockdev.RefReader); a read it declines is counted where it is
// served.
func (v *meteredVolume) ReadRefs(off int64, n int) ([][]byte, func(), bool, error) {
	t := time.Now()
	bufs, release, ok, err := v.Volume.ReadRefs(off, n)
	if ok || err != nil {
		v.note("read", t, n, err)
	}
	return bufs, release, ok, err
}

func (v *meteredVolume) WriteAt(p []byte, off int64) (int, error) {
	t := time.Now()
	n, err := v.Volume.WriteAt(p, off)
	v.note("write", t, n, err)
	return n, err
}

// writeAtSeq is WriteAt that returns the write's point in the journal.
func (v *meteredVolume) writeAtSeq(p []byte, off int64) (int, uint64, error) {
	t := time.Now()
	n, seq, err := v.Volume.WriteAtSeq(p, off)
	v.note("write", t, n, err)
	return n, seq, err
}

func (v *meteredVolume) WriteBatch(ws []blockdev.BlockWrite) error {
	_, err := v.writeBatchSeq(ws)
	return err
}

// writeBatchSeq is WriteBatch that returns the point in the journal of its
// last write.
func (v *meteredVolume) writeBatchSeq(ws []blockdev.BlockWrite) (uint64, error) {
	t := time.Now()
	seq, err := v.Volume.WriteBatchSeq(ws)
	m := v.ops["write"]
	lat := time.Since(t).Seconds()
	for _, w := range ws {
		m.lat.Observe(lat)
		if err != nil {
			m.errs.Inc()
			continue
		}
		m.bytes.Add(float64(len(w.Data)))
	}
	return seq, err
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

// writtenBytes is the bytes written to each volume's head since start
// (the strata_io_bytes_total{op="write"} counters), for the activity
// samples: the I/O path keeps no second counter.
func (m *ioMetrics) writtenBytes() map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int64, len(m.vols))
	for vol, ops := range m.vols {
		var pb dto.Metric
		if err := ops["write"].bytes.Write(&pb); err == nil {
			out[vol] = int64(pb.GetCounter().GetValue())
		}
	}
	return out
}
