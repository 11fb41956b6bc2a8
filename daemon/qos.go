package daemon

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/control"
)

// DefaultBurst is the unused allowance a volume's limits keep unless
// --burst says otherwise, in seconds of each limit.
const DefaultBurst = 1.0

// opUnit is what one operation costs in an IOPS bucket: buckets count in
// whole units, and a thousandth of an operation keeps small allowances
// (2 IOPS with a 0.3 s burst) exact enough.
const opUnit = 1000

// clock is the time a limiter reads and waits on; tests inject their own.
type clock interface {
	Now() time.Time
	// Timer fires once after d; stop releases it early.
	Timer(d time.Duration) (c <-chan time.Time, stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) Timer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// bucket is one token bucket, counted cumulatively: a request charges its
// cost and may go once the bucket has credited as much as was charged up
// to and including it. Credit grows at rate units a second; unused credit
// is capped at cap (the burst), debt is not: a request larger than the
// burst still goes, once its debt is paid. The limiter's lock guards it.
type bucket struct {
	rate    float64 // units a second; 0 once the limit is cleared
	cap     int64
	charged int64
	base    int64 // credited at baseT
	baseT   time.Time
}

func newBucket(now time.Time, rate float64, cap int64) *bucket {
	return &bucket{rate: rate, cap: cap, base: cap, baseT: now}
}

// credited is the credit at now, with unused credit capped.
func (b *bucket) credited(now time.Time) int64 {
	c := b.base + int64(b.rate*now.Sub(b.baseT).Seconds())
	if c > b.charged+b.cap {
		c = b.charged + b.cap
		b.base, b.baseT = c, now
	}
	return c
}

// charge takes cost and returns the credit the request must wait for.
func (b *bucket) charge(now time.Time, cost int64) int64 {
	b.credited(now)
	b.charged += cost
	return b.charged
}

// until is how long from now until the bucket has credited target.
func (b *bucket) until(now time.Time, target int64) time.Duration {
	if b.rate == 0 {
		return 0
	}
	c := b.credited(now)
	if c >= target {
		return 0
	}
	return time.Duration(math.Ceil(float64(target-c) / b.rate * 1e9))
}

// setRate changes the rate from now on: the debt waiting requests hold is
// paid at the new rate.
func (b *bucket) setRate(now time.Time, rate float64, cap int64) {
	c := b.credited(now)
	b.base, b.baseT, b.rate, b.cap = c, now, rate, cap
	b.credited(now)
}

// Bucket slots of a volLimiter, and the ones each direction draws on.
const (
	bIOPS = iota
	bReadIOPS
	bWriteIOPS
	bBW
	bReadBW
	bWriteBW
	nBuckets
)

const (
	opRead = iota
	opWrite
)

var opBuckets = [2][2][2]int{ // [op][iops, bw][total, op]
	opRead:  {{bIOPS, bReadIOPS}, {bBW, bReadBW}},
	opWrite: {{bIOPS, bWriteIOPS}, {bBW, bWriteBW}},
}

// volLimiter is one volume's limits, shared by every connection to it.
// Without a limit in a direction, that direction's wait costs one atomic
// load: no lock, no clock.
type volLimiter struct {
	clock     clock
	on        [2]atomic.Bool // a limit applies to reads, to writes
	throttled [2]prometheus.Counter

	mu struct {
		sync.Mutex
		q       control.QoS
		b       [nBuckets]*bucket
		changed chan struct{} // closed when the limits change
	}
}

func newVolLimiter(c clock, throttled [2]prometheus.Counter) *volLimiter {
	l := &volLimiter{clock: c, throttled: throttled}
	l.mu.changed = make(chan struct{})
	return l
}

// limits returns the limits in force.
func (l *volLimiter) limits() control.QoS {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.q
}

// set puts q in force at once, for requests waiting too.
func (l *volLimiter) set(q control.QoS) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	rates := [nBuckets]int64{q.IOPS, q.ReadIOPS, q.WriteIOPS, q.BW, q.ReadBW, q.WriteBW}
	for i, r := range rates {
		rate := float64(r)
		if i < bBW {
			rate *= opUnit
		}
		cap := int64(rate * q.Burst)
		switch b := l.mu.b[i]; {
		case r <= 0 && b != nil:
			b.rate = 0 // its waiters go
			l.mu.b[i] = nil
		case r > 0 && b == nil:
			l.mu.b[i] = newBucket(now, rate, cap)
		case r > 0:
			b.setRate(now, rate, cap)
		}
	}
	l.mu.q = q
	for op, bs := range opBuckets {
		l.on[op].Store(l.mu.b[bs[0][0]] != nil || l.mu.b[bs[0][1]] != nil || l.mu.b[bs[1][0]] != nil || l.mu.b[bs[1][1]] != nil)
	}
	close(l.mu.changed)
	l.mu.changed = make(chan struct{})
}

// hold is a request's place in one bucket: it may go once the bucket has
// credited target.
type hold struct {
	b      *bucket
	target int64
}

// chargeLocked charges a request of op moving n bytes to every bucket that
// applies, appending its holds to holds.
func (l *volLimiter) chargeLocked(now time.Time, op int, n int64, holds []hold) []hold {
	for kind, bs := range opBuckets[op] {
		cost := n
		if kind == 0 {
			cost = opUnit
		}
		for _, i := range bs {
			if b := l.mu.b[i]; b != nil && cost > 0 {
				holds = append(holds, hold{b, b.charge(now, cost)})
			}
		}
	}
	return holds
}

// untilAll is how long from now until every hold is credited.
func untilAll(now time.Time, holds []hold) time.Duration {
	var d time.Duration
	for _, h := range holds {
		d = max(d, h.b.until(now, h.target))
	}
	return d
}

// wait returns once a request of op moving n bytes fits the limits. A
// change of the limits while it waits applies to it.
func (l *volLimiter) wait(op int, n int64) {
	if !l.on[op].Load() {
		return
	}
	var buf [4]hold
	l.mu.Lock()
	now := l.clock.Now()
	holds := l.chargeLocked(now, op, n, buf[:0])
	start := now
	for {
		d := untilAll(now, holds)
		if d <= 0 {
			break
		}
		changed := l.mu.changed
		l.mu.Unlock()
		c, stop := l.clock.Timer(d)
		select {
		case <-c:
		case <-changed:
			stop()
		}
		l.mu.Lock()
		now = l.clock.Now()
	}
	l.mu.Unlock()
	if w := now.Sub(start); w > 0 {
		l.throttled[op].Add(w.Seconds())
	}
}

// qosEntry is one volume's limits as qos.json keeps them.
type qosEntry struct {
	Volume string `json:"volume"`
	control.QoS
}

// qosManager holds the volumes' limits (DATA/qos.json) and their
// limiters, one per volume for all its connections. It is a
// prometheus.Collector (strata_volume_throttled_seconds_total and the
// limits as gauges). Its methods are safe for concurrent use.
type qosManager struct {
	path      string
	clock     clock
	throttled *prometheus.CounterVec
	limitDesc *prometheus.Desc
	burstDesc *prometheus.Desc

	mu struct {
		sync.Mutex
		saved    map[string]*qosEntry
		vols     map[string]*volLimiter
		released bool // shutting down: no limits in force
	}
}

func newQoSManager(path string, c clock) (*qosManager, error) {
	saved, err := loadEntries(path, func(e *qosEntry) string { return e.Volume })
	if err != nil {
		return nil, err
	}
	for vol, e := range saved {
		if err := checkQoS(e.QoS); err != nil {
			return nil, fmt.Errorf("%s: volume %s: %w", path, vol, err)
		}
	}
	m := &qosManager{path: path, clock: c,
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strata_volume_throttled_seconds_total",
			Help: "Time requests of the volume waited for its QoS limits, summed over requests, by op (read, write)."}, []string{"volume", "op"}),
		limitDesc: prometheus.NewDesc("strata_volume_qos_limit", "The volume's QoS limits: IOPS (unit iops) and bytes a second (unit bytes), by op (total, read, write).",
			[]string{"volume", "unit", "op"}, nil),
		burstDesc: prometheus.NewDesc("strata_volume_qos_burst_seconds", "Unused allowance a limited volume keeps, in seconds of its limits.", []string{"volume"}, nil),
	}
	m.mu.saved, m.mu.vols = saved, map[string]*volLimiter{}
	return m, nil
}

func checkQoS(q control.QoS) error {
	for _, v := range []int64{q.IOPS, q.ReadIOPS, q.WriteIOPS, q.BW, q.ReadBW, q.WriteBW} {
		if v < 0 {
			return fmt.Errorf("%w: a limit is negative (0 clears it)", errBadRequest)
		}
	}
	if q.Burst < 0 || q.Burst > 3600 || math.IsNaN(q.Burst) {
		return fmt.Errorf("%w: burst %g s: give 0 to 3600 seconds", errBadRequest, q.Burst)
	}
	return nil
}

// forVolume returns vol's limiter, made on first use with its saved limits.
func (m *qosManager) forVolume(vol string) *volLimiter {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.mu.vols[vol]
	if l == nil {
		l = newVolLimiter(m.clock, [2]prometheus.Counter{m.throttled.WithLabelValues(vol, "read"), m.throttled.WithLabelValues(vol, "write")})
		if e := m.mu.saved[vol]; e != nil && !m.mu.released {
			l.set(e.QoS)
		}
		m.mu.vols[vol] = l
	}
	return l
}

// limits returns vol's limits (ok false: none set).
func (m *qosManager) limits(vol string) (control.QoS, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.mu.saved[vol]; e != nil {
		return e.QoS, true
	}
	return control.QoS{Burst: DefaultBurst}, false
}

// all returns the limits of every volume that has some.
func (m *qosManager) all() map[string]control.QoS {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]control.QoS, len(m.mu.saved))
	for vol, e := range m.mu.saved {
		out[vol] = e.QoS
	}
	return out
}

// set changes vol's limits and returns them. The file is saved before
// they take effect; open connections get them at once.
func (m *qosManager) set(vol string, ch control.QoSChange) (control.QoS, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	q := control.QoS{Burst: DefaultBurst}
	if e := m.mu.saved[vol]; e != nil {
		q = e.QoS
	}
	q = ch.Apply(q)
	if err := checkQoS(q); err != nil {
		return q, err
	}
	if err := m.saveLocked(vol, q); err != nil {
		return q, err
	}
	if l := m.mu.vols[vol]; l != nil && !m.mu.released {
		l.set(q)
	}
	return q, nil
}

// release lifts every limit in memory (qos.json keeps them), so that the
// requests waiting when the daemon stops finish at once instead of holding
// the shutdown for their debt.
func (m *qosManager) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.released = true
	for _, l := range m.mu.vols {
		l.set(control.QoS{})
	}
}

// saveLocked saves vol's limits (none: its entry goes).
func (m *qosManager) saveLocked(vol string, q control.QoS) error {
	next := make(map[string]*qosEntry, len(m.mu.saved)+1)
	for k, v := range m.mu.saved {
		next[k] = v
	}
	if q.Limited() || q.Burst != DefaultBurst {
		next[vol] = &qosEntry{Volume: vol, QoS: q}
	} else {
		delete(next, vol)
	}
	if err := saveEntries(m.path, next); err != nil {
		return err
	}
	m.mu.saved = next
	return nil
}

// forget drops a deleted volume's limits.
func (m *qosManager) forget(vol string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.mu.vols[vol]; l != nil {
		l.set(control.QoS{})
		delete(m.mu.vols, vol)
	}
	if _, ok := m.mu.saved[vol]; !ok {
		return nil
	}
	return m.saveLocked(vol, control.QoS{Burst: DefaultBurst})
}

func (m *qosManager) Describe(ch chan<- *prometheus.Desc) {
	m.throttled.Describe(ch)
	ch <- m.limitDesc
	ch <- m.burstDesc
}

func (m *qosManager) Collect(ch chan<- prometheus.Metric) {
	m.throttled.Collect(ch)
	for vol, q := range m.all() {
		if !q.Limited() {
			continue
		}
		for _, g := range []struct {
			v        int64
			unit, op string
		}{{q.IOPS, "iops", "total"}, {q.ReadIOPS, "iops", "read"}, {q.WriteIOPS, "iops", "write"},
			{q.BW, "bytes", "total"}, {q.ReadBW, "bytes", "read"}, {q.WriteBW, "bytes", "write"}} {
			if g.v > 0 {
				ch <- prometheus.MustNewConstMetric(m.limitDesc, prometheus.GaugeValue, float64(g.v), vol, g.unit, g.op)
			}
		}
		ch <- prometheus.MustNewConstMetric(m.burstDesc, prometheus.GaugeValue, q.Burst, vol)
	}
}

// headExport is what a volume's head export offers the NBD server.
type headExport interface {
	nbd.Export
	blockdev.Trimmer
	blockdev.Zeroer
	blockdev.BlockStatuser
	blockdev.FastReader
	blockdev.RefReader
	blockdev.BatchWriter
}

// throttledVolume is a head export held to its volume's limits: requests
// wait for them before they reach the volume. While reads are limited it
// declines the reads the server would answer inline (TryReadAt,
// ReadRefs): they come back through ReadAt, which waits; while writes are
// limited, writes say they may wait (blockdev.WriteWaiter).
type throttledVolume struct {
	headExport
	q      *volLimiter
	waiter blockdev.WriteWaiter // the inner export's (nil: none)
}

func newThrottledVolume(e headExport, q *volLimiter) *throttledVolume {
	w, _ := e.(blockdev.WriteWaiter)
	return &throttledVolume{headExport: e, q: q, waiter: w}
}

func (v *throttledVolume) ReadAt(p []byte, off int64) (int, error) {
	v.q.wait(opRead, int64(len(p)))
	return v.headExport.ReadAt(p, off)
}

func (v *throttledVolume) TryReadAt(p []byte, off int64) (bool, error) {
	if v.q.on[opRead].Load() {
		return false, nil
	}
	return v.headExport.TryReadAt(p, off)
}

func (v *throttledVolume) ReadRefs(off int64, n int) ([][]byte, func(), bool, error) {
	if v.q.on[opRead].Load() {
		return nil, nil, false, nil
	}
	return v.headExport.ReadRefs(off, n)
}

func (v *throttledVolume) WriteAt(p []byte, off int64) (int, error) {
	v.q.wait(opWrite, int64(len(p)))
	return v.headExport.WriteAt(p, off)
}

func (v *throttledVolume) WriteBatch(ws []blockdev.BlockWrite) error {
	for _, w := range ws {
		v.q.wait(opWrite, int64(len(w.Data)))
	}
	return v.headExport.WriteBatch(ws)
}

func (v *throttledVolume) Trim(off, length int64) error {
	v.q.wait(opWrite, 0)
	return v.headExport.Trim(off, length)
}

func (v *throttledVolume) WriteZeroes(off, length int64, noHole bool) error {
	v.q.wait(opWrite, 0)
	return v.headExport.WriteZeroes(off, length, noHole)
}

func (v *throttledVolume) WritesWait() bool {
	return v.q.on[opWrite].Load() || v.waiter != nil && v.waiter.WritesWait()
}

// setQoS validates and sets vol's limits (the settings API).
func (d *Daemon) setQoS(vol string, ch control.QoSChange) (control.QoS, error) {
	if _, err := d.pool.VolumeInfo(vol); err != nil {
		return control.QoS{}, err
	}
	return d.qos.set(vol, ch)
}

// defaultQoS gives a volume just created the pool's default limits.
func (d *Daemon) defaultQoS(vol string) {
	q := d.opts.DefaultQoS
	if !q.Limited() {
		return
	}
	ch := control.QoSChange{IOPS: &q.IOPS, ReadIOPS: &q.ReadIOPS, WriteIOPS: &q.WriteIOPS,
		BW: &q.BW, ReadBW: &q.ReadBW, WriteBW: &q.WriteBW, Burst: &q.Burst}
	if _, err := d.qos.set(vol, ch); err != nil {
		d.opts.Logger.Error("setting a new volume's default QoS limits", "volume", vol, "err", err)
	}
}
