package cow

import (
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cdp"
)

// Group commit of whole-block writes.
//
// Writers that arrive while another one holds the write lock queue up; the
// first in the queue (the leader) takes the queue, journals each record
// and indexes all of them in one index batch: one commit, one "applied"
// key and one metadata key per volume for the group instead of one each
// per write. The leader then wakes the writers of its group and hands
// leadership to the first writer that queued meanwhile. A writer that
// finds nobody leading (queue depth 1) leads a group of one at once: the
// same path as before, plus one uncontended lock.

// groupWrite is one writer's record on its way through a group.
type groupWrite struct {
	r        cdp.Record
	v        *volState
	loc      cdp.Location
	err      error
	appended bool
	lead     bool          // woken to lead, not because its write is done
	wake     chan struct{} // one signal per wait
}

// testHookGroup, when set, sees the size of each group.
var testHookGroup func(n int)

var groupWrites = sync.Pool{New: func() any { return &groupWrite{wake: make(chan struct{}, 1)} }}

// writeQueue holds the writers waiting for the current group to finish.
// Invariant: leading is false only when q is empty.
type writeQueue struct {
	mu      sync.Mutex
	q       []*groupWrite
	leading bool
}

// A group is at most this many records or bytes of data: a leader's own
// write waits for its whole group.
const (
	maxGroupRecords = 64
	maxGroupBytes   = 8 << 20
)

// takeLocked moves the group at the front of the queue into dst.
func (q *writeQueue) takeLocked(dst []*groupWrite) []*groupWrite {
	n, size := 0, 0
	for n < len(q.q) && n < maxGroupRecords && (n == 0 || size+len(q.q[n].r.Data) <= maxGroupBytes) {
		size += len(q.q[n].r.Data)
		n++
	}
	dst = append(dst, q.q[:n]...)
	rest := copy(q.q, q.q[n:])
	clear(q.q[rest:])
	q.q = q.q[:rest]
	return dst
}

// groupAppend journals and indexes r, a write of whole blocks to v, in a
// group with the writes that queue meanwhile, and returns its sequence
// number.
func (p *Pool) groupAppend(v *volState, r cdp.Record) (uint64, error) {
	w := groupWrites.Get().(*groupWrite)
	w.r, w.v = r, v
	defer func() {
		*w = groupWrite{wake: w.wake}
		groupWrites.Put(w)
	}()
	q := &p.wq
	q.mu.Lock()
	q.q = append(q.q, w)
	if q.leading {
		q.mu.Unlock()
		<-w.wake
		if !w.lead {
			return w.r.Seq, w.err
		}
		q.mu.Lock() // w leads now: it is at the front of the queue
	}
	q.leading = true
	var buf [maxGroupRecords]*groupWrite
	group := q.takeLocked(buf[:0])
	q.mu.Unlock()

	panicked := p.runGroupSafe(group)

	q.mu.Lock()
	if len(q.q) > 0 {
		next := q.q[0]
		next.lead = true
		next.wake <- struct{}{}
	} else {
		q.leading = false
	}
	q.mu.Unlock()
	for _, g := range group {
		if g != w {
			g.wake <- struct{}{}
		}
	}
	if panicked != nil {
		panic(panicked)
	}
	return w.r.Seq, w.err
}

// runGroupSafe is runGroup that, if it panics (a bug), fails the group's
// writes and returns the panic for the leader to raise once it has woken
// them and passed leadership on, so that the writers queued behind it do
// not wait forever.
func (p *Pool) runGroupSafe(ws []*groupWrite) (panicked any) {
	defer func() {
		if r := recover(); r != nil {
			for _, w := range ws {
				if w.err == nil {
					w.err = fmt.Errorf("%w: write failed: %v", blockdev.ErrIO, r)
				}
			}
			panicked = r
		}
	}()
	p.runGroup(ws)
	return nil
}

// runGroup journals and indexes the group's records, setting each one's
// err.
func (p *Pool) runGroup(ws []*groupWrite) {
	if testHookGroup != nil {
		testHookGroup(len(ws))
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if len(ws) == 1 {
		w := ws[0]
		if w.err = p.writableLocked(w.v); w.err == nil {
			w.err = p.appendLocked(&w.r)
		}
		return
	}
	j := p.j.Load()
	n := 0
	for _, w := range ws {
		if w.err = p.writableLocked(w.v); w.err != nil {
			continue
		}
		loc, err := j.Append(&w.r)
		if err != nil {
			w.err = classify(err)
			continue
		}
		w.loc, w.appended = loc, true
		n++
	}
	if n == 0 {
		return
	}
	if err := p.applyGroupLocked(ws); err != nil {
		// As appendLocked: journaled, not indexed; recovery re-applies.
		err = fmt.Errorf("%w: %v", blockdev.ErrIO, p.failLocked(err))
		for _, w := range ws {
			if w.appended {
				w.err = err
			}
		}
		return
	}
	if testHookAppended != nil {
		for _, w := range ws {
			if w.appended {
				testHookAppended(&w.r)
			}
		}
	}
}

// writableLocked says whether a write record for v may be journaled now.
func (p *Pool) writableLocked(v *volState) error {
	if p.wmu.closed {
		return fmt.Errorf("%w: %v", blockdev.ErrGone, ErrClosed)
	}
	if v.gone.Load() || p.volumeByIDLocked(v.id) == nil {
		return fmt.Errorf("%w: volume %q was deleted", blockdev.ErrGone, v.name)
	}
	return nil
}

// applyGroupLocked indexes the appended records of ws in one batch. wmu
// is held.
func (p *Pool) applyGroupLocked(ws []*groupWrite) error {
	a := &p.wmu.apply
	a.b = p.db.NewBatch()
	if a.group == nil {
		a.group = make(map[[2]uint64]struct{})
	}
	defer func() {
		a.b.Close()
		a.b = nil
		clear(a.group)
		a.grouping = false
	}()
	a.grouping = true
	var last uint64
	for _, w := range ws {
		if !w.appended {
			continue
		}
		if err := a.record(&w.r, w.loc); err != nil {
			return err
		}
		if err := p.markTimeLocked(a.b, &w.r, w.loc); err != nil {
			return err
		}
		last = w.r.Seq
	}
	if err := a.finish(last); err != nil {
		return err
	}
	if err := a.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("cow: index commit: %w", err)
	}
	for _, w := range ws {
		if w.appended {
			a.updateHead(&w.r, w.loc)
		}
	}
	p.wmu.applied = last
	return nil
}

// BlockWrite is one write of WriteBatch.
type BlockWrite = blockdev.BlockWrite

// WriteBatch writes each of ws as its own record, in order, journaled and
// indexed in groups (one index commit per group, not per write):
// blockdev.BatchWriter, for writes a client sent back to back and for a
// replica applying a batch of its source's writes. Writes that are not
// whole blocks, or larger than a record, go through WriteAt. It stops at
// the first error.
func (h *Volume) WriteBatch(ws []BlockWrite) error {
	_, err := h.WriteBatchSeq(ws)
	return err
}

// batchScratch is WriteBatchSeq's room for one group of records: reused,
// since its arrays (about 13 KiB, with pointers) allocated for every
// batch cost a sixth of a mirror secondary's CPU (zeroing and GC), and
// the primary's batches paid alike.
type batchScratch struct {
	group [maxGroupRecords]*groupWrite
	recs  [maxGroupRecords]groupWrite
	used  int // recs that may hold references
}

var batchPool = sync.Pool{New: func() any { return new(batchScratch) }}

// put drops the references the group held (callers' buffers) and returns
// sc to the pool: runGroup is done with every record by then.
func (sc *batchScratch) put() {
	clear(sc.recs[:sc.used])
	clear(sc.group[:])
	sc.used = 0
	batchPool.Put(sc)
}

// WriteBatchSeq is WriteBatch that also returns the sequence number of the
// last record written (see WriteAtSeq).
func (h *Volume) WriteBatchSeq(ws []BlockWrite) (uint64, error) {
	sc := batchPool.Get().(*batchScratch)
	defer sc.put()
	recs := &sc.recs
	group, size := sc.group[:0], 0
	var seq uint64
	run := func() error {
		if len(group) == 0 {
			return nil
		}
		h.p.runGroup(group)
		for _, w := range group {
			if w.err != nil {
				return w.err
			}
			seq = w.r.Seq
		}
		group, size = group[:0], 0
		return nil
	}
	for _, w := range ws {
		n := len(w.Data)
		if n == 0 || w.Off%bs != 0 || n%bs != 0 || n > maxChunk {
			if err := run(); err != nil {
				return seq, err
			}
			_, s, err := h.WriteAtSeq(w.Data, w.Off)
			if err != nil {
				return seq, err
			}
			if s != 0 {
				seq = s
			}
			continue
		}
		if err := h.checkWrite(w.Off, int64(n)); err != nil {
			return seq, err
		}
		if len(group) == maxGroupRecords || size+n > maxGroupBytes {
			if err := run(); err != nil {
				return seq, err
			}
		}
		sums := w.Sums
		if len(sums) != 4*n/bs {
			sums = cdp.BlockChecksums(w.Data)
		}
		g := &recs[len(group)]
		sc.used = max(sc.used, len(group)+1)
		*g = groupWrite{v: h.v, r: cdp.Record{Kind: cdp.KindWrite, Volume: h.v.id, Offset: uint64(w.Off), Length: uint64(n), Data: w.Data, Meta: sums}}
		group = append(group, g)
		size += n
	}
	err := run()
	return seq, err
}
