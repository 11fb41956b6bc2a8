package cow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cdp"
)

// ErrPoint: a point in time that cannot be read (unknown snapshot, outside
// the retained history, in the future, malformed).
var ErrPoint = errors.New("cow: point not available")

// Point is a resolved point in a volume's history: the volume as it was
// right after the record with sequence number Seq.
type Point struct {
	Volume   string    `json:"volume"`
	Spec     string    `json:"spec"`
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"` // the time asked for, or when the record at Seq was written
	Snapshot string    `json:"snapshot,omitempty"`
	Size     int64     `json:"size"`
}

// Time markers: 'T' time(8) -> seq(8) segment(8) offset(8), written every
// markEvery records or markInterval, so a time resolves to a sequence number
// with one seek and a short scan of record headers.
const (
	prefixTime   = 'T'
	markEvery    = 4096
	markInterval = time.Second
)

func timeKey(t int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixTime}, uint64(t))
}

// markTimeLocked adds a time marker for record r at loc when one is due.
func (p *Pool) markTimeLocked(b *pebble.Batch, r *cdp.Record, loc cdp.Location) error {
	p.wmu.sinceMark++
	if p.wmu.sinceMark < markEvery && r.Time-p.wmu.lastMark < int64(markInterval) {
		return nil
	}
	p.wmu.sinceMark, p.wmu.lastMark = 0, r.Time
	v := binary.BigEndian.AppendUint64(nil, r.Seq)
	v = binary.BigEndian.AppendUint64(v, loc.Segment)
	v = binary.BigEndian.AppendUint64(v, uint64(loc.Offset))
	return b.Set(timeKey(r.Time), v, nil)
}

// seqAtTime returns the newest record written at or before t (0: none).
func (p *Pool) seqAtTime(t time.Time) (uint64, error) {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixTime}, UpperBound: timeKey(t.UnixNano() + 1)})
	if err != nil {
		return 0, err
	}
	var from cdp.Location
	var seq uint64
	if it.Last() && len(it.Value()) == 24 {
		v := it.Value()
		seq = binary.BigEndian.Uint64(v)
		from = cdp.Location{Segment: binary.BigEndian.Uint64(v[8:]), Offset: int64(binary.BigEndian.Uint64(v[16:]))}
	}
	it.Close()
	j := p.j.Load()
	if from.Segment == 0 {
		segs := j.Segments()
		if len(segs) == 0 {
			return 0, nil
		}
		from = cdp.Location{Segment: segs[0].ID, Offset: 64}
	}
	limit := t.UnixNano()
	err = j.Scan(from, func(r *cdp.Record, _ cdp.Location) bool {
		if r.Time > limit {
			return false
		}
		seq = r.Seq
		return true
	})
	return seq, err
}

// timeOfSeq returns when record seq was written (approximately, from the
// nearest marker at or before it, when the record itself is not scanned).
func (p *Pool) timeOfSeq(seq uint64) time.Time {
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixTime}, UpperBound: []byte{prefixTime + 1}})
	if err != nil {
		return time.Time{}
	}
	defer it.Close()
	// Markers are in time order, and so in sequence order: find the last
	// marker at or before seq, then scan to the record.
	var from cdp.Location
	var best int64
	for ok := it.Last(); ok; ok = it.Prev() {
		v := it.Value()
		if len(v) == 24 && binary.BigEndian.Uint64(v) <= seq {
			from = cdp.Location{Segment: binary.BigEndian.Uint64(v[8:]), Offset: int64(binary.BigEndian.Uint64(v[16:]))}
			best = int64(binary.BigEndian.Uint64(it.Key()[1:]))
			break
		}
	}
	if from.Segment == 0 {
		return time.Time{}
	}
	p.j.Load().Scan(from, func(r *cdp.Record, _ cdp.Location) bool {
		if r.Seq > seq {
			return false
		}
		best = r.Time
		return true
	})
	return time.Unix(0, best).UTC()
}

// oldestTime is when the point seq of v was made, at the earliest the
// volume's creation: a time a user can pass back.
func (p *Pool) oldestTime(v *volState, seq uint64) time.Time {
	t := p.timeOfSeq(seq)
	if c := time.Unix(0, v.created).UTC(); t.Before(c) {
		return c
	}
	return t
}

// retentionOf is v's time retention.
func (p *Pool) retentionOf(v *volState) time.Duration {
	if v.meta.Retention > 0 {
		return v.meta.Retention
	}
	return p.opts.RetentionTime
}

// windowLocked returns the oldest point of v that is still retained by the
// retention window (points from it to the head are all readable).
func (p *Pool) windowLocked(v *volState, now time.Time) (uint64, error) {
	start := v.id
	if s, err := p.seqAtTime(now.Add(-p.retentionOf(v))); err != nil {
		return 0, err
	} else if s > start {
		start = s
	}
	start = max(start, p.wmu.floor, v.meta.Floor)
	return start, nil
}

// ParsePoint splits "VOL@POINT".
func ParsePoint(s string) (vol, point string, ok bool) {
	return strings.Cut(s, "@")
}

// resolvePointLocked turns spec (snapshot name, RFC 3339 time or seq:N)
// into a point of v. Points older than the retained history or in the
// future are refused with what is available.
func (p *Pool) resolvePointLocked(v *volState, spec string) (Point, error) {
	now := p.opts.Now()
	pt := Point{Volume: v.name, Spec: spec}
	for _, sn := range v.meta.Snapshots {
		if sn.Name == spec {
			pt.Seq, pt.Time, pt.Snapshot = sn.Seq, sn.Time, sn.Name
			pt.Size = v.meta.sizeAt(sn.Seq)
			return pt, nil
		}
	}
	head := p.wmu.applied
	window, err := p.windowLocked(v, now)
	if err != nil {
		return Point{}, err
	}
	switch {
	case strings.HasPrefix(spec, "seq:"):
		n, err := strconv.ParseUint(strings.TrimPrefix(spec, "seq:"), 10, 64)
		if err != nil {
			return Point{}, p.pointErr(v, spec, "is not a sequence number (use seq:N)", window, head)
		}
		if n > head {
			return Point{}, p.pointErr(v, spec, "is in the future", window, head)
		}
		pt.Seq = n
		pt.Time = p.timeOfSeq(n)
	default:
		t, err := time.Parse(time.RFC3339Nano, spec)
		if err != nil {
			if ValidateName(spec) == nil {
				return Point{}, p.pointErr(v, spec, "names no snapshot", window, head)
			}
			return Point{}, p.pointErr(v, spec, "is neither a snapshot, an RFC 3339 time (2026-11-21T10:04:05Z) nor seq:N", window, head)
		}
		if t.After(now) {
			return Point{}, p.pointErr(v, spec, "is in the future", window, head)
		}
		s, err := p.seqAtTime(t)
		if err != nil {
			return Point{}, err
		}
		pt.Seq, pt.Time = s, t.UTC()
	}
	// Once retention has discarded the history back past the volume's
	// creation, the time index no longer reaches that far and a point in
	// the discarded span can map below v.id: it is older than the retained
	// history, which is the answer that says what to do.
	if pt.Seq < window && (v.id < window || pt.Seq >= v.id) {
		return Point{}, p.pointErr(v, spec, "is older than the retained history", window, head)
	}
	if pt.Seq < v.id {
		return Point{}, p.pointErr(v, spec, "is before the volume was created", window, head)
	}
	pt.Size = v.meta.sizeAt(pt.Seq)
	return pt, nil
}

func (p *Pool) pointErr(v *volState, spec, why string, window, head uint64) error {
	var snaps []string
	for _, sn := range v.meta.Snapshots {
		snaps = append(snaps, sn.Name)
	}
	msg := fmt.Sprintf("%v: %s@%s %s; %s has points from %s (seq:%d) to now (seq:%d)", ErrPoint, v.name, spec, why,
		v.name, p.oldestTime(v, window).Format(time.RFC3339Nano), window, head)
	if len(snaps) > 0 {
		msg += ", and snapshots " + strings.Join(snaps, ", ")
	}
	return &pointError{msg: strings.TrimPrefix(msg, "cow: ")}
}

type pointError struct{ msg string }

func (e *pointError) Error() string        { return "cow: " + e.msg }
func (e *pointError) Is(target error) bool { return target == ErrPoint }

// ResolvePoint resolves spec on volume vol.
func (p *Pool) ResolvePoint(vol, spec string) (Point, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(vol)
	if v == nil {
		return Point{}, notFound(vol)
	}
	return p.resolvePointLocked(v, spec)
}

// OpenVolumeAt opens volume vol as it was at spec, read-only.
func (p *Pool) OpenVolumeAt(vol, spec string) (*Volume, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(vol)
	if v == nil {
		return nil, notFound(vol)
	}
	pt, err := p.resolvePointLocked(v, spec)
	if err != nil {
		return nil, err
	}
	p.pinLocked(v.id, pt.Seq)
	v.handles.Add(1)
	return &Volume{p: p, v: v, seq: pt.Seq, readOnly: true, fixedSize: pt.Size, point: &pt}, nil
}

// pinLocked keeps point (vol, seq) from garbage collection while a handle
// reads it; the handle's Close unpins it.
func (p *Pool) pinLocked(vol, seq uint64) {
	p.wmu.pins[[2]uint64{vol, seq}]++
}

func (p *Pool) unpin(vol, seq uint64) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	k := [2]uint64{vol, seq}
	if p.wmu.pins[k]--; p.wmu.pins[k] <= 0 {
		delete(p.wmu.pins, k)
	}
}

// CreateSnapshot names volume vol's current point. O(1): no data is copied.
func (p *Pool) CreateSnapshot(vol, name, label string) (Snapshot, error) {
	return p.CreateSnapshotWith(vol, name, SnapshotOptions{Label: label})
}

// CreateSnapshotWith is CreateSnapshot with what else the snapshot records
// (taken by a schedule, app-consistent).
func (p *Pool) CreateSnapshotWith(vol, name string, o SnapshotOptions) (Snapshot, error) {
	if err := ValidateName(name); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot name: %w", err)
	}
	label := o.Label
	if len(label) > 1024 {
		return Snapshot{}, fmt.Errorf("%w: the label is longer than 1024 bytes", ErrInvalidName)
	}
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return Snapshot{}, notFound(vol)
	}
	for _, sn := range v.meta.Snapshots {
		if sn.Name == name {
			p.wmu.Unlock()
			return Snapshot{}, fmt.Errorf("snapshot %s@%s %w", vol, name, ErrExists)
		}
	}
	err := p.appendLocked(&cdp.Record{Kind: cdp.KindSnapshotCreate, Volume: v.id, Flags: o.flags(), Meta: encodeSnapshotMeta(name, label)})
	var sn Snapshot
	if err == nil {
		sn = v.meta.Snapshots[len(v.meta.Snapshots)-1]
	}
	p.wmu.Unlock()
	if err != nil {
		return Snapshot{}, err
	}
	return sn, p.Flush()
}

// DeleteSnapshot removes a snapshot; its space returns through GC.
func (p *Pool) DeleteSnapshot(vol, name string) error {
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return notFound(vol)
	}
	found := false
	for _, sn := range v.meta.Snapshots {
		found = found || sn.Name == name
	}
	if !found {
		p.wmu.Unlock()
		return fmt.Errorf("%w: volume %q has no snapshot %q", blockdev.ErrNotFound, vol, name)
	}
	err := p.appendLocked(&cdp.Record{Kind: cdp.KindSnapshotDelete, Volume: v.id, Meta: []byte(name)})
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	return p.Flush()
}

// Snapshots lists a volume's snapshots, oldest first.
func (p *Pool) Snapshots(vol string) ([]Snapshot, error) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(vol)
	if v == nil {
		return nil, notFound(vol)
	}
	out := append([]Snapshot(nil), v.meta.Snapshots...)
	sort.Slice(out, func(a, b int) bool { return out[a].Seq < out[b].Seq })
	return out, nil
}

// Clone creates volume newName whose content starts as vol at spec. O(1):
// the clone shares every block with its source until either is written.
func (p *Pool) Clone(vol, spec, newName string) (VolumeInfo, error) {
	if err := ValidateName(newName); err != nil {
		return VolumeInfo{}, err
	}
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return VolumeInfo{}, notFound(vol)
	}
	if p.lookup(newName) != nil {
		p.wmu.Unlock()
		return VolumeInfo{}, fmt.Errorf("volume %q %w", newName, ErrExists)
	}
	pt, err := p.resolvePointLocked(v, spec)
	if err == nil {
		err = p.appendLocked(&cdp.Record{Kind: cdp.KindVolumeClone, Volume: v.id, Offset: pt.Seq, Length: uint64(pt.Size), Meta: []byte(newName)})
	}
	var info VolumeInfo
	if err == nil {
		info = p.infoLocked(p.lookup(newName))
	}
	p.wmu.Unlock()
	if err != nil {
		return VolumeInfo{}, err
	}
	return info, p.Flush()
}

// Rollback makes vol's head the content it had at spec. O(1), and it
// destroys nothing: every older point, snapshots after spec included, stays
// readable, and rolling forward to a point after the rollback undoes it.
// Attached read-write clients are refused unless force; they then see the
// new content from their next request on.
func (p *Pool) Rollback(vol, spec string, force bool) (Point, error) {
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return Point{}, notFound(vol)
	}
	if n := v.rwHandles.Load(); n > 0 && !force {
		p.wmu.Unlock()
		return Point{}, fmt.Errorf("%w: volume %q is attached read-write by %d connection(s); detach them or use --force", ErrBusy, vol, n)
	}
	pt, err := p.resolvePointLocked(v, spec)
	if err == nil {
		err = p.appendLocked(&cdp.Record{Kind: cdp.KindVolumeRollback, Volume: v.id, Offset: pt.Seq, Length: uint64(pt.Size)})
	}
	p.wmu.Unlock()
	if err != nil {
		return Point{}, err
	}
	return pt, p.Flush()
}

// SetReadOnly makes a volume's head read-only (or writable again). Handles
// opened before keep their mode; new ones (new NBD connections) follow it.
func (p *Pool) SetReadOnly(vol string, ro bool) error {
	val := "0"
	if ro {
		val = "1"
	}
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return notFound(vol)
	}
	err := p.appendLocked(&cdp.Record{Kind: cdp.KindVolumeConfig, Volume: v.id, Meta: []byte("readonly=" + val)})
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	return p.Flush()
}

// SetRetention overrides the pool's time retention for one volume (0 goes
// back to the pool's).
func (p *Pool) SetRetention(vol string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("%w: negative retention", ErrInvalidSize)
	}
	p.wmu.Lock()
	v := p.lookup(vol)
	if v == nil {
		p.wmu.Unlock()
		return notFound(vol)
	}
	err := p.appendLocked(&cdp.Record{Kind: cdp.KindVolumeConfig, Volume: v.id, Meta: []byte("retention=" + strconv.FormatInt(int64(d), 10))})
	p.wmu.Unlock()
	if err != nil {
		return err
	}
	return p.Flush()
}
