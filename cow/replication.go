package cow

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cdp"
)

// What replication (package replica) needs from a pool: the pool's
// identity, a volume's journaled changes past a point, the difference
// between two points, a replica's state, and pins that keep unshipped
// records from garbage collection.

// ErrHistoryGone: the journal no longer holds every record asked for
// (garbage collection removed or relocated some); a shipper falls back to
// a copy by difference.
var ErrHistoryGone = errors.New("cow: journal history is gone")

// poolIDKey holds the pool's identity: random, made when the pool is.
var poolIDKey = []byte("mpoolid")

// prefixShipPin: 'r' id -> vol(8) seq(8): a replication target's
// acknowledged point; the volume's records after it stay in the journal.
const prefixShipPin = 'r'

func (p *Pool) loadID() error {
	v, closer, err := p.db.Get(poolIDKey)
	if err == nil {
		p.id = string(v)
		closer.Close()
		return nil
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("cow: read pool id: %w", err)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("cow: make pool id: %w", err)
	}
	p.id = hex.EncodeToString(b[:])
	if err := p.db.Set(poolIDKey, []byte(p.id), pebble.NoSync); err != nil {
		return fmt.Errorf("cow: save pool id: %w", err)
	}
	// The index has no WAL: persist it now, not at the next checkpoint.
	return p.db.Flush()
}

// ID is the pool's identity, which replicas use to tell sources apart.
func (p *Pool) ID() string { return p.id }

// Change is one journaled change of a volume.
type Change struct {
	Seq    uint64
	Time   int64 // Unix nanoseconds
	Kind   cdp.Kind
	Offset uint64 // zero, trim, write: bytes; rollback: the target point
	Length uint64 // zero, trim: bytes; resize, rollback: the new size
	NoHole bool
	// Data of a write, checked against its block checksums (Sums, the
	// record's table: cdp.BlockChecksums). Valid only until the callback
	// returns.
	Data  []byte
	Sums  []byte
	Name  string // snapshot create and delete
	Label string
	// Snapshot creates: what the snapshot records besides its name.
	Scheduled, AppConsistent bool
}

// DataChange reports whether the change alters the volume's content or
// size (rather than naming a point).
func (c *Change) DataChange() bool {
	switch c.Kind {
	case cdp.KindWrite, cdp.KindZero, cdp.KindTrim, cdp.KindVolumeResize, cdp.KindVolumeRollback:
		return true
	}
	return false
}

// Changes calls fn, in order, with every change of volume vol whose
// sequence number is in (after, upto]: writes (with their data), zeroes,
// trims, resizes, rollbacks and snapshots. Volume settings are local and
// not reported. It fails with ErrHistoryGone when the journal no longer
// holds all of them.
func (p *Pool) Changes(ctx context.Context, vol string, after, upto uint64, fn func(c *Change) error) error {
	return p.changes(ctx, vol, after, upto, true, nil, nil, fn)
}

// A Cursor remembers where in the journal a reader of Changes stopped, so
// that the next call starts there instead of at the start of a segment: a
// follower that asks for a few records at a time (a synchronous mirror)
// reads only those. The zero Cursor knows nothing.
type Cursor struct {
	after uint64       // the point the location follows
	loc   cdp.Location // where the record after it starts
}

// ChangesFrom is Changes that starts where cur says the previous call
// stopped, when that call ended at after, and leaves cur where this one
// stops.
func (p *Pool) ChangesFrom(ctx context.Context, vol string, after, upto uint64, cur *Cursor, fn func(c *Change) error) error {
	return p.changes(ctx, vol, after, upto, true, cur, nil, fn)
}

// ChangesInto is ChangesFrom reading each write's data into a buffer of
// its length from alloc, which fn may keep (its Sums too), instead of
// copying it.
func (p *Pool) ChangesInto(ctx context.Context, vol string, after, upto uint64, cur *Cursor, alloc func(n int) []byte, fn func(c *Change) error) error {
	return p.changes(ctx, vol, after, upto, true, cur, alloc, fn)
}

// Pending sums volume vol's changes after point seq: how many, the data
// bytes they write, and when the oldest was made (zero if none). It reads
// record headers only.
func (p *Pool) Pending(ctx context.Context, vol string, seq uint64) (n, bytes int64, oldest time.Time, err error) {
	err = p.changes(ctx, vol, seq, p.AppliedSeq(), false, nil, nil, func(c *Change) error {
		if !c.DataChange() {
			return nil
		}
		if n == 0 {
			oldest = time.Unix(0, c.Time)
		}
		n++
		if c.Kind == cdp.KindWrite {
			bytes += int64(c.Length)
		}
		return nil
	})
	return n, bytes, oldest, err
}

func (p *Pool) changes(ctx context.Context, vol string, after, upto uint64, withData bool, cur *Cursor, alloc func(int) []byte, fn func(c *Change) error) error {
	v := p.lookup(vol)
	if v == nil {
		return notFound(vol)
	}
	if upto <= after {
		return nil
	}
	unlock, err := p.readLock()
	if err != nil {
		return err
	}
	defer unlock()
	j := p.j.Load()
	segs := j.Segments()
	start := -1
	for i, s := range segs {
		if s.ID <= after+1 {
			start = i
		}
	}
	if start < 0 {
		return fmt.Errorf("%w: volume %q: records after seq %d were removed (the journal starts at seq %d)", ErrHistoryGone, vol, after, segs[0].ID)
	}
	next := segs[start].ID
	from := cdp.Location{Segment: segs[start].ID}
	if cur != nil && cur.after == after && cur.loc.Segment != 0 {
		for _, s := range segs[start:] {
			if s.ID == cur.loc.Segment {
				from, next = cur.loc, after+1
				break
			}
		}
	}
	var data []byte
	var ferr error
	err = j.ScanNext(from, func(r *cdp.Record, loc, nextLoc cdp.Location) bool {
		if cur != nil && r.Seq <= upto {
			// Past this record (set before it is handled: a record fn
			// fails on is read again by the next call only if the cursor
			// is reset, which an error does below).
			cur.after, cur.loc = r.Seq, nextLoc
		}
		if r.Seq != next {
			ferr = fmt.Errorf("%w: volume %q: the journal jumps from seq %d to %d", ErrHistoryGone, vol, next-1, r.Seq)
			return false
		}
		next++
		if r.Seq <= after {
			return true
		}
		if r.Seq > upto {
			return false
		}
		if err := ctx.Err(); err != nil {
			ferr = err
			return false
		}
		if r.Kind == cdp.KindRelocate {
			for i := 0; i < len(r.Meta)/cdp.RelocateEntrySize; i++ {
				if e := cdp.RelocateEntryAt(r.Meta, i); e.Volume == v.id && e.Seq > after && e.Seq <= upto {
					ferr = fmt.Errorf("%w: volume %q: record %d was moved by garbage collection", ErrHistoryGone, vol, e.Seq)
					return false
				}
			}
			return true
		}
		if r.Volume != v.id {
			return true
		}
		c, report, err := changeOf(r, vol)
		if err != nil {
			ferr = err
			return false
		}
		if !report {
			return true
		}
		if r.Kind == cdp.KindWrite && withData {
			if alloc != nil {
				c.Data = alloc(int(r.Length))
			} else {
				if cap(data) < int(r.Length) {
					data = make([]byte, r.Length)
				}
				c.Data = data[:r.Length]
			}
			if err := j.ReadAt(loc.Segment, loc.DataOffset(len(r.Meta)), c.Data); err != nil {
				ferr = fmt.Errorf("cow: read record %d: %w", r.Seq, err)
				return false
			}
			for i := 0; i < len(c.Data)/cdp.BlockSize; i++ {
				if cdp.Checksum(c.Data[i*cdp.BlockSize:(i+1)*cdp.BlockSize]) != cdp.BlockChecksum(r.Meta, i) {
					at := loc.DataOffset(len(r.Meta)) + int64(i)*cdp.BlockSize
					if p.versionMoved(v.id, r.Offset/cdp.BlockSize+uint64(i), r.Seq, loc.Segment, at) {
						// A scrub repaired it: the good copy is where
						// the index points, which a diff reads.
						ferr = fmt.Errorf("%w: volume %q: record %d block %d fails its checksum, and a scrub rewrote its good copy elsewhere", ErrHistoryGone, vol, r.Seq, i)
					} else {
						ferr = fmt.Errorf("%w: record %d block %d fails its checksum", cdp.ErrCorrupt, r.Seq, i)
					}
					return false
				}
			}
			c.Sums = r.Meta
			if alloc != nil {
				c.Sums = bytes.Clone(r.Meta)
			}
		}
		if err := fn(&c); err != nil {
			ferr = err
			return false
		}
		return true
	})
	if err == nil {
		err = ferr
	}
	if err != nil && cur != nil {
		*cur = Cursor{}
	}
	if err == nil && next <= upto && next <= j.LastSeq() {
		err = fmt.Errorf("%w: volume %q: the journal ends at seq %d", ErrHistoryGone, vol, next-1)
	}
	return err
}

// changeOf is the Change that record r of volume vol makes, without a
// write's data, and whether Changes reports it at all (volume creates,
// clones of it and settings it does not). A delete of the volume is an
// error: its changes end there.
func changeOf(r *cdp.Record, vol string) (c Change, report bool, err error) {
	switch r.Kind {
	case cdp.KindVolumeClone, cdp.KindVolumeConfig, cdp.KindVolumeCreate, cdp.KindRelocate:
		return Change{}, false, nil
	case cdp.KindVolumeDelete:
		return Change{}, false, fmt.Errorf("%w: volume %q was deleted at seq %d", blockdev.ErrGone, vol, r.Seq)
	}
	c = Change{Seq: r.Seq, Time: r.Time, Kind: r.Kind, Offset: r.Offset, Length: r.Length}
	switch r.Kind {
	case cdp.KindZero:
		c.NoHole = r.Flags&cdp.FlagNoHole != 0
	case cdp.KindSnapshotCreate:
		name, label, err := decodeSnapshotMeta(r.Meta)
		if err != nil {
			return Change{}, false, err
		}
		c.Name, c.Label = name, label
		c.Scheduled, c.AppConsistent = r.Flags&cdp.FlagSnapScheduled != 0, r.Flags&cdp.FlagSnapAppConsistent != 0
	case cdp.KindSnapshotDelete:
		c.Name = string(r.Meta)
	}
	return c, true, nil
}

// versionMoved reports whether the index points version seq of (vol,
// block) somewhere other than segment seg at off: a relocate record (a
// scrub's repair) rewrote it. The caller holds the read lock.
func (p *Pool) versionMoved(vol, block, seq, seg uint64, off int64) bool {
	e, found, err := getVersion(p.db, vol, block, seq)
	return err == nil && found && e.kind == entryData && (e.seg != seg || e.off != off)
}

// ChangedSince reports whether volume vol's content or size changed after
// point seq (snapshots do not count). When the journal no longer tells, it
// says yes.
func (p *Pool) ChangedSince(ctx context.Context, vol string, seq uint64) (bool, error) {
	changed := false
	errStop := errors.New("stop")
	err := p.Changes(ctx, vol, seq, p.AppliedSeq(), func(c *Change) error {
		if c.DataChange() {
			changed = true
			return errStop
		}
		return nil
	})
	switch {
	case errors.Is(err, errStop):
		return true, nil
	case errors.Is(err, ErrHistoryGone):
		return true, nil
	case err != nil:
		return false, err
	}
	return changed, nil
}

// LastChange is the sequence number of volume vol's newest record that
// Changes reports (at most: after the pool opens it is the pool's point
// then).
func (p *Pool) LastChange(vol string) (uint64, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(vol)
	if v == nil {
		return 0, notFound(vol)
	}
	return v.lastStreamed, nil
}

// AppliedSeq is the newest sequence number: the pool's current point.
func (p *Pool) AppliedSeq() uint64 {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.wmu.applied
}

// ExtentKind is what a run of blocks holds at a point.
type ExtentKind uint8

const (
	// ExtentData: blocks with data.
	ExtentData ExtentKind = 1
	// ExtentHole: blocks that read as zeros and take no space.
	ExtentHole ExtentKind = 2
	// ExtentZero: zeroed blocks that stay allocated.
	ExtentZero ExtentKind = 3
)

// diffChunk bounds the blocks one step of Diff holds in memory.
const diffChunk = 1 << 16

// Diff calls fn, in block order, with the runs of blocks of volume vol
// whose content at point to differs from point from, and what they hold at
// to. With from 0 every block of the volume counts as different: the runs
// cover the whole volume (a full copy). Both points must be retained (the
// caller pins them, or they are inside the retention window).
func (p *Pool) Diff(ctx context.Context, vol string, from, to uint64, fn func(first, n uint64, kind ExtentKind) error) error {
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return notFound(vol)
	}
	size := v.meta.sizeAt(to)
	p.pinLocked(v.id, to)
	if from > 0 {
		p.pinLocked(v.id, from)
	}
	p.wmu.Unlock()
	defer p.unpin(v.id, to)
	if from > 0 {
		defer p.unpin(v.id, from)
	}
	unlock, err := p.readLock()
	if err != nil {
		return err
	}
	defer unlock()
	blocks := uint64(size) / cdp.BlockSize
	type ver struct {
		b uint64
		e entry
	}
	var runFirst, runN uint64
	var runKind ExtentKind
	emit := func(b uint64, k ExtentKind) error {
		if runN > 0 && runKind == k && runFirst+runN == b {
			runN++
			return nil
		}
		if runN > 0 {
			if err := fn(runFirst, runN, runKind); err != nil {
				return err
			}
		}
		runFirst, runN, runKind = b, 1, k
		return nil
	}
	kindOf := func(e entry) ExtentKind {
		switch e.kind {
		case entryData:
			return ExtentData
		case entryZero:
			return ExtentZero
		}
		return ExtentHole
	}
	var at, was []ver
	for first := uint64(0); first < blocks; first += diffChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		last := min(first+diffChunk, blocks) - 1
		at, was = at[:0], was[:0]
		if err := p.resolve(p.db, v, first, last, to, func(b uint64, e entry) bool { at = append(at, ver{b, e}); return true }); err != nil {
			return err
		}
		if from > 0 {
			if err := p.resolve(p.db, v, first, last, from, func(b uint64, e entry) bool { was = append(was, ver{b, e}); return true }); err != nil {
				return err
			}
		}
		i, k := 0, 0
		for b := first; b <= last; b++ {
			var now, old entry
			if i < len(at) && at[i].b == b {
				now = at[i].e
				i++
			}
			if k < len(was) && was[k].b == b {
				old = was[k].e
				k++
			}
			if from > 0 {
				if now.kind == old.kind && now.seq == old.seq {
					continue
				}
				if now.kind == entryNone && old.kind == entryHole || now.kind == entryHole && old.kind == entryNone {
					continue // both read as zeros and take no space
				}
			} else if now.kind == entryNone && b > first && i == len(at) && runKind == ExtentHole && runFirst+runN == b {
				// The rest of the chunk is one hole: extend the run at once.
				runN += last - b + 1
				break
			}
			if err := emit(b, kindOf(now)); err != nil {
				return err
			}
		}
	}
	if runN > 0 {
		return fn(runFirst, runN, runKind)
	}
	return nil
}

// OpenVolumeSeq opens volume vol at point seq, read-only, without checking
// the retention window: for replication, which keeps its points itself.
func (p *Pool) OpenVolumeSeq(vol string, seq uint64) (*Volume, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(vol)
	if v == nil {
		return nil, notFound(vol)
	}
	if seq < v.id || seq > p.wmu.applied {
		return nil, fmt.Errorf("%w: %s@seq:%d is outside the volume's life", ErrPoint, vol, seq)
	}
	pt := Point{Volume: v.name, Spec: fmt.Sprintf("seq:%d", seq), Seq: seq, Time: p.timeOfSeq(seq), Size: v.meta.sizeAt(seq)}
	p.pinLocked(v.id, seq)
	v.handles.Add(1)
	return &Volume{p: p, v: v, seq: seq, readOnly: true, fixedSize: pt.Size, point: &pt}, nil
}

// OpenReplicaHead opens a volume's head for writing even when it is
// read-only: a replica, which only its receiver writes.
func (p *Pool) OpenReplicaHead(name string) (*Volume, error) {
	v := p.lookup(name)
	if v == nil {
		return nil, notFound(name)
	}
	v.handles.Add(1)
	v.rwHandles.Add(1)
	return &Volume{p: p, v: v, seq: Head}, nil
}

// ReplicaState links a replica to its source. It is kept in the replica's
// journal (a volume setting record) so it is exactly as durable as the
// data it describes.
type ReplicaState struct {
	SourcePool string `json:"source_pool"`
	SourceVol  uint64 `json:"source_vol"`
	SourceName string `json:"source_name,omitempty"`
	// Acked is the source point the replica holds; Local is the replica's
	// own point that reads as it (the sequence number of the record that
	// stored this state, unless set).
	Acked uint64 `json:"acked"`
	Local uint64 `json:"local,omitempty"`
	// AckedTime is when the source wrote point Acked (Unix nanoseconds).
	AckedTime int64 `json:"acked_time,omitempty"`
	// Diff: a batch consistent only at its end is being applied after
	// Local: the head is not a source point until it completes.
	Diff bool `json:"diff,omitempty"`
	// DiffTo and DiffNext: the diff being applied ends at source point
	// DiffTo, and its parts are applied up to byte offset DiffNext; a
	// stream can resume it there.
	DiffTo   uint64 `json:"diff_to,omitempty"`
	DiffNext uint64 `json:"diff_next,omitempty"`
	// DiffParked: the diff's stream ended before its last part; the head
	// went back to Local and the parts applied stay readable at the
	// replica's own point DiffParked, where a stream resuming the diff
	// takes the head again.
	DiffParked uint64 `json:"diff_parked,omitempty"`
	// Promoted: the replica was made writable (failover) at PromotedAt;
	// Acked and Local stay as the last point in common with the source.
	Promoted   bool  `json:"promoted,omitempty"`
	PromotedAt int64 `json:"promoted_at,omitempty"`
	// DiscardLocal: the user chose the other side: a failback stream may
	// roll this volume back to the last common point.
	DiscardLocal bool `json:"discard_local,omitempty"`
}

// SetReplicaState stores a volume's replica state (nil: it is no longer a
// replica) and makes it durable along with every write before it. A zero
// st.Local is set to the sequence number of the record storing it, as it
// reads back.
func (p *Pool) SetReplicaState(vol string, st *ReplicaState) error {
	val := []byte("replica=")
	if st != nil {
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		val = append(val, b...)
	}
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return notFound(vol)
	}
	rec := &cdp.Record{Kind: cdp.KindVolumeConfig, Volume: v.id, Meta: val}
	err := p.appendLocked(rec)
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	if st != nil && st.Local == 0 {
		st.Local = rec.Seq
	}
	return p.Flush()
}

// applyReplicaSetting applies a "replica=" setting at record seq.
func applyReplicaSetting(v *volState, val string, seq uint64) error {
	if val == "" {
		v.meta.Replica = nil
		return nil
	}
	var st ReplicaState
	if err := json.Unmarshal([]byte(val), &st); err != nil {
		return fmt.Errorf("cow: bad replica setting: %w", err)
	}
	if st.Local == 0 {
		st.Local = seq
	}
	v.meta.Replica = &st
	return nil
}

// ReplicaStateOf returns a volume's replica state (nil if it is no replica).
func (p *Pool) ReplicaStateOf(vol string) (*ReplicaState, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(vol)
	if v == nil {
		return nil, notFound(vol)
	}
	if v.meta.Replica == nil {
		return nil, nil
	}
	st := *v.meta.Replica
	return &st, nil
}

// ShipPin keeps a volume's journal records after Seq for a replication
// target that has not acknowledged them. Clean, when past Seq, says the
// volume has no records in (Seq, Clean]: the target, though at Seq, needs
// nothing before Clean, so the pin holds only what follows Clean, and the
// next run's journal scan starts there.
type ShipPin struct {
	Vol   uint64 `json:"vol"`
	Seq   uint64 `json:"seq"`
	Clean uint64 `json:"clean,omitempty"`
}

// Floor is the point after which the pin keeps records.
func (pin ShipPin) Floor() uint64 { return max(pin.Seq, pin.Clean) }

// PinShipped sets (or moves) target id's pin on volume vol to seq. A pin
// moving forward keeps its clean range.
func (p *Pool) PinShipped(id, vol string, seq uint64) error {
	return p.setPin(id, vol, seq, 0)
}

// PinClean records that volume vol, whose target id holds point acked, has
// no records in (acked, clean]: the pin stops holding the pool's journal
// there.
func (p *Pool) PinClean(id, vol string, acked, clean uint64) error {
	return p.setPin(id, vol, acked, clean)
}

func (p *Pool) setPin(id, vol string, seq, clean uint64) error {
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return notFound(vol)
	}
	old, existed := p.wmu.ship[id]
	if clean == 0 && existed && old.Vol == v.id && seq >= old.Seq && old.Clean > seq {
		clean = old.Clean // still true of the shorter range
	}
	if clean <= seq {
		clean = 0
	}
	p.wmu.ship[id] = ShipPin{Vol: v.id, Seq: seq, Clean: clean}
	val := binary.BigEndian.AppendUint64(nil, v.id)
	val = binary.BigEndian.AppendUint64(val, seq)
	if clean != 0 {
		val = binary.BigEndian.AppendUint64(val, clean)
	}
	err := p.db.Set(append([]byte{prefixShipPin}, id...), val, pebble.NoSync)
	p.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("cow: save replication pin: %w", err)
	}
	if !existed {
		// A new pin must survive a crash before records rely on it; moves
		// forward may be lost (the older pin keeps more, which is safe).
		return p.Checkpoint()
	}
	return nil
}

// UnpinShipped removes target id's pin.
func (p *Pool) UnpinShipped(id string) error {
	p.wmu.Lock()
	delete(p.wmu.ship, id)
	err := p.db.Delete(append([]byte{prefixShipPin}, id...), pebble.NoSync)
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	return p.Checkpoint()
}

// ShipPins lists the replication pins by target id.
func (p *Pool) ShipPins() map[string]ShipPin {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	out := make(map[string]ShipPin, len(p.wmu.ship))
	for k, v := range p.wmu.ship {
		if p.volumeByIDLocked(v.Vol) != nil {
			out[k] = v
		}
	}
	return out
}

func (p *Pool) loadShipPins() error {
	p.wmu.ship = map[string]ShipPin{}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixShipPin}, UpperBound: []byte{prefixShipPin + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		val := it.Value()
		if len(val) != 16 && len(val) != 24 {
			return fmt.Errorf("%w: malformed replication pin %q", cdp.ErrCorrupt, it.Key())
		}
		pin := ShipPin{Vol: binary.BigEndian.Uint64(val), Seq: binary.BigEndian.Uint64(val[8:])}
		if len(val) == 24 {
			pin.Clean = binary.BigEndian.Uint64(val[16:])
		}
		p.wmu.ship[string(it.Key()[1:])] = pin
	}
	return it.Error()
}

// shipFloorsLocked lowers the retention windows of volumes with pins to
// the pinned points: their records and the versions they show stay.
func (p *Pool) shipFloorsLocked(rets map[uint64]*retainers) {
	for _, pin := range p.wmu.ship {
		if r := rets[pin.Vol]; r != nil && r.window != 0 {
			r.window = min(r.window, max(pin.Floor(), r.v.id))
		}
	}
}

func (st *ReplicaState) clone() *ReplicaState {
	if st == nil {
		return nil
	}
	c := *st
	return &c
}
