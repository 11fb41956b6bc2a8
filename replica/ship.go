package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/strata-storage/strata/cdp"
	"github.com/strata-storage/strata/cow"
)

// DefaultBatchBytes is how much data one batch carries at most: large
// enough that an S3 target gets few, large objects.
const DefaultBatchBytes = 32 << 20

// maxOpData bounds one write op (the pool splits larger writes anyway).
const maxOpData = 8 << 20

// ShipOptions configure one shipping run.
type ShipOptions struct {
	Pool   *cow.Pool
	Volume string
	// RemoteName is the volume's name at the target (default: Volume).
	RemoteName string
	Target     Target
	// PinID names this target's pin on the volume: records it has not
	// acknowledged stay in the journal ("" for none).
	PinID string
	// Upto is the point to ship to (0: the pool's point when the run
	// starts, which makes the run a consistent snapshot).
	Upto uint64
	// BatchBytes bounds a batch's data (default DefaultBatchBytes).
	BatchBytes int64
	// BWLimit caps bytes sent a second (0: no cap), for targets that count.
	BWLimit int64
	// Progress is called after each batch.
	Progress func(Progress)
	Logger   *slog.Logger
	// AllowReplica ships a replica's content as is (a pull for restore).
	AllowReplica bool
	// IdleAdvance: when the volume has not changed since the point the
	// target holds, nothing is sent unless that point is older than this
	// (default DefaultIdleAdvance, S3IdleAdvance to S3); then an empty
	// batch moves the target to Upto.
	IdleAdvance time.Duration
}

// DefaultIdleAdvance is how often an unchanged volume's target is moved to
// the pool's current point; S3IdleAdvance for S3, where each move is an
// object and a manifest rewrite.
const (
	DefaultIdleAdvance = 10 * time.Minute
	S3IdleAdvance      = 24 * time.Hour
)

// Progress of a run.
type Progress struct {
	Acked     uint64 `json:"acked"`      // the target holds the source up to here
	Upto      uint64 `json:"upto"`       // the run's end point
	Start     uint64 `json:"start"`      // the target's point when the run began
	DataBytes int64  `json:"data_bytes"` // data shipped so far
	Batches   int    `json:"batches"`
	Records   int64  `json:"records"`
	Full      bool   `json:"full,omitempty"` // a copy by difference (first run, history gone)
	Phase     string `json:"phase,omitempty"`
}

// Result of a run.
type Result struct {
	Progress
	RawBytes    int64         `json:"raw_bytes"`    // batches before compression
	StoredBytes int64         `json:"stored_bytes"` // after compression (as sent)
	Duration    time.Duration `json:"duration_ns"`
	// LagSeq is how far the volume's head is past the shipped point when
	// the run ends (writes that came in during the run).
	LagSeq uint64 `json:"lag_seq"`
	// Resumed: the run finished a diff the target held in part, from this
	// byte offset on.
	Resumed uint64 `json:"resumed_at,omitempty"`
	Message string `json:"message,omitempty"` // the target's note (a failback accepted)
	// Compacted: what the S3 target's retention policy did after the run.
	Compacted *Compacted `json:"compacted,omitempty"`
}

// Ship sends volume opts.Volume to opts.Target past the point the target
// holds, up to opts.Upto, and returns once the target has made it durable.
// An interrupted run leaves the target at its last acknowledged batch; the
// next run continues from there.
func Ship(ctx context.Context, o ShipOptions) (Result, error) {
	start := time.Now()
	s, st, info, err := openShipper(ctx, &o, nil)
	if err != nil {
		return s.res, err
	}
	p := o.Pool
	if st.Acked < o.Upto && s.unchanged(st) {
		// Nothing to send; the pin stops holding the journal of the
		// pool's other volumes.
		if o.PinID != "" {
			if err := p.PinClean(o.PinID, o.Volume, st.Acked, o.Upto); err != nil {
				return s.res, err
			}
		}
	} else if st.Acked < o.Upto {
		err = s.run(st, info)
		// Batches still in flight: their acks count even after an
		// error (the target applies what it received, in order).
		if derr := s.drain(); err == nil {
			err = derr
		}
	}
	s.count()
	s.res.Duration = time.Since(start)
	if last := p.AppliedSeq(); last > s.res.Acked {
		if changed, cerr := p.ChangedSince(ctx, o.Volume, s.res.Acked); cerr == nil && changed {
			s.res.LagSeq = last - s.res.Acked
		}
	}
	return s.res, err
}

// openShipper fills o's defaults, opens the target (with mirror, for a
// synchronous mirror's stream) and sets the target's pin; it returns the
// shipper, what the target holds and the volume. On an error the
// shipper is still there for its (empty) result.
func openShipper(ctx context.Context, o *ShipOptions, mirror *Mirror) (*shipper, State, cow.VolumeInfo, error) {
	if o.BatchBytes <= 0 {
		o.BatchBytes = DefaultBatchBytes
		if o.BWLimit > 0 {
			// About a second of transfer per batch keeps the pace smooth.
			o.BatchBytes = min(max(o.BWLimit, 1<<20), DefaultBatchBytes)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RemoteName == "" {
		o.RemoteName = o.Volume
	}
	p := o.Pool
	if o.Upto == 0 {
		o.Upto = p.AppliedSeq()
	}
	empty := &shipper{o: *o, ctx: ctx}
	info, err := p.VolumeInfo(o.Volume)
	if err != nil {
		return empty, State{}, info, err
	}
	h := Hello{Source: VolumeID{Pool: p.ID(), Vol: info.ID, Name: info.Name}, Target: o.RemoteName, Size: info.Size, Mirror: mirror}
	if rs := info.Replica; o.AllowReplica || rs == nil || rs.SourcePool == "" {
		// An ordinary volume (or one waiting for a failback).
	} else if rs.Promoted {
		h.Origin = &Origin{Source: VolumeID{Pool: rs.SourcePool, Vol: rs.SourceVol, Name: rs.SourceName}, Seq: rs.Acked, Local: rs.Local}
	} else {
		return empty, State{}, info, fmt.Errorf("%w: %q is a replica of %s; promote it before shipping it on", ErrRefused, o.Volume, rs.SourceName)
	}
	st, err := o.Target.Open(ctx, h)
	if err != nil {
		return empty, State{}, info, fmt.Errorf("%s: %w", o.Target, err)
	}
	s := &shipper{o: *o, ctx: ctx, pos: st.Acked, target: st, res: Result{Progress: Progress{Start: st.Acked, Acked: st.Acked, Upto: o.Upto}, Message: st.Message}}
	if c, ok := o.Target.(Counter); ok {
		s.counter = c
		s.raw0, s.stored0 = c.Counters()
	}
	if o.PinID != "" {
		// A clean range recorded by an earlier run (the volume had no
		// records after the target's point up to there) lets the scan
		// start past it; it holds only if the pin is not ahead of the
		// target.
		if pin, ok := p.ShipPins()[o.PinID]; ok && pin.Vol == info.ID && pin.Seq <= st.Acked && pin.Clean > st.Acked {
			s.scanFrom = pin.Clean
		}
		if err := p.PinShipped(o.PinID, o.Volume, st.Acked); err != nil {
			return s, st, info, err
		}
	}
	return s, st, info, nil
}

// unchanged says the target already holds the volume's current content
// and was moved along recently: the run has nothing to send (on S3 even an
// empty batch costs an object and a manifest).
func (s *shipper) unchanged(st State) bool {
	if st.Acked == 0 {
		return false
	}
	last, err := s.o.Pool.LastChange(s.o.Volume)
	if err != nil || last > st.Acked {
		return false
	}
	idle := s.o.IdleAdvance
	if idle <= 0 {
		idle = DefaultIdleAdvance
		if _, ok := s.o.Target.(*S3); ok {
			idle = S3IdleAdvance
		}
	}
	return time.Since(time.Unix(0, st.AckedTime)) < idle
}

type shipper struct {
	o       ShipOptions
	ctx     context.Context
	res     Result
	counter Counter
	raw0    int64
	stored0 int64
	pace    time.Time // when the bytes sent so far may have left, at BWLimit
	b       *Batch
	target  State // what the target said it holds when opened
	cur     *cow.Cursor
	// tap, a follower's once caught up, hands it the volume's changes
	// from memory (cow.Tap); nil: they are read from the journal.
	tap *cow.Tap
	// acks (a follower's, see startAcker) holds the batches in flight for
	// the acker, which takes their acks as they come instead of when the
	// pipeline is full or the run ends; ackDone closes when it ends, with
	// ackErr.
	acks    chan sent
	ackRoom chan struct{}
	ackDone chan struct{}
	ackErr  error
	// follow: batches go NoSync except the last of a step whose syncLast
	// is set (a follower, once caught up).
	follow, syncLast bool
	// onAck, when set, hears when each acknowledged batch was sent.
	onAck    func(sent time.Time)
	pos      uint64 // where the stream stands: the last whole batch sent ends here
	scanFrom uint64 // the volume has no records from the target's point up to here
	// read is the reading side's progress (phase, records read, full):
	// each batch carries a copy to the sender, which reports it.
	read Progress

	// The sender: a goroutine that encodes and sends the batches the
	// reading side queues (send), so that reading the next batch from the
	// journal overlaps encoding and sending this one. It owns res (until
	// it is done), inflight, pace and the target's calls after Open.
	queue      chan queued
	senderDone chan struct{}
	senderErr  error  // set before senderDone closes
	inflight   []sent // batches sent to a Pipeliner, not yet acknowledged
}

// queued is a batch on its way to the sender, with the reading side's
// progress when it was made.
type queued struct {
	b    *Batch
	read Progress
}

func (s *shipper) count() {
	if s.counter != nil {
		raw, stored := s.counter.Counters()
		s.res.RawBytes, s.res.StoredBytes = raw-s.raw0, stored-s.stored0
	}
}

func (s *shipper) run(st State, info cow.VolumeInfo) error {
	p := s.o.Pool
	acked := st.Acked
	if st.DiffTo > acked && st.DiffTo <= s.o.Upto {
		ok, err := s.resume(st)
		if err != nil {
			return err
		}
		if ok {
			if st.DiffTo == s.o.Upto {
				return nil
			}
			acked = st.DiffTo
		}
	}
	if acked == 0 || acked < info.ID {
		// The first run copies the volume at its oldest snapshot, then
		// ships the records since, so the replica gets every snapshot
		// and point in between; if the journal no longer holds them, the
		// fallback below copies the difference up to Upto instead.
		base, snaps := s.o.Upto, []cow.Snapshot(nil)
		all, _ := p.Snapshots(s.o.Volume)
		if len(all) > 0 && all[0].Seq < base {
			base = all[0].Seq
		}
		for _, sn := range all {
			if sn.Seq == base {
				snaps = append(snaps, sn)
			}
		}
		if err := s.diff(0, base, "full copy", 0, snaps...); err != nil || base == s.o.Upto {
			return err
		}
		acked = base
	}
	err := s.incremental(acked)
	if !errors.Is(err, cow.ErrHistoryGone) {
		return err
	}
	s.o.Logger.Info("replication: the journal no longer holds every record to ship; copying the difference", "volume", s.o.Volume, "target", s.o.Target.String(), "reason", err)
	from := s.pos
	if _, perr := p.ResolvePoint(s.o.Volume, fmt.Sprintf("seq:%d", from)); perr != nil {
		from = 0 // that point is gone too: copy everything
	}
	phase := "difference"
	if from == 0 {
		phase = "full copy"
	}
	return s.diff(from, s.o.Upto, phase, 0)
}

// resume finishes a diff the target holds in part (up to byte DiffNext of
// the diff to DiffTo), sending only the rest. It says false, having sent
// nothing, when the source can no longer read point DiffTo; the target
// then drops the parts it keeps when the run sends something else.
func (s *shipper) resume(st State) (bool, error) {
	p := s.o.Pool
	h, err := p.OpenVolumeSeq(s.o.Volume, st.DiffTo)
	if err != nil {
		s.o.Logger.Info("replication: the target holds part of a diff whose end point is gone here; starting over", "volume", s.o.Volume, "target", s.o.Target.String(), "diff_to", st.DiffTo, "reason", err)
		return false, nil
	}
	h.Close()
	// Blocks past DiffNext that did not change after Acked already read
	// as at DiffTo on the target: only changed ones need to travel.
	from := st.Acked
	if _, err := p.ResolvePoint(s.o.Volume, fmt.Sprintf("seq:%d", from)); from == 0 || err != nil {
		from = 0
	}
	var snaps []cow.Snapshot
	all, _ := p.Snapshots(s.o.Volume)
	for _, sn := range all {
		if sn.Seq == st.DiffTo {
			snaps = append(snaps, sn)
		}
	}
	s.o.Logger.Info("replication: resuming an interrupted diff", "volume", s.o.Volume, "target", s.o.Target.String(), "diff_to", st.DiffTo, "at_byte", st.DiffNext)
	s.res.Resumed = st.DiffNext // before the first send: the sender does not touch it
	phase := "difference"
	if from == 0 {
		phase = "full copy"
	}
	return true, s.diff(from, st.DiffTo, phase, st.DiffNext, snaps...)
}

// pipelineDepth is how many batches a shipper keeps in flight to a
// target that takes them so: the next is read, compressed and sent while
// the target applies the previous one.
const pipelineDepth = 2

// sent is a batch in flight.
type sent struct {
	to      uint64
	partial bool
	data    int64
	read    Progress // the reading side's, when the batch was made
	at      time.Time
}

// opBufs recycles the data buffers of write ops (a diff's reads, journal
// records, a follower's tap), by capacity: 4 KiB, 8 KiB, ... 8 MiB
// (maxOpData). A fresh 8 MiB buffer is zeroed by the runtime first, which
// cost a tenth of a first copy's CPU; a mirror primary's 4 KiB writes
// spent 7% of its CPU allocating their copies for the stream.
var opBufs [opBufClasses]sync.Pool

const (
	minOpBuf     = 4 << 10
	opBufClasses = 12 // minOpBuf << 11 == maxOpData
)

// opBufClass is the pool of buffers of capacity c (-1: none), or for n
// bytes the smallest that holds them.
func opBufClass(c uint64) int {
	for i := range opBufs {
		if c <= minOpBuf<<i {
			return i
		}
	}
	return -1
}

// getOpBuf returns a buffer of n bytes for a write op's data, recycled
// when one of its size class is free.
func getOpBuf(n uint64) []byte {
	k := opBufClass(n)
	if n < minOpBuf || k < 0 {
		return make([]byte, n)
	}
	if p, ok := opBufs[k].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, minOpBuf<<k)
}

// putOpBufs recycles b's op buffers from getOpBuf.
func putOpBufs(b *Batch) {
	for i := range b.Ops {
		d := b.Ops[i].Data
		if k := opBufClass(uint64(cap(d))); k >= 0 && uint64(cap(d)) == minOpBuf<<k {
			d = d[:0]
			opBufs[k].Put(&d)
			b.Ops[i].Data = nil
		}
	}
}

// sentBatches keeps the batches sent, with their op slices, for the next
// ones: a follower's batch of a few 4 KiB writes had spent most of the
// time it took to build on growing its op slice from nothing (7% of a
// mirror primary's CPU).
var sentBatches = sync.Pool{New: func() any { return new(Batch) }}

// maxRecycledOps: a batch with room for more ops than this (a first
// copy's) is left to the garbage collector.
const maxRecycledOps = 1024

// newBatch returns an empty batch starting at source point from, of a
// volume of size bytes, with a recycled op slice when one is free.
func newBatch(from uint64, size int64) *Batch {
	b := sentBatches.Get().(*Batch)
	b.From, b.Size = from, size
	return b
}

// recycleBatch keeps b (nil: nothing) for newBatch once nothing uses it
// or its ops (their data is the caller's to recycle).
func recycleBatch(b *Batch) {
	if b == nil || b.buf != nil || cap(b.Ops) > maxRecycledOps {
		return
	}
	clear(b.Ops) // no references kept; beyond len the slice is zero already
	*b = Batch{Ops: b.Ops[:0]}
	sentBatches.Put(b)
}

// senderQueue is how many batches the reading side may have made ahead of
// the one the sender works on: one more batch of memory (BatchBytes) buys
// the overlap.
const senderQueue = 1

// send hands a batch to the sender (started on first use). It returns at
// once unless the sender is senderQueue batches behind, or with the
// sender's error once it failed.
func (s *shipper) send(b *Batch) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if !b.Partial {
		s.pos = b.To
	}
	if s.follow {
		// A follower's batches are applied and acknowledged at once;
		// only the one a flush asked for is made durable first.
		b.NoSync = !b.Diff && !(s.syncLast && b.To == s.o.Upto)
	}
	if s.queue == nil {
		s.queue = make(chan queued, senderQueue)
		s.senderDone = make(chan struct{})
		go s.sender()
	}
	select {
	case s.queue <- queued{b: b, read: s.read}:
		return nil
	case <-s.senderDone:
		return s.senderErr
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// sender delivers queued batches until the queue closes or one fails.
func (s *shipper) sender() {
	defer close(s.senderDone)
	for q := range s.queue {
		if err := s.deliver(q); err != nil {
			s.senderErr = err
			return
		}
	}
}

// followDepth is how many batches a follower keeps in flight: its acks
// are taken by their own goroutine (acker), so the next batch goes out
// while earlier ones are applied.
const followDepth = 3

// startAcker makes a follower's acks be taken as they come, by their own
// goroutine, with followDepth batches in flight (before any send).
func (s *shipper) startAcker() {
	pl, ok := s.o.Target.(Pipeliner)
	if !ok {
		return
	}
	s.acks = make(chan sent, followDepth)
	s.ackRoom = make(chan struct{}, followDepth)
	s.ackDone = make(chan struct{})
	go s.acker(pl)
}

// acker takes the acks of the batches the sender submitted, in order, as
// they come.
func (s *shipper) acker(pl Pipeliner) {
	defer close(s.ackDone)
	for f := range s.acks {
		if err := pl.Wait(s.ctx); err != nil {
			s.ackErr = fmt.Errorf("%s: %w", s.o.Target, err)
			return
		}
		<-s.ackRoom
		if err := s.acked(f); err != nil {
			s.ackErr = err
			return
		}
	}
}

// deliver ships a batch. To a Pipeliner it returns once the batch is on
// its way and at most pipelineDepth-1 earlier ones wait for their acks;
// otherwise once the target has made it durable.
func (s *shipper) deliver(q queued) error {
	b := q.b
	if err := s.ctx.Err(); err != nil {
		return err
	}
	f := sent{to: b.To, partial: b.Partial, data: b.DataBytes(), read: q.read, at: time.Now()}
	// Once submitted (encoded) or sent, the batch and its data are not
	// used again (Target's contract).
	defer func() {
		putOpBufs(b)
		recycleBatch(b)
	}()
	pl, ok := s.o.Target.(Pipeliner)
	if !ok {
		if err := s.o.Target.Send(s.ctx, b); err != nil {
			return fmt.Errorf("%s: %w", s.o.Target, err)
		}
		return s.acked(f)
	}
	if s.acks != nil {
		select {
		case s.ackRoom <- struct{}{}:
		case <-s.ackDone:
			return s.ackErr
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		if err := pl.Submit(s.ctx, b); err != nil {
			return fmt.Errorf("%s: %w", s.o.Target, err)
		}
		s.acks <- f // never blocks: ackRoom bounds what is in it
		return nil
	}
	if err := pl.Submit(s.ctx, b); err != nil {
		// The target may have stopped on an earlier batch and said why.
		if derr := s.drainInflight(); derr != nil {
			return derr
		}
		return fmt.Errorf("%s: %w", s.o.Target, err)
	}
	s.inflight = append(s.inflight, f)
	for len(s.inflight) >= pipelineDepth {
		if err := s.wait(pl); err != nil {
			return err
		}
	}
	return nil
}

// drain stops the sender once it has delivered what was queued, and waits
// for every batch in flight; then the reading side's progress is the
// run's. Its error is the sender's, or a batch's in flight.
func (s *shipper) drain() error {
	var err error
	if s.queue != nil {
		close(s.queue)
		<-s.senderDone
		err = s.senderErr
		s.queue = nil
	}
	if s.acks != nil {
		close(s.acks)
		<-s.ackDone
		if err == nil {
			err = s.ackErr
		}
		s.acks = nil
	}
	if derr := s.drainInflight(); err == nil {
		err = derr
	}
	s.res.Phase, s.res.Records, s.res.Full = s.read.Phase, s.read.Records, s.read.Full
	return err
}

// drainInflight waits for every batch in flight.
func (s *shipper) drainInflight() error {
	pl, ok := s.o.Target.(Pipeliner)
	for ok && len(s.inflight) > 0 {
		if err := s.wait(pl); err != nil {
			s.inflight = nil
			return err
		}
	}
	return nil
}

func (s *shipper) wait(pl Pipeliner) error {
	f := s.inflight[0]
	s.inflight = s.inflight[1:]
	if err := pl.Wait(s.ctx); err != nil {
		return fmt.Errorf("%s: %w", s.o.Target, err)
	}
	return s.acked(f)
}

// acked counts a batch the target made durable.
func (s *shipper) acked(b sent) error {
	s.res.Phase, s.res.Records, s.res.Full = b.read.Phase, b.read.Records, b.read.Full
	s.res.Batches++
	s.res.DataBytes += b.data
	if s.onAck != nil {
		s.onAck(b.at)
	}
	if !b.partial {
		s.res.Acked = b.to
		if s.o.PinID != "" {
			if err := s.o.Pool.PinShipped(s.o.PinID, s.o.Volume, b.to); err != nil {
				return err
			}
		}
	}
	s.count()
	if s.o.BWLimit > 0 {
		sent := s.res.StoredBytes
		if s.counter == nil {
			sent = s.res.DataBytes
		}
		if s.pace.IsZero() {
			s.pace = time.Now()
		}
		due := s.pace.Add(time.Duration(float64(sent) / float64(s.o.BWLimit) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-s.ctx.Done():
				return s.ctx.Err()
			}
		}
	}
	if s.o.Progress != nil {
		s.o.Progress(s.res.Progress)
	}
	return nil
}

// incremental ships the journal's records after acked, in order.
func (s *shipper) incremental(acked uint64) error {
	p := s.o.Pool
	s.read.Phase = "records"
	size := int64(0)
	if info, err := p.VolumeInfo(s.o.Volume); err == nil {
		size = info.Size
	}
	s.b = newBatch(acked, size)
	var data int64
	flush := func(to uint64, t int64) error {
		b := s.b
		b.To, b.Time = to, t
		size := b.Size // b is the sender's once sent
		if err := s.send(b); err != nil {
			return err
		}
		s.b = newBatch(to, size)
		data = 0
		return nil
	}
	lastTime := int64(0)
	// Records between acked and scanFrom are other volumes'.
	// Each write's data is read into a buffer of its own that its op
	// keeps (no copy); the sender recycles it.
	alloc := func(n int) []byte { return getOpBuf(uint64(n)) }
	changes := func(after, upto uint64, fn func(c *cow.Change) error) error {
		if s.tap != nil {
			return s.tap.ChangesInto(s.ctx, after, upto, s.cur, fn)
		}
		return p.ChangesInto(s.ctx, s.o.Volume, after, upto, s.cur, alloc, fn)
	}
	err := changes(max(acked, min(s.scanFrom, s.o.Upto)), s.o.Upto, func(c *cow.Change) error {
		b := s.b
		switch c.Kind {
		case cdp.KindWrite:
			for off := 0; off < len(c.Data); off += maxOpData {
				end := min(off+maxOpData, len(c.Data))
				d := c.Data[off:end]
				var sums []byte
				if len(c.Sums) == sumsLen(len(c.Data)) && off%cdp.BlockSize == 0 {
					// Checked against the data when it was read.
					sums = c.Sums[sumsLen(off):sumsLen(end):sumsLen(end)]
				}
				b.Ops = append(b.Ops, Op{Kind: OpWrite, Seq: c.Seq, Time: c.Time, Offset: c.Offset + uint64(off), Length: uint64(len(d)), Data: d, Sums: sums})
			}
			data += int64(len(c.Data))
		case cdp.KindZero:
			b.Ops = append(b.Ops, Op{Kind: OpZero, Seq: c.Seq, Time: c.Time, Offset: c.Offset, Length: c.Length, NoHole: c.NoHole})
		case cdp.KindTrim:
			b.Ops = append(b.Ops, Op{Kind: OpTrim, Seq: c.Seq, Time: c.Time, Offset: c.Offset, Length: c.Length})
		case cdp.KindVolumeResize:
			b.Ops = append(b.Ops, Op{Kind: OpResize, Seq: c.Seq, Time: c.Time, Length: c.Length})
			b.Size = int64(c.Length)
		case cdp.KindSnapshotCreate:
			b.Ops = append(b.Ops, Op{Kind: OpSnapshot, Seq: c.Seq, Time: c.Time, Name: c.Name, Label: c.Label, Scheduled: c.Scheduled, AppConsistent: c.AppConsistent})
		case cdp.KindSnapshotDelete:
			// Not mirrored: the replica keeps its own history.
			return nil
		case cdp.KindVolumeRollback:
			// The head becomes an earlier point: ship what differs, as
			// a batch consistent at its end. The replica keeps every
			// point it had.
			if len(b.Ops) > 0 || b.From < c.Seq-1 {
				if err := flush(c.Seq-1, lastTime); err != nil {
					return err
				}
			}
			if err := s.diff(c.Seq-1, c.Seq, "rollback", 0); err != nil {
				return err
			}
			s.b = newBatch(c.Seq, int64(c.Length))
			s.read.Phase = "records"
			lastTime = c.Time
			s.read.Records++
			return nil
		default:
			return nil
		}
		b.Ops = append(b.Ops, Op{Kind: OpPoint, Seq: c.Seq, Time: c.Time})
		s.read.Records++
		lastTime = c.Time
		if data >= s.o.BatchBytes {
			return flush(c.Seq, c.Time)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if lastTime == 0 {
		lastTime = time.Now().UnixNano()
	}
	err = flush(s.o.Upto, lastTime)
	// Unused: the empty batch flush began (or, after an error, the one it
	// could not queue).
	recycleBatch(s.b)
	s.b = nil
	return err
}

// diff ships the difference between points from and to (from 0: every
// block) as a diff batch, in parts of at most BatchBytes.
func (s *shipper) diff(from, to uint64, phase string, skip uint64, snaps ...cow.Snapshot) error {
	p := s.o.Pool
	s.read.Phase = phase
	s.read.Full = s.read.Full || from == 0
	h, err := p.OpenVolumeSeq(s.o.Volume, to)
	if err != nil {
		return err
	}
	defer h.Close()
	size := h.Size()
	now := time.Now().UnixNano()
	if pt := h.Point(); pt != nil && !pt.Time.IsZero() {
		now = pt.Time.UnixNano()
	}
	base := s.pos
	b := &Batch{From: base, To: to, Diff: true, Partial: true, Size: size, Time: now}
	b.Ops = append(b.Ops, Op{Kind: OpResize, Seq: to, Time: now, Length: uint64(size)})
	var data int64
	err = p.Diff(s.ctx, s.o.Volume, from, to, func(first, n uint64, kind cow.ExtentKind) error {
		off, length := first*cdp.BlockSize, n*cdp.BlockSize
		if off+length <= skip {
			return nil // the target has it (a resumed diff)
		}
		if off < skip {
			off, length = skip, off+length-skip
		}
		switch kind {
		case cow.ExtentHole:
			b.Ops = append(b.Ops, Op{Kind: OpTrim, Seq: to, Time: now, Offset: off, Length: length})
			return nil
		case cow.ExtentZero:
			b.Ops = append(b.Ops, Op{Kind: OpZero, Seq: to, Time: now, Offset: off, Length: length, NoHole: true})
			return nil
		}
		for done := uint64(0); done < length; {
			chunk := min(length-done, maxOpData, max(uint64(s.o.BatchBytes)/cdp.BlockSize, 1)*cdp.BlockSize)
			d := getOpBuf(chunk)
			// The blocks' checksums come from the index with the data,
			// so the frame needs no pass over the data to make them,
			// and the target checks what was read from memory too.
			var sums []byte
			var err error
			if (off+done)%cdp.BlockSize == 0 && chunk%cdp.BlockSize == 0 {
				sums = make([]byte, sumsLen(int(chunk)))
				err = h.ReadBlocksSums(d, int64(off+done), sums)
			} else {
				_, err = h.ReadAt(d, int64(off+done))
			}
			if err != nil {
				return fmt.Errorf("read %s@seq:%d: %w", s.o.Volume, to, err)
			}
			b.Ops = append(b.Ops, Op{Kind: OpWrite, Seq: to, Time: now, Offset: off + done, Length: chunk, Data: d, Sums: sums})
			done += chunk
			data += int64(chunk)
			if data >= s.o.BatchBytes {
				if err := s.send(b); err != nil {
					return err
				}
				b = &Batch{From: base, To: to, Diff: true, Partial: true, Size: size, Time: now}
				data = 0
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.Partial = false
	for _, sn := range snaps {
		b.Ops = append(b.Ops, Op{Kind: OpSnapshot, Seq: to, Time: sn.Time.UnixNano(), Name: sn.Name, Label: sn.Label, Scheduled: sn.Scheduled, AppConsistent: sn.AppConsistent})
	}
	b.Ops = append(b.Ops, Op{Kind: OpPoint, Seq: to, Time: now})
	return s.send(b)
}
