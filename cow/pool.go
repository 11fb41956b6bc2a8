// Package cow owns volumes: thin, copy-on-write block devices whose data
// lives in the pool's journal (package cdp) and whose multi-version block
// index lives in pebble. It creates, lists, resizes and deletes volumes,
// serves their reads and writes (blockdev.Device), and keeps the index
// consistent with the journal across crashes: pebble runs without its own
// WAL, because the journal is the WAL and recovery replays it.
package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cache"
	"github.com/strata-storage/strata/cdp"
)

// Error classes (besides blockdev's).
var (
	// ErrExists: a volume or snapshot by that name exists.
	ErrExists = errors.New("cow: already exists")
	// ErrBusy: the volume is in use (attached) and the operation needs force.
	ErrBusy = errors.New("cow: volume is in use")
	// ErrInvalidName: the volume name breaks the naming rules.
	ErrInvalidName = errors.New("cow: invalid volume name")
	// ErrInvalidSize: the size is zero, unaligned or too large.
	ErrInvalidSize = errors.New("cow: invalid volume size")
	// ErrShrinkData: a shrink would cut off written blocks.
	ErrShrinkData = errors.New("cow: shrinking would discard written data")
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("cow: pool closed")
)

// MaxVolumeSize is the largest volume (2^63 bytes would overflow offsets;
// 1 EiB is beyond any disk and keeps block numbers small).
const MaxVolumeSize = 1 << 60

// Options configure a pool.
type Options struct {
	// Dir is the data directory: the journal is in Dir/journal, the index
	// in Dir/index.
	Dir string
	// FS is the filesystem (default vfs.Default).
	FS vfs.FS
	// SegmentSize of journal segments (default 128 MiB).
	SegmentSize int64
	// IndexCacheSize is the block index's memory (default 64 MiB): three
	// quarters the head map (headmap.go), the rest pebble's block cache.
	IndexCacheSize int64
	// CacheSize bounds the read cache of journal blocks (0: no cache).
	CacheSize int64
	// JournalReserve is cdp.Options.ReserveAhead: room allocated ahead of
	// the journal's records (default 4 MiB; negative: per record).
	JournalReserve int64
	// TailCache is the part of CacheSize that keeps the journal's most
	// recent writes in memory for reads (default three quarters;
	// negative: none).
	TailCache int64
	// IndexMemTableSize is pebble's memtable size (default
	// DefaultIndexMemTableSize).
	IndexMemTableSize uint64
	// RetentionTime is how long every write stays readable as a point in
	// time (default 24h); volumes may override it.
	RetentionTime time.Duration
	// RetentionSize caps the journal (0: no cap). When the cap forces
	// history out before RetentionTime, status and the log say so.
	RetentionSize int64
	// GCInterval is how often garbage collection runs in the background
	// (default 1 minute; negative disables it: `strata gc --now` still runs).
	GCInterval time.Duration
	// GCLiveRatio: a segment whose live data is below this share of its
	// size is copied forward and deleted (default 0.8, which keeps the
	// journal within 1.25x of the live data in old segments).
	GCLiveRatio float64
	// GCRate bounds relocation, in bytes a second (default 64 MiB/s).
	GCRate int64
	// GCBatchBytes bounds the old segments one pass examines, and the data
	// one pass rewrites to defragment volumes (default 1 GiB).
	GCBatchBytes int64
	// NoDefrag turns off garbage collection's rewriting of fragmented
	// volume heads in block order (defrag.go).
	NoDefrag bool
	// CheckpointInterval is how often the index is persisted, which bounds
	// the journal replayed after a crash (default 30s; negative disables).
	CheckpointInterval time.Duration
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o *Options) fill() error {
	if o.Dir == "" {
		return errors.New("cow: Options.Dir is required")
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.IndexCacheSize == 0 {
		o.IndexCacheSize = 64 << 20
	}
	if o.IndexMemTableSize == 0 {
		o.IndexMemTableSize = DefaultIndexMemTableSize
	}
	if o.GCInterval == 0 {
		o.GCInterval = time.Minute
	}
	if o.GCLiveRatio == 0 {
		o.GCLiveRatio = 0.8
	}
	if o.GCRate == 0 {
		o.GCRate = 64 << 20
	}
	if o.GCBatchBytes == 0 {
		o.GCBatchBytes = 1 << 30
	}
	if o.RetentionTime == 0 {
		o.RetentionTime = 24 * time.Hour
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.TailCache == 0 {
		// Fifteen sixteenths of the read cache hold the journal's most
		// recent writes as written, the rest single blocks read from
		// older parts of it. The tail is the only copy in memory of what
		// was written (direct writes leave nothing in the page cache)
		// and costs no per-block bookkeeping, while older data that is
		// read is in the page cache anyway (reads try it first), so the
		// block cache only keeps what the kernel did not have. With the
		// split at a half, 4 KiB random reads of a working set that fit
		// the read cache went 175-197k IOPS, at three quarters 205-213k,
		// and the VM boot mix 42-43k against 48-50k. From three quarters
		// to fifteen sixteenths (a 1 GiB working set, 1280 MiB cache,
		// 2026-12-02): random reads QD32 69-71k -> 69-81k IOPS, the 4 KiB
		// read/write mix 40-41k -> 48-56k, VM boot 29-31k -> 31k: the
		// working set no longer leaves the tail for the disk.
		o.TailCache = o.CacheSize * 15 / 16
		if o.CacheSize <= 0 {
			o.TailCache = -1
		}
	}
	return nil
}

// volState is a volume's in-memory state. size and the handles count are
// atomics read by the I/O path; the rest changes under the pool's write lock.
type volState struct {
	id         uint64 // the sequence number of its create record
	name       string
	created    int64 // unix nanoseconds
	size       atomic.Int64
	written    int64 // blocks whose newest version holds data
	deletedSeq uint64
	gone       atomic.Bool
	tap        *Tap         // the reader of its changes from memory (nil: none); wmu
	handles    atomic.Int64 // open devices (any)
	rwHandles  atomic.Int64 // open read-write devices (the head)

	// gens is read by the I/O path without locks (copy on write); meta
	// changes under the pool's write lock.
	gens atomic.Pointer[[]gen]
	meta volMeta
	// While the written counter is recounted, changes after the recount's
	// snapshot are also added to delta.
	recounting bool
	delta      int64
	// Write activity of the current minute (history.go).
	actMinute, actCount int64
	// lastChange is the sequence number of the last record that changed
	// the head (at most; after a restart, the applied sequence then).
	lastChange uint64
	// lastStreamed is the sequence number of the last record Changes
	// reports (lastChange's records and snapshot creates; after a
	// restart, the applied sequence then).
	lastStreamed uint64

	// used marks the head-map pages that ever had a version of this
	// volume (its own), for volumes created since the pool opened; nil
	// means unknown (every page is looked up in the index). A page no
	// record ever touched is all unwritten blocks: loading it needs no
	// index seek, which is what writes to a new volume mostly do.
	usedMu sync.Mutex
	used   map[uint64]uint64 // page/64 -> one bit a page
	// Extents written in this garbage collection interval and the last
	// (defrag.go); under usedMu.
	fragNow, fragOld defragBits
}

// markUsed records that blocks [first, last] have versions now. Called
// under the pool's write lock before the index commit.
func (v *volState) markUsed(first, last uint64) {
	v.usedMu.Lock()
	if v.used != nil {
		for pg := first >> headPageShift; pg <= last>>headPageShift; pg++ {
			v.used[pg/64] |= 1 << (pg % 64)
		}
	}
	v.usedMu.Unlock()
}

// pageUnused reports whether no record ever touched page pg.
func (v *volState) pageUnused(pg uint64) bool {
	v.usedMu.Lock()
	defer v.usedMu.Unlock()
	return v.used != nil && v.used[pg/64]&(1<<(pg%64)) == 0
}

// newVolState makes the state of a volume created at seq.
func newVolState(id uint64, name string, created int64, size int64, g gen) *volState {
	v := &volState{id: id, name: name, created: created}
	v.size.Store(size)
	v.meta = volMeta{Gens: []gen{g}, Sizes: []sizeChange{{Seq: id, Size: size}}}
	v.setGens(v.meta.Gens)
	return v
}

// volume metadata encoding: version(1) size(8) written(8) created(8) name.
func (v *volState) encode() []byte {
	b := []byte{1}
	b = binary.LittleEndian.AppendUint64(b, uint64(v.size.Load()))
	b = binary.LittleEndian.AppendUint64(b, uint64(v.written))
	b = binary.LittleEndian.AppendUint64(b, uint64(v.created))
	return append(b, v.name...)
}

func decodeVolume(id uint64, b []byte) (*volState, error) {
	if len(b) < 25 || b[0] != 1 {
		return nil, fmt.Errorf("cow: malformed metadata for volume %d", id)
	}
	v := newVolState(id, string(b[25:]), int64(binary.LittleEndian.Uint64(b[17:])), int64(binary.LittleEndian.Uint64(b[1:])), gen{Start: id})
	v.written = int64(binary.LittleEndian.Uint64(b[9:]))
	return v, nil
}

// Pool is a data directory's journal, index and volumes. All methods are safe
// for concurrent use.
type Pool struct {
	opts Options
	id   string // the pool's identity (replication)
	db   *pebble.DB
	j    atomic.Pointer[cdp.Journal]

	// wmu orders every change: a record's sequence number and its index
	// update happen under it, so the index applies records in journal order
	// and "applied" is exact.
	// wq: writers waiting for a group commit (group.go).
	wq  writeQueue
	wmu struct {
		sync.Mutex
		applied uint64
		closed  bool
		apply   apply
		// Time markers (points.go).
		sinceMark int
		lastMark  int64
		// floor: no point older than this is readable any more (garbage
		// collection under the size cap moved history out). Persisted.
		floor uint64
		// pins: points open for reading, kept from garbage collection.
		pins map[[2]uint64]int
		// historyCut: when the size cap last moved history out early.
		historyCut time.Time
		// ship: replication targets' pins (replication.go).
		ship map[string]ShipPin
		// replaying: open is replaying the journal (index.go: writes
		// leave the written count to a recount instead of looking up
		// what each block held).
		replaying bool
	}
	// gcMu: one garbage collection pass at a time.
	gcMu   sync.Mutex
	lastGC atomic.Pointer[GCRun]
	// indexFlushFails counts failed index flushes (pebble retries them);
	// indexFlushFailing says the last one failed.
	indexFlushFails   atomic.Int64
	indexFlushFailing atomic.Bool
	recountKick       chan struct{}
	recountWG         sync.WaitGroup

	// vmu guards the volume maps (read by the I/O path to resolve names).
	// retired holds deleted volumes, which clones may still use as bases.
	vmu     sync.RWMutex
	byName  map[string]*volState
	byID    map[uint64]*volState
	retired map[uint64]*volState

	// closeMu keeps the index open while reads use it: readers hold it
	// shared, Close exclusively.
	closeMu  sync.RWMutex
	isClosed bool

	cache *cache.Cache
	head  *headMap
	// headLoads counts head-map pages loaded, headSeeks those of them
	// read from the index (the rest were known to be all unwritten).
	headLoads, headSeeks atomic.Int64
	// recentHits counts blocks read from the journal's memory.
	recentHits atomic.Uint64
	// prefetched counts bytes of journal hinted by read-ahead.
	prefetched atomic.Int64
	// readDamage counts reads that found a block failing its checksum
	// (each answered with an I/O error); damageLog limits the log to
	// one line a block.
	readDamage atomic.Int64
	damageMu   sync.Mutex
	damageLog  map[[2]uint64]bool

	stop chan struct{}
	done chan struct{}
}

// readLock holds the pool open for a read; the caller must call the
// returned function when done.
func (p *Pool) readLock() (func(), error) {
	p.closeMu.RLock()
	if p.isClosed {
		p.closeMu.RUnlock()
		return nil, fmt.Errorf("%w: %v", blockdev.ErrGone, ErrClosed)
	}
	return p.closeMu.RUnlock, nil
}

// Open opens or creates the pool in opts.Dir and recovers it: the index is
// brought up to date by replaying the journal past its last checkpoint.
func Open(opts Options) (*Pool, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if err := opts.FS.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cow: create data directory: %w", err)
	}
	if err := cdp.SyncDir(opts.FS, opts.FS.PathDir(opts.Dir)); err != nil {
		return nil, fmt.Errorf("cow: %w", err)
	}
	p := &Pool{opts: opts, byName: map[string]*volState{}, byID: map[uint64]*volState{}, retired: map[uint64]*volState{},
		recountKick: make(chan struct{}, 1)}
	p.wmu.apply = apply{p: p, dirty: map[uint64]*volState{}, metaDirty: map[uint64]*volState{}}
	p.wmu.pins = map[[2]uint64]int{}
	c, err := cache.New(opts.CacheSize - max(opts.TailCache, 0))
	if err != nil {
		return nil, fmt.Errorf("cow: read cache: %w", err)
	}
	p.cache = c
	p.head = newHeadMap(headShare(opts.IndexCacheSize))
	if err := p.open(); err != nil {
		c.Close()
		return nil, err
	}
	p.stop = make(chan struct{})
	p.done = make(chan struct{})
	go p.checkpointer(p.stop)
	// Written counts left stale by a crash or by recovery get recounted.
	p.recountWG.Add(2)
	go p.recounter(p.stop)
	go p.gcLoop(p.stop)
	select {
	case p.recountKick <- struct{}{}:
	default:
	}
	return p, nil
}

func (p *Pool) indexDir() string   { return p.opts.FS.PathJoin(p.opts.Dir, "index") }
func (p *Pool) journalDir() string { return p.opts.FS.PathJoin(p.opts.Dir, "journal") }

func (p *Pool) openIndex() error {
	// Most of the index's memory is the head map (headmap.go): reads of
	// the head and writes no longer go to pebble; the rest is pebble's
	// block cache (points in time, page loads, garbage collection).
	cache := pebble.NewCache(p.opts.IndexCacheSize - headShare(p.opts.IndexCacheSize))
	defer cache.Unref()
	db, err := pebble.Open(p.indexDir(), &pebble.Options{
		FS:                          p.opts.FS,
		Cache:                       cache,
		DisableWAL:                  true,
		MemTableSize:                p.opts.IndexMemTableSize,
		MemTableStopWritesThreshold: indexStopWrites,
		FormatMajorVersion:          pebble.FormatNewest,
		Logger:                      &pebbleLogger{l: p.opts.Logger},
		EventListener: &pebble.EventListener{
			// The index on disk must never get ahead of the durable
			// journal: before pebble persists a memtable, sync the
			// journal, which holds every record the memtable indexes.
			// (Journal.Sync takes no lock that waits on pebble.)
			FlushBegin: func(pebble.FlushInfo) {
				if j := p.j.Load(); j != nil {
					if err := j.Sync(); err != nil {
						p.opts.Logger.Error("index flush: journal sync failed", "err", err)
					}
				}
			},
			FlushEnd: func(info pebble.FlushInfo) {
				// A flush of memtables holding only deletions that cancel
				// out writes no table: pebble reports that as an error
				// (unexported), but nothing failed.
				failed := info.Err != nil && info.Err.Error() != "pebble: empty table"
				if failed {
					p.indexFlushFails.Add(1)
				}
				p.indexFlushFailing.Store(failed)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("cow: open index: %w", err)
	}
	p.db = db
	return nil
}

func (p *Pool) open() error {
	if err := p.openIndex(); err != nil {
		return err
	}
	applied, err := p.loadIndexState()
	if err == nil {
		err = p.loadID()
	}
	if err == nil {
		err = p.loadShipPins()
	}
	if err != nil {
		p.db.Close()
		return err
	}
	start := time.Now()
	replayed := 0
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.wmu.replaying = true
	j, err := cdp.Open(cdp.Options{FS: p.opts.FS, Dir: p.journalDir(), SegmentSize: p.opts.SegmentSize, Logger: p.opts.Logger, Now: p.opts.Now,
		DirectIO: p.opts.FS == vfs.Default, TailCache: p.opts.TailCache, ReserveAhead: p.opts.JournalReserve},
		applied+1, func(r *cdp.Record, loc cdp.Location) error {
			replayed++
			return p.applyLocked(r, loc)
		})
	p.wmu.replaying = false
	if err != nil {
		p.db.Close()
		return fmt.Errorf("cow: open journal: %w", err)
	}
	if last := j.LastSeq(); last < p.wmu.applied {
		// Only possible if a journal sync failed while pebble flushed
		// (the pool had already failed). The journal is the truth.
		j.Close()
		p.db.Close()
		return fmt.Errorf("%w: the index has applied records up to sequence %d but the journal ends at %d: records %d..%d are missing from the journal "+
			"(damage near its end; the log says where). Opening would serve volumes without them, so the pool stays closed. "+
			"Keep the journal and the index (%s) as they are, and restore the data directory from a backup or promote a replica",
			cdp.ErrCorrupt, p.wmu.applied, last, last+1, p.wmu.applied, p.indexDir())
	}
	p.j.Store(j)
	if replayed > 0 {
		p.opts.Logger.Info("recovered journal", "records_replayed", replayed, "from_seq", applied+1, "to_seq", p.wmu.applied, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// loadIndexState reads the applied sequence and the live volumes.
func (p *Pool) loadIndexState() (uint64, error) {
	v, closer, err := p.db.Get(appliedKey)
	var applied uint64
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return 0, fmt.Errorf("cow: read index state: %w", err)
	default:
		if len(v) != 8 {
			closer.Close()
			return 0, fmt.Errorf("%w: malformed applied sequence in the index", cdp.ErrCorrupt)
		}
		applied = binary.BigEndian.Uint64(v)
		closer.Close()
	}
	for _, prefix := range []byte{prefixVolume, prefixDeleted} {
		if err := p.loadVolumes(prefix); err != nil {
			return 0, err
		}
	}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'x'}, UpperBound: []byte{'x' + 1}})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Key()) != 9 {
			return 0, fmt.Errorf("%w: malformed lineage key %x", cdp.ErrCorrupt, it.Key())
		}
		id := binary.BigEndian.Uint64(it.Key()[1:])
		v := p.volumeAny(id)
		if v == nil {
			continue // the volume is gone for good
		}
		m, err := decodeMeta(id, it.Value())
		if err != nil {
			return 0, err
		}
		v.meta = m
		v.setGens(m.Gens)
	}
	if v, closer, err := p.db.Get(floorKey); err == nil {
		if len(v) >= 8 {
			p.wmu.floor = binary.BigEndian.Uint64(v)
		}
		if len(v) == 16 {
			if t := int64(binary.BigEndian.Uint64(v[8:])); t > 0 {
				p.wmu.historyCut = time.Unix(0, t).UTC()
			}
		}
		closer.Close()
	}
	p.wmu.applied = applied
	for _, v := range p.allVolumesLocked() {
		v.lastChange, v.lastStreamed = applied, applied
	}
	return applied, it.Error()
}

func (p *Pool) loadVolumes(prefix byte) error {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Key()) != 9 {
			return fmt.Errorf("%w: malformed volume key %x", cdp.ErrCorrupt, it.Key())
		}
		vs, err := decodeVolume(binary.BigEndian.Uint64(it.Key()[1:]), it.Value())
		if err != nil {
			return err
		}
		if prefix == prefixVolume {
			p.addVolumeLocked(vs)
		} else {
			vs.gone.Store(true)
			p.retired[vs.id] = vs
		}
	}
	return it.Error()
}

func (p *Pool) addVolumeLocked(v *volState) {
	p.vmu.Lock()
	p.byName[v.name] = v
	p.byID[v.id] = v
	p.vmu.Unlock()
}

func (p *Pool) removeVolumeLocked(v *volState) {
	p.vmu.Lock()
	delete(p.byName, v.name)
	delete(p.byID, v.id)
	p.retired[v.id] = v
	p.vmu.Unlock()
	v.gone.Store(true)
}

// volumeAny finds a volume by id, live or deleted (clones may use a deleted
// volume's history as their base).
func (p *Pool) volumeAny(id uint64) *volState {
	p.vmu.RLock()
	defer p.vmu.RUnlock()
	if v := p.byID[id]; v != nil {
		return v
	}
	return p.retired[id]
}

// allVolumesLocked returns the live volumes.
func (p *Pool) allVolumesLocked() []*volState {
	p.vmu.RLock()
	defer p.vmu.RUnlock()
	out := make([]*volState, 0, len(p.byID))
	for _, v := range p.byID {
		out = append(out, v)
	}
	return out
}

func (p *Pool) volumeByIDLocked(id uint64) *volState {
	p.vmu.RLock()
	defer p.vmu.RUnlock()
	return p.byID[id]
}

func (p *Pool) lookup(name string) *volState {
	p.vmu.RLock()
	defer p.vmu.RUnlock()
	return p.byName[name]
}

// applyLocked indexes one record in its own batch. wmu is held.
func (p *Pool) applyLocked(r *cdp.Record, loc cdp.Location) error {
	a := &p.wmu.apply
	a.b = p.db.NewBatch()
	defer func() { a.b.Close(); a.b = nil }()
	if err := a.record(r, loc); err != nil {
		return err
	}
	if err := a.finish(r.Seq); err != nil {
		return err
	}
	if err := p.markTimeLocked(a.b, r, loc); err != nil {
		return err
	}
	if err := a.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("cow: index commit: %w", err)
	}
	// After the commit: a head page loaded from now on sees the change.
	a.updateHead(r, loc)
	p.wmu.applied = r.Seq
	return nil
}

// appendLocked journals r and indexes it. wmu is held. A record for a
// volume that no longer exists never reaches the journal: recovery would
// have nothing to apply it to.
func (p *Pool) appendLocked(r *cdp.Record) error {
	if p.wmu.closed {
		return fmt.Errorf("%w: %v", blockdev.ErrGone, ErrClosed)
	}
	if r.Kind != cdp.KindVolumeCreate && r.Kind != cdp.KindRelocate && p.volumeByIDLocked(r.Volume) == nil {
		return fmt.Errorf("%w: volume %d was deleted", blockdev.ErrGone, r.Volume)
	}
	j := p.j.Load()
	loc, err := j.Append(r)
	if err != nil {
		return classify(err)
	}
	if err := p.applyLocked(r, loc); err != nil {
		// The record is in the journal but not the index: the pool can no
		// longer promise reads match. Fail it; recovery re-applies.
		return fmt.Errorf("%w: %v", blockdev.ErrIO, p.failLocked(err))
	}
	if testHookAppended != nil {
		testHookAppended(r)
	}
	return nil
}

// Test hooks: crash tests take crash images at these moments.
var (
	testHookAppended func(r *cdp.Record) // a record is journaled and indexed, not yet synced
	testHookGC       func(step string)   // garbage collection finished a step
)

func (p *Pool) failLocked(err error) error {
	p.opts.Logger.Error("index update failed; refusing further writes until restart", "err", err)
	p.wmu.closed = true
	return err
}

// classify maps journal errors onto device error classes.
func classify(err error) error {
	switch {
	case errors.Is(err, cdp.ErrNoSpace):
		return fmt.Errorf("%w: %v", blockdev.ErrNoSpace, err)
	case errors.Is(err, cdp.ErrFailed), errors.Is(err, cdp.ErrCorrupt):
		return fmt.Errorf("%w: %v", blockdev.ErrIO, err)
	case errors.Is(err, cdp.ErrClosed):
		return fmt.Errorf("%w: %v", blockdev.ErrGone, err)
	}
	return err
}

// VolumeInfo describes a volume.
type VolumeInfo struct {
	Name    string    `json:"name"`
	ID      uint64    `json:"id"`
	Size    int64     `json:"size"`
	Written int64     `json:"written"` // bytes in blocks whose newest version holds data
	Created time.Time `json:"created"`
	Handles int64     `json:"attached"` // open devices (NBD connections)
	// ReadOnly: the volume's head is served read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// Replica links a replica to its source.
	Replica *ReplicaState `json:"replica,omitempty"`
	// Recounting: Written is being recounted in the background (after
	// recovery, a clone or a rollback) and is not exact until then.
	Recounting bool `json:"written_recounting,omitempty"`
}

func (p *Pool) infoLocked(v *volState) VolumeInfo {
	return VolumeInfo{Name: v.name, ID: v.id, Size: v.size.Load(), Written: max(v.written, 0) * cdp.BlockSize,
		Created: time.Unix(0, v.created).UTC(), Handles: v.handles.Load(), ReadOnly: v.meta.ReadOnly, Replica: v.meta.Replica.clone(),
		Recounting: v.meta.WrittenStale}
}

// Volumes lists the volumes, by name.
func (p *Pool) Volumes() []VolumeInfo {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.vmu.RLock()
	out := make([]VolumeInfo, 0, len(p.byName))
	for _, v := range p.byName {
		out = append(out, p.infoLocked(v))
	}
	p.vmu.RUnlock()
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}

// VolumeInfo describes one volume.
func (p *Pool) VolumeInfo(name string) (VolumeInfo, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(name)
	if v == nil {
		return VolumeInfo{}, notFound(name)
	}
	return p.infoLocked(v), nil
}

func notFound(name string) error {
	return fmt.Errorf("%w: volume %q does not exist", blockdev.ErrNotFound, name)
}

func checkSize(size int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("%w: size must be greater than zero", ErrInvalidSize)
	case size%cdp.BlockSize != 0:
		return fmt.Errorf("%w: size %d is not a multiple of 4 KiB", ErrInvalidSize, size)
	case size > MaxVolumeSize:
		return fmt.Errorf("%w: size %d is larger than the maximum (1 EiB)", ErrInvalidSize, size)
	}
	return nil
}

// CreateVolume creates a thin volume. It is durable when this returns.
func (p *Pool) CreateVolume(name string, size int64) (VolumeInfo, error) {
	if err := ValidateName(name); err != nil {
		return VolumeInfo{}, err
	}
	if err := checkSize(size); err != nil {
		return VolumeInfo{}, err
	}
	p.wmu.Lock()
	if p.lookup(name) != nil {
		p.wmu.Unlock()
		return VolumeInfo{}, fmt.Errorf("volume %q %w", name, ErrExists)
	}
	r := &cdp.Record{Kind: cdp.KindVolumeCreate, Length: uint64(size), Meta: []byte(name)}
	err := p.appendLocked(r)
	var info VolumeInfo
	if err == nil {
		info = p.infoLocked(p.lookup(name))
	}
	p.wmu.Unlock()
	if err != nil {
		return VolumeInfo{}, err
	}
	return info, p.Flush()
}

// DeleteVolume deletes a volume. Its space is reclaimed later by garbage
// collection; its history stays in the journal until then. A volume with
// open devices is refused unless force (the caller disconnects them first).
func (p *Pool) DeleteVolume(name string, force bool) error {
	p.wmu.Lock()
	v := p.lookup(name)
	if v == nil {
		p.wmu.Unlock()
		return notFound(name)
	}
	if n := v.handles.Load(); n > 0 && !force {
		p.wmu.Unlock()
		return fmt.Errorf("%w: volume %q is attached by %d connection(s)", ErrBusy, name, n)
	}
	err := p.appendLocked(&cdp.Record{Kind: cdp.KindVolumeDelete, Volume: v.id})
	if err == nil {
		// Its replication pins go with it (ShipPins hides any left by a
		// crash before they were deleted).
		for id, pin := range p.wmu.ship {
			if pin.Vol == v.id {
				delete(p.wmu.ship, id)
				if derr := p.db.Delete(append([]byte{prefixShipPin}, id...), pebble.NoSync); derr != nil {
					p.opts.Logger.Warn("could not drop a deleted volume's replication pin", "pin", id, "err", derr)
				}
			}
		}
	}
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	return p.Flush()
}

// ResizeVolume changes a volume's size. Growing is always allowed. Shrinking
// is refused when written blocks lie past the new end, unless force, which
// discards them.
func (p *Pool) ResizeVolume(name string, size int64, force bool) error {
	if err := checkSize(size); err != nil {
		return err
	}
	p.wmu.Lock()
	v := p.lookup(name)
	if v == nil {
		p.wmu.Unlock()
		return notFound(name)
	}
	old := v.size.Load()
	if size < old && !force {
		var data int64
		err := p.resolve(p.db, v, uint64(size)/cdp.BlockSize, uint64(old-1)/cdp.BlockSize, Head, func(_ uint64, e entry) bool {
			if e.kind == entryData {
				data++
			}
			return true
		})
		if err == nil && data > 0 {
			err = fmt.Errorf("%w: %d written blocks (%d bytes) lie past the new end of %q; use --force to discard them",
				ErrShrinkData, data, data*cdp.BlockSize, name)
		}
		if err != nil {
			p.wmu.Unlock()
			return err
		}
	}
	if size == old {
		p.wmu.Unlock()
		return nil
	}
	err := p.appendLocked(&cdp.Record{Kind: cdp.KindVolumeResize, Volume: v.id, Length: uint64(size)})
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	return p.Flush()
}

// Flush makes every completed write in the pool durable.
func (p *Pool) Flush() error {
	if err := p.j.Load().Sync(); err != nil {
		return classify(err)
	}
	return nil
}

// Checkpoint persists the index so recovery replays less of the journal.
func (p *Pool) Checkpoint() error {
	if err := p.db.Flush(); err != nil {
		return fmt.Errorf("cow: checkpoint: %w", err)
	}
	return nil
}

func (p *Pool) checkpointer(stop <-chan struct{}) {
	defer close(p.done)
	if p.opts.CheckpointInterval < 0 {
		<-stop
		return
	}
	t := time.NewTicker(p.opts.CheckpointInterval)
	defer t.Stop()
	var last uint64
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			p.wmu.Lock()
			applied := p.wmu.applied
			p.wmu.Unlock()
			if applied != last {
				if err := p.Checkpoint(); err != nil {
					p.opts.Logger.Error("checkpoint failed", "err", err)
				}
				last = applied
			}
		}
	}
}

// FsyncLatency is the journal's fsync latency histogram.
func (p *Pool) FsyncLatency() cdp.FsyncStats { return p.j.Load().FsyncLatency() }

// Stats describe the pool.
type Stats struct {
	Volumes     int         `json:"volumes"`
	Journal     cdp.Stats   `json:"journal"`
	Cache       cache.Stats `json:"cache"`
	ReadAhead   int64       `json:"read_ahead_bytes"` // journal bytes hinted by read-ahead
	AppliedSeq  uint64      `json:"applied_seq"`
	IndexBytes  uint64      `json:"index_bytes"`
	IndexMemory IndexMemory `json:"index_memory"`
	// ReadDamaged counts reads since the pool opened that found a block
	// failing its checksum (answered with an I/O error; the log names
	// each block once). Damage recovery met is in Damaged.
	ReadDamaged  int64  `json:"read_damaged_blocks,omitempty"`
	JournalError string `json:"journal_error,omitempty"`
	// Damaged lists records recovery found with damaged data blocks: they
	// read as I/O errors; everything else serves (P8). Blocks a scrub has
	// since repaired are left out.
	Damaged []cdp.Damage `json:"damaged,omitempty"`
}

// IndexMemory is what the block index holds in memory; --index-cache and
// the memtable size bound it.
type IndexMemory struct {
	HeadMapBytes    int64  `json:"head_map_bytes"`    // head map pages present
	MemTableBytes   uint64 `json:"memtable_bytes"`    // the index's memtables (written keys not yet in files)
	BlockCacheBytes int64  `json:"block_cache_bytes"` // the index files' block cache
	// Head-map pages loaded since the pool opened, and how many of them
	// were read from the index (the others: pages no record touched).
	HeadLoads      int64 `json:"head_loads"`
	HeadLoadsSeeks int64 `json:"head_loads_seeks"`
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	p.wmu.Lock()
	applied := p.wmu.applied
	p.wmu.Unlock()
	p.vmu.RLock()
	n := len(p.byName)
	p.vmu.RUnlock()
	j := p.j.Load()
	m := p.db.Metrics()
	st := Stats{Volumes: n, Journal: j.Stats(), Cache: p.cache.Stats(), ReadAhead: p.prefetched.Load(), AppliedSeq: applied, IndexBytes: m.DiskSpaceUsage(),
		IndexMemory: IndexMemory{HeadMapBytes: p.head.bytes(), MemTableBytes: m.MemTable.Size, BlockCacheBytes: m.BlockCache.Size,
			HeadLoads: p.headLoads.Load(), HeadLoadsSeeks: p.headSeeks.Load()},
		ReadDamaged: p.readDamage.Load()}
	st.Cache.AddRecent(p.opts.CacheSize, j.TailBytes(), p.recentHits.Load())
	st.Damaged = p.stillDamaged(j.Damaged())
	if err := j.Err(); err != nil {
		st.JournalError = err.Error()
	}
	return st
}

// Close syncs the journal, persists the index and closes both.
func (p *Pool) Close() error {
	p.wmu.Lock()
	if p.stop == nil {
		p.wmu.Unlock()
		return ErrClosed
	}
	p.wmu.closed = true
	close(p.stop)
	p.stop = nil
	p.wmu.Unlock()
	<-p.done
	p.recountWG.Wait()
	p.gcMu.Lock() // a GC pass called directly finishes first
	defer p.gcMu.Unlock()
	p.closeMu.Lock()
	p.isClosed = true
	p.closeMu.Unlock()
	j := p.j.Load()
	p.saveActivity()
	err := j.Sync()
	if err == nil {
		// With the journal synced, persisting the index lets the next
		// open skip replay.
		p.flushIndexOnClose()
	}
	if cerr := p.db.Close(); err == nil {
		err = cerr
	}
	if cerr := j.Close(); err == nil {
		err = cerr
	}
	p.vmu.RLock()
	for _, v := range p.byName {
		v.gone.Store(true)
	}
	p.vmu.RUnlock()
	p.cache.Close()
	return err
}

// DefaultIndexMemTableSize is the index's memtable size. Every write
// inserts its block keys into the memtable's skiplist, the largest single
// cost of a 4 KiB write, and an insert costs more the larger the list
// (more levels, and a node to find per level in memory that is not in the
// CPU's cache): random 4 KiB writes to a new volume at QD32 went at
// 89.0k IOPS with 32 MiB, 92.0k with 8 MiB and 95.7k with 4 MiB (40 s
// each, 2026-12-03). Smaller memtables are flushed more often, so a
// restart also replays less of the journal.
const DefaultIndexMemTableSize = 4 << 20

// indexStopWrites is pebble's MemTableStopWritesThreshold for the index:
// writes wait while the queued memtables reach this many times the
// memtable size.
const indexStopWrites = 2

// flushIndexOnClose persists the index's memtables, unless a flush fails
// (a full disk): pebble would retry forever, and the journal, synced,
// holds every record the next open re-indexes.
func (p *Pool) flushIndexOnClose() {
	const msg = "index: could not be persisted at close (is the disk full?); the next start re-indexes the journal's tail"
	fails := p.indexFlushFails.Load()
	// AsyncFlush first waits (holding pebble's commit lock, which Close
	// needs) until the queued memtables are below the stop-writes
	// threshold: behind a flush that keeps failing it would wait forever.
	// Call it only when it cannot wait; otherwise the next open replays.
	if p.indexFlushFailing.Load() {
		p.opts.Logger.Warn(msg)
		return
	}
	if m := p.db.Metrics(); m.MemTable.Size >= indexStopWrites*uint64(p.opts.IndexMemTableSize) {
		p.opts.Logger.Info("index: not persisted at close (a flush is pending); the next start re-indexes the journal's tail")
		return
	}
	done, err := p.db.AsyncFlush()
	if err != nil {
		p.opts.Logger.Warn("index: not persisted at close; the next start re-indexes the journal's tail", "err", err)
		return
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			if p.indexFlushFails.Load() > fails {
				p.opts.Logger.Warn(msg)
				return
			}
		}
	}
}

// pebbleLogger sends pebble's messages to slog at debug level (errors at
// error level, each kind of message at most once every 10 seconds: pebble
// retries a failed flush every few milliseconds, e.g. while the disk is
// full).
type pebbleLogger struct {
	l *slog.Logger

	mu     sync.Mutex
	recent map[string]*logBurst // by format string
}

type logBurst struct {
	last       time.Time
	suppressed int
}

func (l *pebbleLogger) Infof(format string, args ...interface{}) {
	l.l.Debug("index: " + fmt.Sprintf(format, args...))
}
func (l *pebbleLogger) Errorf(format string, args ...interface{}) {
	l.mu.Lock()
	if l.recent == nil {
		l.recent = map[string]*logBurst{}
	}
	b := l.recent[format]
	if b == nil {
		if len(l.recent) > 100 {
			clear(l.recent)
		}
		b = &logBurst{}
		l.recent[format] = b
	}
	if time.Since(b.last) < 10*time.Second {
		b.suppressed++
		l.mu.Unlock()
		return
	}
	n := b.suppressed
	b.last, b.suppressed = time.Now(), 0
	l.mu.Unlock()
	if n > 0 {
		l.l.Error("index: "+fmt.Sprintf(format, args...), "similar_errors_not_logged", n)
		return
	}
	l.l.Error("index: " + fmt.Sprintf(format, args...))
}
func (l *pebbleLogger) Fatalf(format string, args ...interface{}) {
	// Pebble calls Fatalf on a broken internal invariant and must not
	// continue; exiting keeps the journal (the truth) untouched.
	l.l.Error("index: fatal: " + fmt.Sprintf(format, args...))
	os.Exit(70)
}
