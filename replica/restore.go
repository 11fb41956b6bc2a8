package replica

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/strata-storage/strata/cow"
)

// RestoreOptions configure a restore.
type RestoreOptions struct {
	Pool *cow.Pool
	// From is an S3 target (replayed from its objects) or a strata://
	// site (which sends the volume at the point as one copy).
	From Target
	// Volume is the volume's name at the target.
	Volume string
	// At is a point: a snapshot name, an RFC 3339 time, seq:N (the
	// source's sequence numbers for S3, the site's for strata://), or ""
	// for the newest.
	At string
	// NewName is the local volume to create.
	NewName  string
	Progress func(Progress)
}

// Restored reports a restore.
type Restored struct {
	Volume string `json:"volume"`
	Point  string `json:"point"`
	// Seq is the point reached: for seq:N or a time, the nearest point
	// the target keeps at or before it (older than a retention window,
	// only the kept points are left).
	Seq uint64 `json:"seq"`
	// Nearest says Seq is not the point asked for but the nearest kept
	// point before it (seq:N not kept, or a time between two points).
	Nearest   bool          `json:"nearest,omitempty"`
	Size      int64         `json:"size"`
	DataBytes int64         `json:"data_bytes"`
	Batches   int           `json:"batches"`
	Duration  time.Duration `json:"duration_ns"`
}

// Restore rebuilds a volume from a target at a point into a new local
// volume. On an error the new volume is deleted: nothing half-restored
// stays behind.
func Restore(ctx context.Context, o RestoreOptions) (res Restored, err error) {
	start := time.Now()
	res.Volume = o.NewName
	created := false
	create := func(size int64) error {
		if created {
			return nil
		}
		if _, err := o.Pool.CreateVolume(o.NewName, size); err != nil {
			return err
		}
		created = true
		return nil
	}
	defer func() {
		if err != nil && created {
			if derr := o.Pool.DeleteVolume(o.NewName, true); derr != nil {
				err = fmt.Errorf("%w (and removing the partial volume %q failed: %v)", err, o.NewName, derr)
			}
		}
	}()
	apply := func(b *Batch) error {
		if err := create(b.Size); err != nil {
			return err
		}
		if err := applyOps(ctx, o.Pool, o.NewName, b, false, nil); err != nil {
			return err
		}
		res.Batches++
		res.DataBytes += b.DataBytes()
		if o.Progress != nil {
			o.Progress(Progress{Acked: b.To, DataBytes: res.DataBytes, Batches: res.Batches, Phase: "restore"})
		}
		return nil
	}
	switch src := o.From.(type) {
	case *Remote:
		var last *Batch
		err = src.Pull(ctx, o.Volume, o.At, func(b *Batch) error {
			last = b
			return apply(b)
		})
		if err == nil && last == nil {
			err = fmt.Errorf("%w: the site sent nothing for %s", ErrNotFound, o.Volume)
		}
		if err != nil {
			return res, err
		}
		res.Seq, res.Size, res.Point = last.To, last.Size, o.At
	case *S3:
		var pt s3Point
		res.Seq, pt, err = restoreS3(ctx, src, o, apply)
		if err != nil {
			return res, err
		}
		res.Point = pt.name
		res.Nearest = pt.time != 0 || pt.seq != res.Seq
	default:
		return res, fmt.Errorf("restore from %s is not supported", o.From)
	}
	if err = o.Pool.Flush(); err != nil {
		return res, err
	}
	if info, ierr := o.Pool.VolumeInfo(o.NewName); ierr == nil {
		res.Size = info.Size
	}
	if res.Point == "" {
		res.Point = fmt.Sprintf("seq:%d", res.Seq)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// s3Point is a resolved restore point: a source sequence number, or a time.
type s3Point struct {
	seq  uint64
	time int64 // Unix nanoseconds; 0: by seq
	name string
	snap bool // a snapshot: restored exactly at seq, or not at all
}

func resolveS3Point(m *Manifest, at string) (s3Point, error) {
	points := func() string {
		var names []string
		for _, sn := range m.Snapshots {
			names = append(names, sn.Name)
		}
		first := m.Batches[0]
		s := fmt.Sprintf("%s holds seq:%d (%s) to seq:%d (%s)", m.Volume, first.To, time.Unix(0, first.Time).UTC().Format(time.RFC3339),
			m.Acked, time.Unix(0, m.Time).UTC().Format(time.RFC3339))
		if len(names) > 0 {
			s += " and snapshots " + strings.Join(names, ", ")
		}
		return s
	}
	switch {
	case at == "":
		return s3Point{seq: m.Acked, name: fmt.Sprintf("seq:%d", m.Acked)}, nil
	case strings.HasPrefix(at, "seq:"):
		n, err := strconv.ParseUint(at[4:], 10, 64)
		if err != nil {
			return s3Point{}, fmt.Errorf("%w: %q is not seq:N; %s", cow.ErrPoint, at, points())
		}
		return s3Point{seq: n, name: at}, nil
	}
	for i := len(m.Snapshots) - 1; i >= 0; i-- {
		if sn := m.Snapshots[i]; sn.Name == at {
			// A snapshot named in a diff reads as the diff's end (a
			// compaction before this was fixed kept the older seq).
			if sn.Batch >= 0 && sn.Batch < len(m.Batches) {
				if e := m.Batches[sn.Batch]; e.Diff && sn.Seq < e.To {
					sn.Seq = e.To
				}
			}
			return s3Point{seq: sn.Seq, name: at, snap: true}, nil
		}
	}
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil && m.Base != nil {
		return s3Point{}, fmt.Errorf("%w: %q names no snapshot %s keeps: the retention policy (%s) compacted the history before seq:%d; %s",
			ErrRetention, at, m.Volume, m.Base.Policy, m.Base.Seq, points())
	}
	if err != nil {
		return s3Point{}, fmt.Errorf("%w: %q names no snapshot and is no RFC 3339 time or seq:N; %s", cow.ErrPoint, at, points())
	}
	return s3Point{time: t.UnixNano(), name: at}, nil
}

// restoreS3 replays the target's batches up to the point; it returns the
// seq reached and the point resolved.
func restoreS3(ctx context.Context, s *S3, o RestoreOptions, apply func(*Batch) error) (uint64, s3Point, error) {
	m, err := s.Manifest(ctx, o.Volume)
	if err != nil {
		return 0, s3Point{}, err
	}
	if len(m.Batches) == 0 {
		return 0, s3Point{}, fmt.Errorf("%w: nothing was shipped of %s", ErrNotFound, o.Volume)
	}
	pt, err := resolveS3Point(m, o.At)
	if err != nil {
		return 0, s3Point{}, err
	}
	// Complete batches only: parts of a diff count once its last part is
	// in; an unfinished diff (an interrupted run) is skipped.
	entries := m.Batches
	within := func(seq uint64, t int64) bool {
		if pt.time != 0 {
			return t <= pt.time
		}
		return seq <= pt.seq
	}
	first := entries[0]
	for _, e := range entries {
		if !e.Partial {
			first = e
			break
		}
	}
	if !within(first.To, first.Time) && m.Base != nil {
		return 0, s3Point{}, retentionError(m, pt.name)
	}
	if !within(first.To, first.Time) {
		return 0, s3Point{}, fmt.Errorf("%w: %s is before the first complete copy (seq:%d at %s)", cow.ErrPoint, pt.name, first.To, time.Unix(0, first.Time).UTC().Format(time.RFC3339))
	}
	if pt.time == 0 && pt.seq > m.Acked {
		return 0, s3Point{}, fmt.Errorf("%w: seq:%d is newer than what was shipped (seq:%d)", cow.ErrPoint, pt.seq, m.Acked)
	}
	reached := uint64(0)
	for i := 0; i < len(entries); i++ {
		e := entries[i]
		if err := ctx.Err(); err != nil {
			return 0, s3Point{}, err
		}
		if e.Partial {
			// Find the diff's last part: all parts apply, or none.
			j := i
			for j < len(entries) && entries[j].Partial && entries[j].From == e.From {
				j++
			}
			if j == len(entries) || entries[j].From != e.From || !entries[j].Diff {
				continue // unfinished: a later run started over
			}
			if !within(entries[j].To, entries[j].Time) {
				break
			}
			for k := i; k <= j; k++ {
				b, err := s.ReadBatch(ctx, o.Volume, entries[k])
				if err != nil {
					return 0, s3Point{}, err
				}
				if err := apply(b); err != nil {
					return 0, s3Point{}, err
				}
			}
			reached = entries[j].To
			i = j
			continue
		}
		if e.From >= pt.seq && pt.time == 0 && reached != 0 {
			break
		}
		b, err := s.ReadBatch(ctx, o.Volume, e)
		if err != nil {
			return 0, s3Point{}, err
		}
		if within(e.To, e.Time) {
			if err := apply(b); err != nil {
				return 0, s3Point{}, err
			}
			reached = e.To
			continue
		}
		if e.Diff {
			break // not consistent inside: stop at its start
		}
		// The point is inside: apply the records up to it.
		cut := -1
		for k, op := range b.Ops {
			if op.Kind == OpPoint && within(op.Seq, op.Time) {
				cut = k
			}
		}
		if cut >= 0 {
			b.Ops = b.Ops[:cut+1]
			b.To = b.Ops[cut].Seq
			if err := apply(b); err != nil {
				return 0, s3Point{}, err
			}
			reached = b.To
		}
		break
	}
	if reached == 0 {
		return 0, s3Point{}, errors.New("nothing to restore")
	}
	if pt.snap && reached != pt.seq {
		return 0, s3Point{}, fmt.Errorf("%w: snapshot %s is seq:%d, but the history %s holds reaches seq:%d at most before it",
			ErrCorrupt, pt.name, pt.seq, m.Volume, reached)
	}
	return reached, pt, nil
}
