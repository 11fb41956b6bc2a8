package cow

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/cdp"
)

// Write activity: per volume and minute, 'a' vol(8) minute(8) -> count(8).
// Counts are kept in memory for the current minute and added to the stored
// count when the minute turns or the pool closes; a crash loses the
// current minute's count (it is a guide for picking a moment, not an audit
// log).
const prefixActivity = 'a'

func activityKey(vol uint64, minute int64) []byte {
	k := binary.BigEndian.AppendUint64([]byte{prefixActivity}, vol)
	return binary.BigEndian.AppendUint64(k, uint64(minute))
}

// countActivityLocked counts one change to v at time t.
func (a *apply) countActivityLocked(v *volState, t int64) error {
	m := t / int64(time.Minute)
	if m != v.actMinute {
		if err := a.p.addActivity(a.b, v); err != nil {
			return err
		}
		v.actMinute = m
	}
	v.actCount++
	return nil
}

// addActivity adds v's in-memory count to the stored one for its minute.
func (p *Pool) addActivity(b *pebble.Batch, v *volState) error {
	if v.actCount == 0 {
		return nil
	}
	k := activityKey(v.id, v.actMinute)
	n := uint64(v.actCount)
	if old, closer, err := p.db.Get(k); err == nil {
		if len(old) == 8 {
			n += binary.BigEndian.Uint64(old)
		}
		closer.Close()
	}
	v.actCount = 0
	return b.Set(k, binary.BigEndian.AppendUint64(nil, n), nil)
}

// saveActivity stores the current minutes' counts (at close).
func (p *Pool) saveActivity() {
	b := p.db.NewBatch()
	defer b.Close()
	for _, v := range p.allVolumesLocked() {
		p.addActivity(b, v)
	}
	b.Commit(pebble.NoSync)
}

// Bucket is the write activity in one stretch of time.
type Bucket struct {
	Start  time.Time `json:"start"`
	Writes int64     `json:"writes"`
}

// History describes what of a volume's past can be read.
type History struct {
	Volume     string        `json:"volume"`
	Retention  time.Duration `json:"retention"`
	Oldest     Point         `json:"oldest"` // the oldest readable point (window start)
	Newest     Point         `json:"newest"` // the head
	Snapshots  []Snapshot    `json:"snapshots"`
	Activity   []Bucket      `json:"activity"`
	HistoryCut time.Time     `json:"history_cut,omitzero"` // when the size cap last cut history short
	// Branches are where the volume's history forks: the point it was
	// cloned from, its rollbacks, and the clones made of it, oldest first.
	Branches []Branch `json:"branches"`
}

// Branch kinds.
const (
	BranchOrigin   = "origin"   // the volume is a clone of Base
	BranchRollback = "rollback" // from Seq on the volume shows its own earlier point Base
	BranchClone    = "clone"    // Volume is a clone of this volume's point Base
)

// Branch is one fork of a volume's history.
type Branch struct {
	Kind     string    `json:"kind"`
	Volume   string    `json:"volume"` // the volume Base belongs to (origin), the clone (clone), this volume (rollback)
	Seq      uint64    `json:"seq"`    // where the branch starts: the clone's create or the rollback record
	Time     time.Time `json:"time,omitzero"`
	BaseSeq  uint64    `json:"base_seq"` // the point the branch shows
	BaseTime time.Time `json:"base_time,omitzero"`
}

// branchesLocked lists v's branches without their times. wmu is held.
func (p *Pool) branchesLocked(v *volState) []Branch {
	var out []Branch
	for i, g := range v.meta.Gens {
		switch {
		case i == 0 && g.BaseVol != 0:
			name := ""
			if o := p.volumeAny(g.BaseVol); o != nil {
				name = o.name
			}
			out = append(out, Branch{Kind: BranchOrigin, Volume: name, Seq: g.Start, BaseSeq: g.BaseSeq})
		case i > 0:
			out = append(out, Branch{Kind: BranchRollback, Volume: v.name, Seq: g.Start, BaseSeq: g.BaseSeq})
		}
	}
	for _, o := range p.allVolumesLocked() {
		if g := o.meta.Gens[0]; o != v && g.BaseVol == v.id {
			out = append(out, Branch{Kind: BranchClone, Volume: o.name, Seq: g.Start, BaseSeq: g.BaseSeq})
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Seq < out[b].Seq })
	return out
}

// History returns a volume's retained window, snapshots and write activity
// in buckets buckets over the window.
func (p *Pool) History(vol string, buckets int) (History, error) {
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return History{}, notFound(vol)
	}
	now := p.opts.Now()
	w, err := p.windowLocked(v, now)
	if err != nil {
		p.wmu.Unlock()
		return History{}, err
	}
	h := History{Volume: vol, Retention: p.retentionOf(v), HistoryCut: p.wmu.historyCut,
		Snapshots: append([]Snapshot(nil), v.meta.Snapshots...)}
	h.Oldest = Point{Volume: vol, Spec: "seq:" + uitoa(w), Seq: w, Size: v.meta.sizeAt(w)}
	h.Newest = Point{Volume: vol, Spec: "seq:" + uitoa(p.wmu.applied), Seq: p.wmu.applied, Time: now.UTC(), Size: v.size.Load()}
	curMinute, curCount := v.actMinute, v.actCount
	h.Branches = p.branchesLocked(v)
	p.wmu.Unlock()
	h.Oldest.Time = p.oldestTime(v, w)
	for i := range h.Branches {
		b := &h.Branches[i]
		b.Time, b.BaseTime = p.timeOfSeq(b.Seq), p.timeOfSeq(b.BaseSeq)
	}
	if buckets < 1 {
		buckets = 24
	}
	from, to := h.Oldest.Time, now
	span := to.Sub(from)/time.Duration(buckets) + 1
	h.Activity = make([]Bucket, buckets)
	for i := range h.Activity {
		h.Activity[i].Start = from.Add(time.Duration(i) * span).UTC()
	}
	add := func(minute, n int64) {
		t := time.Unix(0, minute*int64(time.Minute))
		if t.Before(from.Truncate(time.Minute)) || t.After(to) {
			return
		}
		i := int(max(t.Sub(from), 0) / span)
		h.Activity[min(i, buckets-1)].Writes += n
	}
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: activityKey(v.id, 0), UpperBound: activityKey(v.id+1, 0)})
	if err != nil {
		return History{}, err
	}
	for ok := it.First(); ok; ok = it.Next() {
		if len(it.Key()) == 17 && len(it.Value()) == 8 {
			add(int64(binary.BigEndian.Uint64(it.Key()[9:])), int64(binary.BigEndian.Uint64(it.Value())))
		}
	}
	it.Close()
	add(curMinute, curCount)
	return h, nil
}

func uitoa(n uint64) string { return strconv.FormatUint(n, 10) }

// VolumeSpace is one volume's line of `strata df`.
type VolumeSpace struct {
	Name        string `json:"name"`
	Provisioned int64  `json:"provisioned"` // size
	Written     int64  `json:"written"`     // data at the head (own or shared with its origin)
	Exclusive   int64  `json:"exclusive"`   // head data no snapshot holds (its own records)
	Shared      int64  `json:"shared"`      // head data that snapshots also hold
	History     int64  `json:"history"`     // data only the retention window holds
	Origin      int64  `json:"origin"`      // old data kept as the origin of clones and rollbacks (or for open readers)
	// SnapshotExclusive: data only this snapshot holds (deleting it frees this).
	SnapshotExclusive map[string]int64 `json:"snapshot_exclusive"`
	// SnapshotsShared: old data that several snapshots hold (and nothing else).
	SnapshotsShared int64 `json:"snapshots_shared"`
	// Reclaimable: what deleting the volume would free, every version
	// nothing else keeps (head, history, snapshots, and the data of
	// deleted volumes only its clones still show), not what other
	// volumes' clones or rollbacks show of it.
	Reclaimable int64 `json:"reclaimable"`
}

// Space is `strata df`.
type Space struct {
	Volumes      []VolumeSpace `json:"volumes"`
	JournalBytes int64         `json:"journal_bytes"` // on disk
	LiveBytes    int64         `json:"live_bytes"`    // data any retained point sees
	Deleted      int64         `json:"deleted"`       // data of deleted volumes that clones still show
	IndexBytes   uint64        `json:"index_bytes"`
	FreeBytes    int64         `json:"free_bytes"` // on the data directory's filesystem
	HistoryCut   time.Time     `json:"history_cut,omitzero"`
}

// Space accounts every block version the pool keeps. It reads the whole
// index (O(versions)): an admin command, not an I/O path.
func (p *Pool) Space() (Space, error) {
	p.wmu.Lock()
	rets, err := p.retainersLocked(p.opts.Now())
	snap := p.db.NewSnapshot()
	sp := Space{HistoryCut: p.wmu.historyCut}
	byID := map[uint64]*VolumeSpace{}
	for id, r := range rets {
		if r.window == 0 {
			continue
		}
		vs := &VolumeSpace{Name: r.v.name, Provisioned: r.v.size.Load(), Written: r.v.written * cdp.BlockSize, SnapshotExclusive: map[string]int64{}}
		for _, sn := range r.v.meta.Snapshots {
			vs.SnapshotExclusive[sn.Name] = 0
		}
		byID[id] = vs
	}
	var own map[uint64][]ownedPoint
	if err == nil {
		own = p.ownedPointsLocked(rets)
	}
	p.wmu.Unlock()
	defer snap.Close()
	if err != nil {
		return sp, err
	}
	snapSeqs := map[uint64][]uint64{}
	snapName := map[uint64]map[uint64][]string{}
	for id, r := range rets {
		m := map[uint64][]string{}
		for _, sn := range r.v.meta.Snapshots {
			m[sn.Seq] = append(m[sn.Seq], sn.Name)
			snapSeqs[id] = append(snapSeqs[id], sn.Seq)
		}
		sort.Slice(snapSeqs[id], func(a, b int) bool { return snapSeqs[id][a] < snapSeqs[id][b] })
		snapName[id] = m
	}
	err = scanVersions(snap, 0, 0, versionScan{version: func(vol, _ uint64, e entry, next uint64) (bool, error) {
		r := rets[vol]
		if e.kind != entryData || r == nil || !r.live(e.seq, next) {
			return false, nil
		}
		sp.LiveBytes += cdp.BlockSize
		if o := soleOwner(r, own[vol], vol, e.seq, next); o != 0 {
			byID[o].Reclaimable += cdp.BlockSize
		}
		vs := byID[vol]
		if vs == nil {
			sp.Deleted += cdp.BlockSize
			return false, nil
		}
		atHead := next == Head && r.genStart(Head) < e.seq
		snaps := r.seenBy(snapSeqs[vol], e.seq, next)
		others := r.seenBy(r.others, e.seq, next)
		switch {
		case atHead && snaps > 0:
			vs.Shared += cdp.BlockSize
		case atHead:
			vs.Exclusive += cdp.BlockSize
		case others > 0:
			vs.Origin += cdp.BlockSize
		case snaps == 1:
			// The one snapshot that sees it: the first at or after it.
			seqs := snapSeqs[vol]
			i := sort.Search(len(seqs), func(i int) bool { return seqs[i] >= e.seq })
			vs.SnapshotExclusive[snapName[vol][seqs[i]][0]] += cdp.BlockSize
		case snaps > 1:
			vs.SnapshotsShared += cdp.BlockSize
		default:
			vs.History += cdp.BlockSize
		}
		return false, nil
	}})
	if err != nil {
		return sp, err
	}
	for _, vs := range byID {
		sp.Volumes = append(sp.Volumes, *vs)
	}
	sortSpace(sp.Volumes)
	sp.JournalBytes = p.j.Load().Stats().Bytes
	sp.IndexBytes = p.db.Metrics().DiskSpaceUsage()
	sp.FreeBytes, _ = p.FreeBytes()
	return sp, nil
}

// FreeBytes is the space left for the pool's files: what its filesystem
// has free for unprivileged users.
func (p *Pool) FreeBytes() (int64, error) {
	u, err := p.opts.FS.GetDiskUsage(p.opts.Dir)
	if err != nil {
		return 0, fmt.Errorf("cow: free space of %s: %w", p.opts.Dir, err)
	}
	return int64(u.AvailBytes), nil
}

func sortSpace(v []VolumeSpace) { sort.Slice(v, func(a, b int) bool { return v[a].Name < v[b].Name }) }
