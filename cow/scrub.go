package cow

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/strata-storage/strata/cdp"
)

// Scrub: proof that the bytes the pool keeps are still good. A pass reads
// every record of the journal and checks its framing and every block's
// checksum, then walks every data version in the index and checks that the
// block it points at exists and checksums (the index and the journal
// agree). A damaged version is reported with what reads it: the volume, the
// points that see it, the snapshots and clones among them. Where a good
// copy can be fetched (a replica site, ScrubOptions.Fetch), it is checked
// against the version's own checksum and written back as a relocate record:
// the index then points at the good copy, and the damaged bytes stay where
// they are, read by nothing, until garbage collection drops their segment.

// ScrubOptions configure a scrub pass.
type ScrubOptions struct {
	// Volume limits the pass to the versions of one volume ("": the pool).
	Volume string
	// Rate bounds the bytes read a second (0: as fast as the disk goes).
	Rate int64
	// Progress, if set, is called now and then with the pass's progress.
	Progress func(ScrubProgress)
	// Fetch, if set, returns a good copy of a damaged block version (from
	// a replica site). Its answer is checked against the version's own
	// checksum before it is used; from names where it came from.
	Fetch func(ctx context.Context, b DamagedBlock) (data []byte, from string, err error)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// ScrubProgress is how far a pass is.
type ScrubProgress struct {
	// Phase: "journal" (reading every record) or "index" (checking every
	// version the index holds), then "repair".
	Phase        string `json:"phase"`
	BytesChecked int64  `json:"bytes_checked"`
	// BytesTotal is what the pass will read, as far as known at its start.
	BytesTotal  int64 `json:"bytes_total"`
	ErrorsFound int   `json:"errors_found"`
	Repaired    int   `json:"repaired"`
}

// DamagedBlock is a block version whose bytes fail their checksum, and what
// it affects.
type DamagedBlock struct {
	Volume   string `json:"volume"`
	VolumeID uint64 `json:"volume_id"`
	Offset   int64  `json:"offset"` // byte offset in the volume
	// Seq is the sequence number of the write that made this version; it
	// is what the volume reads at points Seq up to VisibleUntil
	// (exclusive; 0: up to the head).
	Seq          uint64 `json:"seq"`
	VisibleUntil uint64 `json:"visible_until,omitempty"`
	Head         bool   `json:"head"`
	CRC          uint32 `json:"crc"`
	// Where the damaged bytes are.
	Segment       uint64 `json:"segment"`
	SegmentOffset int64  `json:"segment_offset"`
	// Snapshots of the volume that read this version; Clones: volumes
	// (clones, and rollbacks of this one) whose base point reads it.
	Snapshots []string `json:"snapshots,omitempty"`
	Clones    []string `json:"clones,omitempty"`
	// Repaired: a good copy was fetched from RepairedFrom and written;
	// otherwise RepairError says why not.
	Repaired     bool   `json:"repaired,omitempty"`
	RepairedFrom string `json:"repaired_from,omitempty"`
	RepairError  string `json:"repair_error,omitempty"`
}

// ScrubReport is the result of a pass.
type ScrubReport struct {
	Volume       string    `json:"volume,omitempty"`
	Started      time.Time `json:"started"`
	Finished     time.Time `json:"finished"`
	BytesChecked int64     `json:"bytes_checked"`
	Segments     int       `json:"segments"`
	Records      int64     `json:"records"`
	Versions     int64     `json:"versions"` // data versions the index holds
	// Damaged are the block versions reads see that fail their checksum.
	Damaged []DamagedBlock `json:"damaged,omitempty"`
	// Unreferenced are damaged blocks in the journal that no version
	// points at (superseded, or already repaired): nothing reads them.
	Unreferenced []cdp.BadBlock `json:"unreferenced,omitempty"`
	// BadRecords are records whose framing is damaged.
	BadRecords []cdp.BadRecord `json:"bad_records,omitempty"`
	// Canceled: the pass stopped before its end.
	Canceled bool `json:"canceled,omitempty"`
}

// ErrorsFound counts the damage found: damaged versions, damaged blocks
// nothing reads, damaged records.
func (r *ScrubReport) ErrorsFound() int {
	return len(r.Damaged) + len(r.Unreferenced) + len(r.BadRecords)
}

// Repaired counts the damaged versions healed.
func (r *ScrubReport) Repaired() int {
	n := 0
	for _, d := range r.Damaged {
		if d.Repaired {
			n++
		}
	}
	return n
}

// Unrepaired counts damage that reads still meet: versions not healed and
// records whose framing is damaged.
func (r *ScrubReport) Unrepaired() int { return len(r.Damaged) - r.Repaired() + len(r.BadRecords) }

// scrubPacer bounds a pass's read rate and reports its progress.
type scrubPacer struct {
	ctx   context.Context
	o     *ScrubOptions
	start time.Time
	prog  ScrubProgress
	last  time.Time
}

func (s *scrubPacer) add(n int64) error {
	s.prog.BytesChecked += n
	now := time.Now()
	if s.o.Rate > 0 {
		due := s.start.Add(time.Duration(float64(s.prog.BytesChecked) / float64(s.o.Rate) * float64(time.Second)))
		if wait := due.Sub(now); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return s.ctx.Err()
			case <-t.C:
			}
		}
	}
	if s.o.Progress != nil && now.Sub(s.last) >= 200*time.Millisecond {
		s.last = now
		s.o.Progress(s.prog)
	}
	return s.ctx.Err()
}

func (s *scrubPacer) report() {
	if s.o.Progress != nil {
		s.o.Progress(s.prog)
	}
}

// Scrub runs one pass (see the comment at the top of scrub.go). It returns
// the report so far and ctx's error when ctx ends first.
func (p *Pool) Scrub(ctx context.Context, o ScrubOptions) (*ScrubReport, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	rep := &ScrubReport{Volume: o.Volume, Started: o.Now().UTC()}
	var only uint64 // volume id, 0: all
	if o.Volume != "" {
		v := p.lookup(o.Volume)
		if v == nil {
			return nil, notFound(o.Volume)
		}
		only = v.id
	}
	unlock, err := p.readLock()
	if err != nil {
		return nil, err
	}
	j := p.j.Load()
	unlock()
	pc := &scrubPacer{ctx: ctx, o: &o, start: time.Now()}
	for _, s := range j.Segments() {
		pc.prog.BytesTotal += s.Size
	}
	pc.prog.BytesTotal += p.writtenBytes(only)
	finish := func(err error) (*ScrubReport, error) {
		rep.BytesChecked = pc.prog.BytesChecked
		rep.Finished = o.Now().UTC()
		if err != nil && ctx.Err() != nil {
			rep.Canceled = true
		}
		pc.prog.ErrorsFound, pc.prog.Repaired = rep.ErrorsFound(), rep.Repaired()
		pc.report()
		return rep, err
	}

	// 1. Every record of the journal.
	pc.prog.Phase = "journal"
	var journalBad []cdp.BadBlock
	vst, err := j.Verify(ctx, pc.add, func(b cdp.BadBlock) {
		if only == 0 || b.Volume == only {
			journalBad = append(journalBad, b)
			pc.prog.ErrorsFound++
		}
	}, func(b cdp.BadRecord) {
		rep.BadRecords = append(rep.BadRecords, b)
		pc.prog.ErrorsFound++
	})
	rep.Segments, rep.Records = vst.Segments, vst.Records
	if err != nil {
		return finish(fmt.Errorf("cow: scrub: %w", err))
	}

	// 2. Every data version of the index: its block exists and checksums.
	pc.prog.Phase = "index"
	damaged, versions, err := p.scrubIndex(ctx, j, only, pc)
	rep.Versions = versions
	if err != nil {
		return finish(fmt.Errorf("cow: scrub: %w", err))
	}
	seen := map[[2]uint64]bool{}
	for _, d := range damaged {
		seen[[2]uint64{d.seg, uint64(d.off)}] = true
	}
	for _, b := range journalBad {
		if !seen[[2]uint64{b.Segment, uint64(b.Offset)}] {
			rep.Unreferenced = append(rep.Unreferenced, b)
		}
	}
	rep.Damaged = p.describeDamage(damaged)
	pc.prog.ErrorsFound = rep.ErrorsFound()

	// 3. Repair what a good copy can be found for.
	if o.Fetch != nil && len(rep.Damaged) > 0 {
		pc.prog.Phase = "repair"
		if err := p.repair(ctx, &o, rep.Damaged); err != nil {
			return finish(err)
		}
		pc.prog.Repaired = rep.Repaired()
	}
	return finish(nil)
}

// writtenBytes estimates the data the index pass reads.
func (p *Pool) writtenBytes(only uint64) int64 {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	var n int64
	for _, v := range p.allVolumesLocked() {
		if only == 0 || v.id == only {
			n += v.written * bs
		}
	}
	return n
}

// badVersion is a damaged version the index pass found.
type badVersion struct {
	vol, block uint64
	entry
}

// Index pass batching: versions are checked in batches sorted by where
// their blocks are, so that neighbours are read with one read (up to
// scrubRun blocks) and a disk sees mostly forward reads.
const (
	scrubBatch = 16384
	scrubRun   = 256
)

// scrubIndex walks the data versions of the index (of volume only, or all)
// and checks each block where it points.
func (p *Pool) scrubIndex(ctx context.Context, j *cdp.Journal, only uint64, pc *scrubPacer) ([]badVersion, int64, error) {
	from, to := uint64(0), uint64(0)
	if only != 0 {
		from, to = only, only+1
	}
	snap := p.db.NewSnapshot()
	defer snap.Close()
	var bad []badVersion
	var versions int64
	batch := make([]badVersion, 0, scrubBatch)
	buf := make([]byte, scrubRun*bs)
	blk := make([]byte, bs)
	check := func() error {
		sort.Slice(batch, func(a, b int) bool {
			if batch[a].seg != batch[b].seg {
				return batch[a].seg < batch[b].seg
			}
			return batch[a].off < batch[b].off
		})
		for i := 0; i < len(batch); {
			k := i + 1
			for k < len(batch) && k-i < scrubRun && batch[k].seg == batch[i].seg && batch[k].off == batch[k-1].off+bs {
				k++
			}
			run := buf[:(k-i)*bs]
			unlock, err := p.readLock()
			if err != nil {
				return err
			}
			ok := j.ReadAt(batch[i].seg, batch[i].off, run) == nil
			unlock()
			for m := i; m < k; m++ {
				b := batch[m]
				if ok && cdp.Checksum(run[(m-i)*bs:(m-i+1)*bs]) == b.crc {
					continue
				}
				// Alone, and against the live index.
				good, err := p.checkVersion(j, b.vol, b.block, b.entry, blk)
				if err != nil {
					return err
				}
				if !good {
					bad = append(bad, b)
					pc.prog.ErrorsFound++
				}
			}
			if err := pc.add(int64(len(run))); err != nil {
				return err
			}
			i = k
		}
		batch = batch[:0]
		return nil
	}
	err := scanVersions(snap, from, to, versionScan{version: func(vol, block uint64, e entry, _ uint64) (bool, error) {
		if e.kind != entryData {
			return false, nil
		}
		versions++
		batch = append(batch, badVersion{vol: vol, block: block, entry: e})
		if len(batch) == scrubBatch {
			return false, check()
		}
		return false, nil
	}})
	if err != nil {
		return nil, versions, err
	}
	return bad, versions, check()
}

// checkVersion reports whether version e of (vol, block) reads back with
// its checksum. A failure is checked again against the live index: garbage
// collection may have moved the version (and removed its old segment)
// since the pass's snapshot, which is not damage. A pool that closed
// meanwhile is an error: the pass can say nothing about the version.
func (p *Pool) checkVersion(j *cdp.Journal, vol, block uint64, e entry, blk []byte) (bool, error) {
	unlock, err := p.readLock()
	if err != nil {
		return false, err
	}
	defer unlock()
	read := func(e entry) bool {
		return j.ReadAt(e.seg, e.off, blk) == nil && cdp.Checksum(blk) == e.crc
	}
	if read(e) {
		return true, nil
	}
	now, found, err := getVersion(p.db, vol, block, e.seq)
	if err != nil {
		return false, nil
	}
	if !found {
		return true, nil // gone since: garbage collection dropped it
	}
	if now.seg != e.seg || now.off != e.off {
		return read(now), nil
	}
	return false, nil
}

// describeDamage says, for each damaged version, what reads it.
func (p *Pool) describeDamage(bad []badVersion) []DamagedBlock {
	if len(bad) == 0 {
		return nil
	}
	out := make([]DamagedBlock, 0, len(bad))
	for _, b := range bad {
		d := DamagedBlock{VolumeID: b.vol, Offset: int64(b.block) * bs, Seq: b.seq, CRC: b.crc, Segment: b.seg, SegmentOffset: b.off}
		d.VisibleUntil = p.nextVersion(b.vol, b.block, b.seq)
		d.Head = d.VisibleUntil == 0
		p.wmu.Lock()
		if v := p.volumeAny(b.vol); v != nil {
			d.Volume = v.name
			until := d.VisibleUntil
			if until == 0 {
				until = math.MaxUint64
			}
			for _, sn := range v.meta.Snapshots {
				if sn.Seq >= b.seq && sn.Seq < until {
					d.Snapshots = append(d.Snapshots, sn.Name)
				}
			}
			for _, o := range p.allVolumesLocked() {
				for _, g := range o.meta.Gens {
					if g.BaseVol == b.vol && g.BaseSeq >= b.seq && g.BaseSeq < until {
						d.Clones = append(d.Clones, fmt.Sprintf("%s (from %s@seq:%d)", o.name, v.name, g.BaseSeq))
					}
				}
			}
		}
		p.wmu.Unlock()
		out = append(out, d)
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Volume != out[b].Volume {
			return out[a].Volume < out[b].Volume
		}
		if out[a].Offset != out[b].Offset {
			return out[a].Offset < out[b].Offset
		}
		return out[a].Seq < out[b].Seq
	})
	return out
}

// nextVersion returns the sequence number of the version of (vol, block)
// after seq (0: none; seq's version is the head's).
func (p *Pool) nextVersion(vol, block, seq uint64) uint64 {
	var next uint64
	blockVersions(p.db, vol, block, func(e entry) bool {
		if e.seq <= seq {
			return false
		}
		next = e.seq // newer versions come first: the last one above seq
		return true
	})
	return next
}

// repairBatch bounds the blocks one repair record carries.
const repairBatch = 256

// repair fetches a good copy of each damaged version, checks it and writes
// the good ones back as relocate records, which point the index at them. A
// version counts as repaired once its record is written and flushed; when
// ctx ends, the copies fetched so far are written before repair returns.
func (p *Pool) repair(ctx context.Context, o *ScrubOptions, ds []DamagedBlock) error {
	var data, meta []byte
	var pending []int
	var froms []string
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		p.wmu.Lock()
		err := p.appendLocked(&cdp.Record{Kind: cdp.KindRelocate, Length: uint64(len(data)), Data: data, Meta: meta})
		p.wmu.Unlock()
		if err == nil {
			err = p.Flush()
		}
		if err != nil {
			for _, i := range pending {
				ds[i].RepairError = "writing the repair failed: " + err.Error()
			}
			return fmt.Errorf("cow: scrub: write repair: %w", err)
		}
		for k, i := range pending {
			ds[i].Repaired, ds[i].RepairedFrom = true, froms[k]
			p.opts.Logger.Info("scrub: damaged block repaired", "volume", ds[i].Volume, "offset", ds[i].Offset,
				"seq", ds[i].Seq, "from", froms[k])
		}
		data, meta, pending, froms = nil, nil, pending[:0], froms[:0]
		return nil
	}
	for i := range ds {
		if err := ctx.Err(); err != nil {
			return errors.Join(err, flush())
		}
		d := &ds[i]
		got, from, err := o.Fetch(ctx, *d)
		switch {
		case err != nil:
			d.RepairError = err.Error()
			continue
		case len(got) != bs || cdp.Checksum(got) != d.CRC:
			d.RepairError = fmt.Sprintf("the copy from %s does not match the block's checksum", from)
			continue
		}
		data = append(data, got...)
		meta = cdp.AppendRelocateEntry(meta, cdp.RelocateEntry{Volume: d.VolumeID, Block: uint64(d.Offset / bs), Seq: d.Seq, CRC: d.CRC})
		pending = append(pending, i)
		froms = append(froms, from)
		if len(pending) == repairBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// ReadVersion returns the version of the block at byte offset off of volume
// vol whose checksum is crc: the newest such version the index holds, read
// and checked. A replica site answers a source's scrub with it.
func (p *Pool) ReadVersion(vol string, off int64, crc uint32) ([]byte, uint64, error) {
	v := p.lookup(vol)
	if v == nil {
		return nil, 0, notFound(vol)
	}
	if off < 0 || off%bs != 0 {
		return nil, 0, fmt.Errorf("%w: offset %d is not block aligned", ErrInvalidSize, off)
	}
	unlock, err := p.readLock()
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	j := p.j.Load()
	block := uint64(off / bs)
	blk := make([]byte, bs)
	var found uint64
	err = blockVersions(p.db, v.id, block, func(e entry) bool {
		if e.kind != entryData || e.crc != crc {
			return true
		}
		if j.ReadAt(e.seg, e.off, blk) == nil && cdp.Checksum(blk) == crc {
			found = e.seq
			return false
		}
		return true
	})
	if err != nil {
		return nil, 0, err
	}
	if found != 0 {
		return blk, found, nil
	}
	return nil, 0, fmt.Errorf("%w: volume %q holds no good version of the block at %d with checksum %08x", ErrNoVersion, vol, off, crc)
}

// ErrNoVersion: the pool holds no good copy of the block version asked for.
var ErrNoVersion = errors.New("cow: no such block version")

// stillDamaged returns the damage recovery met that reads still see: a
// write's block whose version the index now points elsewhere (a scrub
// repaired it) or no longer holds is left out. A relocate's blocks are
// kept as they are (their versions are not in the report).
func (p *Pool) stillDamaged(ds []cdp.Damage) []cdp.Damage {
	var out []cdp.Damage
	for _, d := range ds {
		if d.Kind != cdp.KindWrite.String() {
			out = append(out, d)
			continue
		}
		c := d
		c.Blocks = nil
		for _, b := range d.Blocks {
			off, err := strconv.ParseUint(b, 10, 64)
			if err != nil {
				c.Blocks = append(c.Blocks, b)
				continue
			}
			e, found, err := getVersion(p.db, d.Volume, off/bs, d.Seq)
			if err == nil && !found {
				continue // gone: nothing reads it
			}
			if err != nil || e.kind == entryData && e.seg == d.Segment {
				c.Blocks = append(c.Blocks, b)
			}
		}
		if len(c.Blocks) > 0 {
			out = append(out, c)
		}
	}
	return out
}
