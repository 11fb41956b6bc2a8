package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/cdp"
)

// Index keys (pebble, bytewise order):
//
//	'b' vol(8) block(8) ^seq(8) -> entry      one version of one block
//	'v' vol(8)                  -> volume     a live volume's metadata
//	'd' vol(8)                  -> volume     a deleted volume (for GC)
//	'm' "applied"               -> seq(8)     every record <= seq is applied
//
// Big-endian numbers keep blocks in order; ^seq puts a block's newest
// version first, so "the newest version at or before S" is one SeekGE.
const (
	prefixBlock   = 'b'
	prefixVolume  = 'v'
	prefixDeleted = 'd'
)

var appliedKey = []byte("mapplied")

const blockKeyLen = 1 + 8 + 8 + 8

// Head is the sequence number that means "the newest version".
const Head = math.MaxUint64

func blockKey(dst []byte, vol, block, seq uint64) []byte {
	return indexKey(dst, prefixBlock, vol, block, seq)
}

func volumeKey(prefix byte, vol uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefix}, vol)
}

// entryKind is what a block version holds.
type entryKind uint8

const (
	entryNone entryKind = 0 // no version: never written (reads as zeros)
	entryData entryKind = 1 // data in the journal
	entryHole entryKind = 2 // trimmed or zeroed: a hole
	entryZero entryKind = 3 // zeroed but allocated (WRITE_ZEROES with NO_HOLE)
)

// entry is one block version's value. The head map holds 64 of them a
// page, so field order matters: kind last packs an entry into 32 bytes
// (40 with kind first), a fifth more pages for the same --index-cache.
type entry struct {
	seq  uint64
	seg  uint64 // data: the journal segment
	off  int64  // data: the block's byte offset in the segment
	crc  uint32 // data: the block's CRC32C
	kind entryKind
}

func (e entry) encode(dst []byte) []byte {
	dst = append(dst[:0], byte(e.kind))
	if e.kind == entryData {
		dst = binary.AppendUvarint(dst, e.seg)
		dst = binary.AppendUvarint(dst, uint64(e.off))
		dst = binary.LittleEndian.AppendUint32(dst, e.crc)
	}
	return dst
}

var errBadEntry = errors.New("cow: malformed index entry")

func decodeEntry(v []byte, seq uint64) (entry, error) {
	if len(v) == 0 {
		return entry{}, errBadEntry
	}
	e := entry{kind: entryKind(v[0]), seq: seq}
	switch e.kind {
	case entryHole, entryZero:
		return e, nil
	case entryData:
		v = v[1:]
		seg, n := binary.Uvarint(v)
		if n <= 0 {
			return entry{}, errBadEntry
		}
		v = v[n:]
		off, n := binary.Uvarint(v)
		if n <= 0 || len(v[n:]) != 4 {
			return entry{}, errBadEntry
		}
		e.seg, e.off, e.crc = seg, int64(off), binary.LittleEndian.Uint32(v[n:])
		return e, nil
	}
	return entry{}, errBadEntry
}

// reader is what lookups run on: the DB, a snapshot or a batch.
type reader interface {
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// apply turns journal records into index updates. It runs under the pool's
// write lock, live and during recovery alike, so both build the same index.
type apply struct {
	p         *Pool
	b         *pebble.Batch
	key       []byte
	val       []byte
	dirty     map[uint64]*volState // 'v' metadata (size, written) to write
	metaDirty map[uint64]*volState // 'x' lineage to write
	// punched: the versions punch added, for the head map after the commit.
	punched []punchedBlock
	es      []entry // scratch: the head's entries of a write's blocks
	// grouping: the batch holds a group of writes (group.go); group has
	// the blocks its earlier writes gave data, which the head map does
	// not show before the commit.
	grouping bool
	group    map[[2]uint64]struct{}
}

type punchedBlock struct {
	vol, block uint64
	e          entry
}

// updateHead tells the head map what record r changed; the index has
// committed it.
func (a *apply) updateHead(r *cdp.Record, loc cdp.Location) {
	h := a.p.head
	switch r.Kind {
	case cdp.KindWrite:
		h.setWrite(r.Volume, r.Offset/cdp.BlockSize, r.Seq, loc.Segment, loc.DataOffset(len(r.Meta)), r.Meta)
	case cdp.KindTrim, cdp.KindZero, cdp.KindVolumeResize:
		for _, pb := range a.punched {
			h.set(pb.vol, pb.block, pb.e)
		}
	case cdp.KindVolumeRollback, cdp.KindVolumeDelete:
		h.dropVolumes(func(vol uint64) bool { return vol == r.Volume })
	case cdp.KindRelocate:
		dataOff := loc.DataOffset(len(r.Meta))
		for i := 0; i < len(r.Data)/cdp.BlockSize; i++ {
			re := cdp.RelocateEntryAt(r.Meta, i)
			h.relocated(re.Volume, re.Block, re.Seq, entry{kind: entryData, seq: re.Seq, seg: loc.Segment, off: dataOff + int64(i)*cdp.BlockSize, crc: re.CRC})
		}
		// A clone's head pages may show its base's versions, which moved
		// under another volume's name: drop them.
		h.dropVolumes(func(vol uint64) bool {
			v := a.p.volumeAny(vol)
			if v == nil {
				return true
			}
			for _, g := range v.loadGens() {
				if g.BaseVol != 0 && g.BaseVol != vol {
					return true
				}
			}
			return false
		})
	}
	clear(a.punched)
	a.punched = a.punched[:0]
}

// addWritten adjusts v's written-blocks counter (and the recount's delta).
func addWritten(v *volState, n int64) {
	v.written += n
	if v.recounting {
		v.delta += n
	}
}

// newVolumeLocked registers a volume created by record r.
func (a *apply) newVolumeLocked(r *cdp.Record, g gen) *volState {
	v := newVolState(r.Seq, string(r.Meta), r.Time, int64(r.Length), g)
	if g.BaseVol != 0 {
		a.p.markStaleLocked(v)
	}
	a.p.addVolumeLocked(v)
	a.dirty[v.id] = v
	a.metaDirty[v.id] = v
	return v
}

func (a *apply) set(vol, block uint64, e entry) error {
	a.key = blockKey(a.key, vol, block, e.seq)
	a.val = e.encode(a.val)
	return a.b.Set(a.key, a.val, nil)
}

// record applies one journal record.
func (a *apply) record(r *cdp.Record, loc cdp.Location) error {
	switch r.Kind {
	case cdp.KindVolumeCreate:
		v := a.newVolumeLocked(r, gen{Start: r.Seq})
		// A new volume: the index has no version of it (replay too: the
		// index never holds records past the applied one).
		v.used = map[uint64]uint64{}
		return nil
	case cdp.KindVolumeClone:
		src := a.p.volumeAny(r.Volume)
		if src == nil {
			return fmt.Errorf("cow: clone of unknown volume %d", r.Volume)
		}
		g := gen{Start: r.Seq, BaseVol: r.Volume, BaseSeq: r.Offset}
		if !src.meta.WrittenStale && r.Offset >= src.lastChange && int64(r.Length) == src.size.Load() {
			// A clone of the source's current head: its count is known.
			v := a.newVolumeLocked(r, gen{Start: r.Seq})
			v.meta.Gens[0] = g
			v.setGens(v.meta.Gens)
			v.written = src.written
		} else {
			a.newVolumeLocked(r, g)
		}
		return nil
	case cdp.KindVolumeDelete:
		v := a.p.volumeByIDLocked(r.Volume)
		if v == nil {
			return fmt.Errorf("cow: delete of unknown volume %d", r.Volume)
		}
		a.p.removeVolumeLocked(v)
		if v.tap != nil {
			v.tap.addLocked(r) // ends it: the journal tells its reader
		}
		v.deletedSeq = r.Seq
		delete(a.dirty, v.id)
		if err := a.b.Delete(volumeKey(prefixVolume, v.id), nil); err != nil {
			return err
		}
		return a.b.Set(volumeKey(prefixDeleted, v.id), v.encode(), nil)
	case cdp.KindRelocate:
		return a.relocate(r, loc)
	}
	v := a.p.volumeByIDLocked(r.Volume)
	if v == nil {
		return fmt.Errorf("cow: %s record %d for unknown volume %d", r.Kind, r.Seq, r.Volume)
	}
	if r.Kind != cdp.KindWrite {
		a.dirty[v.id] = v // a write marks it only if its count changes
	}
	if r.Kind != cdp.KindSnapshotCreate && r.Kind != cdp.KindSnapshotDelete && r.Kind != cdp.KindVolumeConfig {
		v.lastChange = r.Seq
	}
	if r.Kind != cdp.KindSnapshotDelete && r.Kind != cdp.KindVolumeConfig {
		v.lastStreamed = r.Seq
	}
	if v.tap != nil {
		v.tap.addLocked(r)
	}
	if r.Kind == cdp.KindWrite || r.Kind == cdp.KindTrim || r.Kind == cdp.KindZero {
		if err := a.countActivityLocked(v, r.Time); err != nil {
			return err
		}
	}
	switch r.Kind {
	case cdp.KindWrite:
		first := r.Offset / cdp.BlockSize
		n := uint64(len(r.Data) / cdp.BlockSize)
		v.markWritten(first, first+n-1)
		if a.p.wmu.replaying {
			v.markUsed(first, first+n-1)
			// Recovery: what each block held would cost a head-map page
			// load (an index seek on a cold index) per record, which made
			// replaying 80k random 4 KiB writes take 9 s. The count is
			// recounted in the background instead; the mark that says so
			// is in this record's own batch, so any index state that
			// holds the record also says the count is stale.
			if !v.meta.WrittenStale {
				a.p.markStaleLocked(v)
				a.metaDirty[v.id] = v
			}
			return a.setWrite(v.id, first, n, r, loc)
		}
		// Count blocks that gain data, for "written" accounting.
		if uint64(cap(a.es)) < n {
			a.es = make([]entry, n)
		}
		es := a.es[:n]
		// The lookup comes before the pages are marked used, so that the
		// first write to a page no record touched loads it without an
		// index seek (this record is not in the index yet either). The
		// mark still precedes the index commit, so a load after the
		// commit seeks. Marked first, every first write to a page of a
		// new volume sought: 22% of the daemon's CPU on 4 KiB random
		// writes to a new volume once the index had files to search.
		if err := a.p.headEntries(v, first, es); err != nil {
			return err
		}
		v.markUsed(first, first+n-1)
		had := 0
		for i, e := range es {
			if e.kind == entryData {
				had++
			} else if a.grouping {
				if _, ok := a.group[[2]uint64{v.id, first + uint64(i)}]; ok {
					had++
				}
			}
		}
		if a.grouping {
			for i := uint64(0); i < n; i++ {
				a.group[[2]uint64{v.id, first + i}] = struct{}{}
			}
		}
		if err := a.setWrite(v.id, first, n, r, loc); err != nil {
			return err
		}
		if int64(n) != int64(had) {
			addWritten(v, int64(n)-int64(had))
			a.dirty[v.id] = v
		}
	case cdp.KindTrim, cdp.KindZero:
		if r.Length == 0 {
			return nil
		}
		first := r.Offset / cdp.BlockSize
		last := (r.Offset+r.Length)/cdp.BlockSize - 1
		kind := entryHole
		if r.Kind == cdp.KindZero && r.Flags&cdp.FlagNoHole != 0 {
			kind = entryZero
		}
		return a.punch(v, first, last, r.Seq, kind)
	case cdp.KindVolumeResize:
		old := v.size.Load()
		v.size.Store(int64(r.Length))
		v.meta.Sizes = append(v.meta.Sizes, sizeChange{Seq: r.Seq, Size: int64(r.Length)})
		a.metaDirty[v.id] = v
		if int64(r.Length) < old {
			return a.punch(v, r.Length/cdp.BlockSize, uint64(old-1)/cdp.BlockSize, r.Seq, entryHole)
		}
	case cdp.KindVolumeRollback:
		v.meta.Gens = append(v.meta.Gens, gen{Start: r.Seq, BaseVol: v.id, BaseSeq: r.Offset})
		v.setGens(v.meta.Gens)
		v.size.Store(int64(r.Length))
		v.meta.Sizes = append(v.meta.Sizes, sizeChange{Seq: r.Seq, Size: int64(r.Length)})
		a.p.markStaleLocked(v)
		a.metaDirty[v.id] = v
	case cdp.KindSnapshotCreate:
		name, label, err := decodeSnapshotMeta(r.Meta)
		if err != nil {
			return err
		}
		v.meta.Snapshots = append(v.meta.Snapshots, Snapshot{Name: name, Seq: r.Seq, Time: time.Unix(0, r.Time).UTC(), Label: label,
			Scheduled: r.Flags&cdp.FlagSnapScheduled != 0, AppConsistent: r.Flags&cdp.FlagSnapAppConsistent != 0})
		a.metaDirty[v.id] = v
	case cdp.KindSnapshotDelete:
		name := string(r.Meta)
		kept := v.meta.Snapshots[:0]
		for _, sn := range v.meta.Snapshots {
			if sn.Name != name {
				kept = append(kept, sn)
			}
		}
		v.meta.Snapshots = kept
		a.metaDirty[v.id] = v
	case cdp.KindVolumeConfig:
		key, val, _ := strings.Cut(string(r.Meta), "=")
		switch key {
		case "retention":
			d, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return fmt.Errorf("cow: bad retention setting %q", val)
			}
			v.meta.Retention = time.Duration(d)
		case "readonly":
			v.meta.ReadOnly = val == "1"
		case "replica":
			if err := applyReplicaSetting(v, val, r.Seq); err != nil {
				return err
			}
		default:
			return fmt.Errorf("cow: unknown volume setting %q", key)
		}
		a.metaDirty[v.id] = v
	default:
		return fmt.Errorf("cow: unknown record kind %s", r.Kind)
	}
	return nil
}

// relocate points the block versions a relocate record carries at their
// new place. A version that garbage collection has since deleted, or that
// already points elsewhere, is left alone, so replaying the record is
// harmless.
func (a *apply) relocate(r *cdp.Record, loc cdp.Location) error {
	dataOff := loc.DataOffset(len(r.Meta))
	// Versions a chunk key holds: the chunk key is split into block keys,
	// the moved blocks at their new place.
	type split struct {
		key   []byte
		ce    chunkEntry
		moved [chunkBlocks]entry
		has   uint32
	}
	var splits map[string]*split
	var order []*split
	for i := 0; i < len(r.Data)/cdp.BlockSize; i++ {
		re := cdp.RelocateEntryAt(r.Meta, i)
		a.key = blockKey(a.key, re.Volume, re.Block, re.Seq)
		val, closer, err := a.p.db.Get(a.key)
		if errors.Is(err, pebble.ErrNotFound) {
			ck := chunkKey(nil, re.Volume, re.Block>>chunkShift, re.Seq)
			sp := splits[string(ck)]
			if sp == nil {
				cval, closer, err := a.p.db.Get(ck)
				if errors.Is(err, pebble.ErrNotFound) {
					continue
				}
				if err != nil {
					return fmt.Errorf("cow: relocate: %w", err)
				}
				ce, derr := decodeChunkEntry(cval, re.Seq)
				closer.Close()
				if derr != nil {
					continue
				}
				sp = &split{key: ck, ce: ce}
				if splits == nil {
					splits = map[string]*split{}
				}
				splits[string(ck)] = sp
				order = append(order, sp)
			}
			k := re.Block & chunkMask
			if sp.ce.crcs[k] == re.CRC {
				sp.moved[k] = entry{kind: entryData, seq: re.Seq, seg: loc.Segment, off: dataOff + int64(i)*cdp.BlockSize, crc: re.CRC}
				sp.has |= 1 << k
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("cow: relocate: %w", err)
		}
		old, derr := decodeEntry(val, re.Seq)
		closer.Close()
		if derr != nil || old.kind != entryData || old.crc != re.CRC {
			continue
		}
		e := entry{kind: entryData, seq: re.Seq, seg: loc.Segment, off: dataOff + int64(i)*cdp.BlockSize, crc: re.CRC}
		if err := a.set(re.Volume, re.Block, e); err != nil {
			return err
		}
	}
	for _, sp := range order {
		if sp.has == 0 {
			continue
		}
		if err := splitChunk(a.b, sp.key, &sp.ce, 0); err != nil {
			return err
		}
		vol, chunk, _, _ := decodeIndexKey(prefixChunk, sp.key)
		for k := uint64(0); k < chunkBlocks; k++ {
			if sp.has&(1<<k) != 0 {
				if err := a.set(vol, chunk<<chunkShift|k, sp.moved[k]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func encodeSnapshotMeta(name, label string) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(len(name)))
	b = append(b, name...)
	return append(b, label...)
}

func decodeSnapshotMeta(b []byte) (name, label string, err error) {
	if len(b) < 2 || int(binary.LittleEndian.Uint16(b)) > len(b)-2 {
		return "", "", fmt.Errorf("cow: malformed snapshot record")
	}
	n := int(binary.LittleEndian.Uint16(b))
	return string(b[2 : 2+n]), string(b[2+n:]), nil
}

// punch makes blocks [first, last] holes (or allocated zeros). A hole needs
// a version only where the block holds something now; unwritten blocks
// already read as zeros, so trimming a fresh volume writes nothing.
func (a *apply) punch(v *volState, first, last, seq uint64, kind entryKind) error {
	if last < first {
		return nil
	}
	var err error
	next := first
	setRange := func(from, to uint64) { // allocated zeros: every block gets a version
		for b := from; b <= to && err == nil; b++ {
			err = a.punch1(v.id, b, entry{kind: entryZero, seq: seq})
		}
	}
	verr := a.p.resolve(a.p.db, v, first, last, Head, func(block uint64, e entry) bool {
		if kind == entryZero && block > next {
			setRange(next, block-1)
		}
		next = block + 1
		if e.kind == kind {
			return err == nil // already so (here or in the base)
		}
		if e.kind == entryData {
			addWritten(v, -1)
		}
		err = a.punch1(v.id, block, entry{kind: kind, seq: seq})
		return err == nil
	})
	if kind == entryZero && err == nil && next <= last {
		setRange(next, last)
	}
	if verr != nil {
		return verr
	}
	return err
}

// punch1 adds one hole or zero version, remembered for the head map.
func (a *apply) punch1(vol, block uint64, e entry) error {
	if v := a.p.volumeAny(vol); v != nil {
		v.markUsed(block, block)
	}
	a.punched = append(a.punched, punchedBlock{vol, block, e})
	return a.set(vol, block, e)
}

// finish adds the dirty volumes' metadata and the applied sequence to the
// batch.
func (a *apply) finish(seq uint64) error {
	for id, v := range a.dirty {
		if err := a.b.Set(volumeKey(prefixVolume, id), v.encode(), nil); err != nil {
			return err
		}
		delete(a.dirty, id)
	}
	for id, v := range a.metaDirty {
		if err := a.b.Set(metaKey(id), v.meta.encode(), nil); err != nil {
			return err
		}
		delete(a.metaDirty, id)
	}
	return a.b.Set(appliedKey, binary.BigEndian.AppendUint64(nil, seq), nil)
}
