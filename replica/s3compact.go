package replica

import (
	"context"
	"fmt"
	"hash/crc32"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/strata-storage/strata/cow"
)

// Retention bounds the history an S3 target keeps of a volume. The
// points a target can restore are the ends of its complete batches
// (each shipping run ends one). Retention keeps every such point inside
// Window, plus the points Keep selects among all of them, plus the
// newest; the oldest of those becomes the volume's base (a synthetic full
// copy), and the batches between two kept points older than the window
// are merged into one diff. Points not kept can no longer be restored.
type Retention struct {
	// Window keeps every point not older than Window (0: none by age).
	Window time.Duration
	// Keep, when set, marks which of the points (given by time, in
	// stream order) to keep: the snapshot schedule's thinning rules.
	Keep func(times []time.Time) []bool
	// Granularity: the window's start moves in steps of Granularity
	// (default DefaultGranularity), so that the base is rewritten once a
	// step rather than after every run; the target holds up to Window
	// plus Granularity of history.
	Granularity time.Duration
	// Policy describes the policy for the manifest and messages, e.g.
	// "keep-history 7d" or "keep-history 7d, keep daily=14".
	Policy string
}

// DefaultGranularity is a seventh of the window, at least a second and at
// most a day; an hour without a window (the keep rules alone: points of
// the last hour always stay).
func DefaultGranularity(window time.Duration) time.Duration {
	if window <= 0 {
		return time.Hour
	}
	return min(max(window/7, time.Second), 24*time.Hour)
}

// cutoff is the time points at or after which always stay.
func (r Retention) cutoff(now time.Time) time.Time {
	g := r.Granularity
	if g <= 0 {
		g = DefaultGranularity(r.Window)
	}
	if r.Window <= 0 {
		return now.Truncate(g).Add(-g)
	}
	return now.Add(-r.Window).Truncate(g)
}

// IsZero reports whether the policy keeps everything.
func (r Retention) IsZero() bool { return r.Window <= 0 && r.Keep == nil }

// CompactOptions configure Compact.
type CompactOptions struct {
	Retention Retention
	// Now is the clock (default time.Now): a point is inside the window
	// when its time is at or after Now()-Window.
	Now func() time.Time
	// BatchBytes bounds the data of one merged object (default
	// DefaultBatchBytes).
	BatchBytes int64
	// Progress is told each step, for the user.
	Progress func(CompactProgress)
	// Hook, for tests, runs after each step named in CompactProgress.Step
	// ("object" after each new object, "manifest" once the new manifest
	// is written, "delete" after each superseded object is deleted); an
	// error it returns stops the compaction there, as a crash would.
	Hook func(step string) error
}

// CompactProgress reports a compaction's work so far.
type CompactProgress struct {
	Step    string `json:"step"`
	Objects int    `json:"objects"` // new objects written
	Deleted int    `json:"deleted"` // superseded batch objects deleted
	Bytes   int64  `json:"bytes"`   // data merged
}

// Compacted reports a compaction.
type Compacted struct {
	Volume string `json:"volume"`
	// Before and After count the manifest's batch entries and the bytes
	// their objects store (before erasure coding).
	BatchesBefore int   `json:"batches_before"`
	BatchesAfter  int   `json:"batches_after"`
	BytesBefore   int64 `json:"bytes_before"`
	BytesAfter    int64 `json:"bytes_after"`
	// Written and Deleted count objects put and deleted (shards with
	// erasure coding); Leftovers, objects of an interrupted compaction or
	// run that this one deleted first.
	Written   int `json:"written"`
	Deleted   int `json:"deleted"`
	Leftovers int `json:"leftovers"`
	// Oldest is the oldest point the target can restore now.
	OldestSeq  uint64    `json:"oldest_seq"`
	OldestTime time.Time `json:"oldest_time"`
	// Points counts the points the target can restore (batch ends).
	Points   int           `json:"points"`
	Policy   string        `json:"policy"`
	Duration time.Duration `json:"duration_ns"`
}

// ManifestBase records that history before a point was compacted away.
type ManifestBase struct {
	// Seq and Time: the oldest point the target holds.
	Seq  uint64 `json:"seq"`
	Time int64  `json:"time"`
	// Policy is the retention policy that compacted it.
	Policy string `json:"policy"`
	// Compacted is when (Unix nanoseconds).
	Compacted int64 `json:"compacted"`
}

// ErrRetention: a restore asked for a point the retention policy no
// longer keeps (also a cow.ErrPoint).
var ErrRetention = fmt.Errorf("%w: history compacted", cow.ErrPoint)

// retainedEnds returns the indexes in m.Batches of the complete batch
// ends that r keeps at now, in order. The newest end always stays.
func retainedEnds(m *Manifest, r Retention, now time.Time) []int {
	var ends []int
	for i, e := range m.Batches[:completeLen(m)] {
		if !e.Partial {
			ends = append(ends, i)
		}
	}
	if len(ends) == 0 || r.IsZero() {
		return ends
	}
	keep := make([]bool, len(ends))
	keep[len(keep)-1] = true
	cutoff := r.cutoff(now).UnixNano()
	for i, j := range ends {
		if m.Batches[j].Time >= cutoff {
			keep[i] = true
		}
	}
	// The window's oldest moment is restorable too: keep the newest point
	// before it, so that a restore at any time inside the window finds
	// the state at that time.
	for i := len(ends) - 1; r.Window > 0 && i >= 0; i-- {
		if m.Batches[ends[i]].Time < cutoff {
			keep[i] = true
			break
		}
	}
	if r.Keep != nil {
		times := make([]time.Time, len(ends))
		for i, j := range ends {
			times[i] = time.Unix(0, m.Batches[j].Time)
		}
		for i, k := range r.Keep(times) {
			keep[i] = keep[i] || k
		}
	}
	var out []int
	for i, j := range ends {
		if keep[i] {
			out = append(out, j)
		}
	}
	return out
}

// compactPlan is a manifest's entries cut into segments, each ending at a
// retained point: a segment of more than one batch is merged into one.
type segment struct {
	lo, hi int  // entries lo..hi (inclusive)
	merge  bool // rewrite as one diff
}

func planSegments(m *Manifest, kept []int) []segment {
	var segs []segment
	lo := 0
	for _, hi := range kept {
		// One batch, or the parts of one diff, is already one unit.
		one := lo == hi || m.Batches[lo].Diff && m.Batches[lo].From == m.Batches[hi].From && m.Batches[hi].Diff
		segs = append(segs, segment{lo: lo, hi: hi, merge: !one})
		lo = hi + 1
	}
	return segs
}

// Compact applies a retention policy to volume vol's history: it deletes
// leftovers of interrupted runs, merges the batches before the oldest
// retained point into a base (a full copy at that point) and the batches
// between retained points older than the window into one diff each, and
// deletes the objects they replace. Every step leaves a restorable target:
// the new objects are written first, then the manifest that lists them
// (on every target), and only then are the old objects deleted; a run
// interrupted before its manifest leaves orphans that the next Open or
// Compact deletes. The caller must make sure no shipping run writes to
// the same volume and target meanwhile.
func (s *S3) Compact(ctx context.Context, vol string, o CompactOptions) (Compacted, error) {
	start := time.Now()
	res := Compacted{Volume: vol, Policy: o.Retention.Policy}
	if err := checkVolumeName(vol); err != nil {
		return res, err
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = DefaultBatchBytes
	}
	hook := func(step string) error {
		if o.Progress != nil {
			o.Progress(CompactProgress{Step: step, Objects: res.Written, Deleted: res.Deleted})
		}
		if o.Hook != nil {
			return o.Hook(step)
		}
		return nil
	}
	var m Manifest
	cached := s.vol == vol && s.man != nil
	if cached {
		// Right after a shipping run on this target: its manifest is
		// the current one.
		m = *s.man
	} else {
		mans, errs := s.readManifests(ctx, vol)
		best := pickManifest(mans)
		if best == nil {
			_, err := s.Manifest(ctx, vol)
			return res, err
		}
		if err := s.checkCoding(best); err != nil {
			return res, err
		}
		for i, err := range errs {
			if err == nil {
				s.gen = max(s.gen, mans[i].Gen)
			}
		}
		m = *best
		// Stale manifests first, as Open does: the leftovers deleted
		// below are the objects best does not list, which a stale
		// manifest (a run interrupted while writing the manifest) may
		// still list; losing best's copies would then leave a target
		// whose manifest names deleted objects.
		var stale []int
		for i := range s.targets {
			if mans[i] == nil || mans[i].Gen != best.Gen || mans[i].Acked != best.Acked {
				stale = append(stale, i)
			}
		}
		if len(stale) > 0 {
			if err := s.putManifest(ctx, vol, &m, stale); err != nil {
				return res, fmt.Errorf("compact %s: bring the stale manifests up to date: %w", vol, err)
			}
		}
	}
	// An unfinished diff goes, as Open drops it: the next run ships it
	// again. Its objects stay until a manifest no longer lists them.
	stored := m
	if n := completeLen(&m); n < len(m.Batches) {
		m.Batches = m.Batches[:n:n]
		m.Snapshots = slices.DeleteFunc(slices.Clone(m.Snapshots), func(sn ManifestSnapshot) bool { return sn.Batch >= n })
	}
	for _, e := range m.Batches {
		res.BytesBefore += e.Stored
	}
	res.BatchesBefore = len(m.Batches)

	kept := retainedEnds(&m, o.Retention, now())
	segs := planSegments(&m, kept)
	work := false
	for _, sg := range segs {
		work = work || sg.merge
	}
	res.Points = len(kept)
	if !work && cached {
		// After a shipping run, whose Open deleted the leftovers.
		res.BatchesAfter, res.BytesAfter = res.BatchesBefore, res.BytesBefore
		res.fillOldest(&m)
		res.Duration = time.Since(start)
		return res, nil
	}

	// Leftovers first: objects no manifest lists (an interrupted
	// compaction's new objects, or its superseded ones once the manifest
	// moved on).
	orphans, _, err := s.listOrphans(ctx, vol, &stored, false)
	if err != nil {
		return res, err
	}
	if err := s.deleteOrphans(ctx, orphans); err != nil {
		return res, err
	}
	for _, o := range orphans {
		res.Leftovers += len(o)
	}
	if !work || len(kept) == 0 {
		res.BatchesAfter, res.BytesAfter = res.BatchesBefore, res.BytesBefore
		res.fillOldest(&m)
		res.Duration = time.Since(start)
		return res, nil
	}

	// Write the new objects.
	s.gen++
	gen := s.gen
	next := m
	next.Batches = nil
	next.Snapshots = nil
	var superseded []string
	for _, sg := range segs {
		if !sg.merge {
			for i := sg.lo; i <= sg.hi; i++ {
				idx := len(next.Batches)
				next.Batches = append(next.Batches, m.Batches[i])
				for _, sn := range m.Snapshots {
					if sn.Batch == i {
						sn.Batch = idx
						next.Snapshots = append(next.Snapshots, sn)
					}
				}
			}
			continue
		}
		// Snapshots that read as the segment's end stay (mergeSegment
		// keeps those no change follows); the others can no longer be
		// restored.
		var snaps []ManifestSnapshot
		for _, sn := range m.Snapshots {
			if sn.Batch >= sg.lo && sn.Batch <= sg.hi {
				snaps = append(snaps, sn)
			}
		}
		put := func(b *Batch) error {
			idx := len(next.Batches)
			name := fmt.Sprintf("b-%020d-%020d-c%d-%d.srb", b.From, b.To, gen, idx)
			frame, raw, err := EncodeBatch(b)
			if err != nil {
				return err
			}
			if err := s.putObject(ctx, vol, name, frame); err != nil {
				return err
			}
			res.Written++
			next.Batches = append(next.Batches, ManifestEntry{
				Key: name, From: b.From, To: b.To, Diff: true, Partial: b.Partial, Time: b.Time, Size: b.Size,
				Raw: int64(raw), Stored: int64(len(frame)), CRC: crc32.Checksum(frame, castagnoli),
			})
			if !b.Partial {
				// A kept snapshot now reads as the merged diff's end:
				// its OpSnapshot moved there, and a restore resolves the
				// snapshot to this seq (inside the diff it would stop
				// at the diff's start, the previous kept point).
				for _, sn := range snaps {
					sn.Batch, sn.Seq = idx, b.To
					next.Snapshots = append(next.Snapshots, sn)
				}
			}
			return hook("object")
		}
		if err := s.mergeSegment(ctx, vol, m.Batches[sg.lo:sg.hi+1], &snaps, o.BatchBytes, put); err != nil {
			return res, err
		}
		for i := sg.lo; i <= sg.hi; i++ {
			superseded = append(superseded, m.Batches[i].Key)
		}
	}
	oldest := next.Batches[0]
	for _, e := range next.Batches {
		if !e.Partial {
			oldest = e
			break
		}
	}
	next.Base = &ManifestBase{Seq: oldest.To, Time: oldest.Time, Policy: o.Retention.Policy, Compacted: now().UnixNano()}
	next.Format = manifestFormatBase

	// Then the manifest, on every target: a reader takes the highest
	// generation at the same Acked.
	s.gen = gen - 1
	if err := s.putManifest(ctx, vol, &next, nil); err != nil {
		return res, fmt.Errorf("compact %s: write the manifest: %w (the next run deletes the objects written)", vol, err)
	}
	if s.vol == vol && s.man != nil {
		s.man = &next
	}
	if err := hook("manifest"); err != nil {
		return res, err
	}

	// Last, the objects the manifest no longer lists.
	for _, key := range superseded {
		err := s.onTargets(nil, func(i int, t *s3Target) error {
			if err := t.client.RemoveObject(ctx, t.bucket, t.key(vol, key), minio.RemoveObjectOptions{}); err != nil {
				return t.classify("delete", t.key(vol, key), err)
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("compact %s: delete superseded objects: %w (the next run deletes the rest)", vol, err)
		}
		res.Deleted++
		if err := hook("delete"); err != nil {
			return res, err
		}
	}
	res.BatchesAfter = len(next.Batches)
	res.BytesAfter = 0
	for _, e := range next.Batches {
		res.BytesAfter += e.Stored
	}
	res.fillOldest(&next)
	res.Duration = time.Since(start)
	return res, nil
}

func (c *Compacted) fillOldest(m *Manifest) {
	for _, e := range m.Batches {
		if !e.Partial {
			c.OldestSeq, c.OldestTime = e.To, time.Unix(0, e.Time).UTC()
			return
		}
	}
}

// span is a byte range [off, end).
type span struct{ off, end uint64 }

// spanSet is a sorted set of disjoint, non-adjacent spans.
type spanSet []span

// gaps returns the parts of [off, end) the set does not cover.
func (s spanSet) gaps(off, end uint64) []span {
	var out []span
	i := sort.Search(len(s), func(i int) bool { return s[i].end > off })
	for ; off < end && i < len(s) && s[i].off < end; i++ {
		if s[i].off > off {
			out = append(out, span{off, s[i].off})
		}
		off = max(off, s[i].end)
	}
	if off < end {
		out = append(out, span{off, end})
	}
	return out
}

// add covers [off, end).
func (s *spanSet) add(off, end uint64) {
	if off >= end {
		return
	}
	a := *s
	i := sort.Search(len(a), func(i int) bool { return a[i].end >= off })
	j := i
	for j < len(a) && a[j].off <= end {
		off, end = min(off, a[j].off), max(end, a[j].end)
		j++
	}
	*s = slices.Replace(a, i, j, span{off, end})
}

// mergeSegment reads entries (newest first) and hands put one diff from
// the first entry's start to the last entry's end, in parts of at most
// batchBytes of data: each byte comes from the newest op that touched it,
// so the parts' ops do not overlap and apply in any order after the
// leading resize. Memory holds one batch read and one part. Of snaps,
// those no change follows stay (named in the last part); the others go.
func (s *S3) mergeSegment(ctx context.Context, vol string, entries []ManifestEntry, snaps *[]ManifestSnapshot, batchBytes int64, put func(*Batch) error) error {
	first, last := entries[0], entries[len(entries)-1]
	from, to, size, tm := first.From, last.To, last.Size, last.Time
	var covered spanSet
	var changed uint64 // the newest change's seq
	part := &Batch{From: from, To: to, Diff: true, Partial: true, Size: size, Time: tm}
	part.Ops = append(part.Ops, Op{Kind: OpResize, Seq: to, Time: tm, Length: uint64(size)})
	var data int64
	emit := func(op Op) error {
		op.Seq, op.Time = to, tm
		if op.Kind == OpWrite && data > 0 && data+int64(len(op.Data)) > batchBytes {
			if err := put(part); err != nil {
				return err
			}
			part = &Batch{From: from, To: to, Diff: true, Partial: true, Size: size, Time: tm}
			data = 0
		}
		part.Ops = append(part.Ops, op)
		data += int64(len(op.Data))
		return nil
	}
	for i := len(entries) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := s.ReadBatch(ctx, vol, entries[i])
		if err != nil {
			return fmt.Errorf("compact %s: %w", vol, err)
		}
		for k := len(b.Ops) - 1; k >= 0 && err == nil; k-- {
			op := &b.Ops[k]
			if op.Kind != OpSnapshot && op.Kind != OpPoint {
				changed = max(changed, op.Seq)
			}
			switch op.Kind {
			case OpWrite, OpZero, OpTrim:
				end := min(op.Offset+op.Length, uint64(size))
				for _, g := range covered.gaps(op.Offset, end) {
					n := Op{Kind: op.Kind, Offset: g.off, Length: g.end - g.off, NoHole: op.NoHole}
					if op.Kind == OpWrite {
						n.Data = append([]byte(nil), op.Data[g.off-op.Offset:g.end-op.Offset]...)
					}
					if err = emit(n); err != nil {
						break
					}
				}
				covered.add(op.Offset, op.Offset+op.Length)
			case OpResize:
				// Older data past the size it set reads as zeros.
				for _, g := range covered.gaps(op.Length, uint64(size)) {
					if err = emit(Op{Kind: OpTrim, Offset: g.off, Length: g.end - g.off}); err != nil {
						break
					}
				}
				covered.add(op.Length, ^uint64(0))
			}
		}
		b.Release()
		if err != nil {
			return err
		}
	}
	part.Partial = false
	*snaps = slices.DeleteFunc(*snaps, func(sn ManifestSnapshot) bool { return sn.Seq < changed })
	for _, sn := range *snaps {
		part.Ops = append(part.Ops, Op{Kind: OpSnapshot, Seq: to, Time: sn.Time, Name: sn.Name, Label: sn.Label,
			Scheduled: sn.Scheduled, AppConsistent: sn.AppConsistent})
	}
	part.Ops = append(part.Ops, Op{Kind: OpPoint, Seq: to, Time: tm})
	return put(part)
}

// retentionError refuses a restore point older than what m keeps.
func retentionError(m *Manifest, point string) error {
	first := m.Batches[0]
	for _, e := range m.Batches {
		if !e.Partial {
			first = e
			break
		}
	}
	policy := ""
	if m.Base.Policy != "" {
		policy = " (" + m.Base.Policy + ")"
	}
	return fmt.Errorf("%w: %s is older than the oldest point %s keeps, seq:%d at %s: the retention policy%s compacted the history before it; restore at seq:%d or later",
		ErrRetention, point, m.Volume, first.To, time.Unix(0, first.Time).UTC().Format(time.RFC3339), policy, first.To)
}

// String is a one-line summary for messages and logs.
func (c Compacted) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d batch objects (%d bytes) -> %d (%d bytes); wrote %d, deleted %d",
		c.Volume, c.BatchesBefore, c.BytesBefore, c.BatchesAfter, c.BytesAfter, c.Written, c.Deleted)
	if c.Leftovers > 0 {
		fmt.Fprintf(&b, ", %d leftovers", c.Leftovers)
	}
	fmt.Fprintf(&b, "; oldest point seq:%d at %s", c.OldestSeq, c.OldestTime.Format(time.RFC3339))
	return b.String()
}
