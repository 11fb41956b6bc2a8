package replica

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
)

// Scrubbing an S3 target: every volume's manifest on every target is read
// and checked, then every batch object the manifest lists (every shard of
// it, with erasure coding) is fetched whole and checked against its
// checksums. A shard that is missing or fails its checksum is rebuilt from
// the good ones (any K of K+M) and written back; a plain object has no
// redundancy, so its damage can only be reported, with the points whose
// restore needs it. Scrub reads what the targets hold and rewrites only
// damaged shards, with the content they had: it is safe next to shipping,
// though a pass that overlaps a compaction may rewrite a shard the
// compaction just deleted (the next ship's Open removes it again).

// S3ScrubOptions configure a scrub of S3 targets.
type S3ScrubOptions struct {
	// Volumes to check (nil: every volume with a manifest on any
	// target).
	Volumes []string
	// Repair rebuilds damaged shards from parity.
	Repair bool
	// Progress, if set, is called after each object.
	Progress func(S3ScrubProgress)
}

// S3ScrubProgress is how far a scrub of S3 targets is.
type S3ScrubProgress struct {
	Volume       string `json:"volume"`
	Objects      int    `json:"objects"`
	ObjectsTotal int    `json:"objects_total"` // of this volume
	Bytes        int64  `json:"bytes"`
	ErrorsFound  int    `json:"errors_found"`
}

// S3Damage is a damaged manifest, object or shard.
type S3Damage struct {
	Volume string `json:"volume"`
	Key    string `json:"key"`    // relative to the volume's prefix
	Target string `json:"target"` // s3://bucket/prefix
	// Shard is the shard's index (-1: a whole plain object, or a
	// manifest).
	Shard   int    `json:"shard"`
	Problem string `json:"problem"`
	// From and To are the source points the batch carries: restores at
	// points from To on need it.
	From uint64 `json:"from,omitempty"`
	To   uint64 `json:"to,omitempty"`
	// Repaired: rewritten from the good shards; otherwise RepairError
	// says why not.
	Repaired    bool   `json:"repaired,omitempty"`
	RepairError string `json:"repair_error,omitempty"`
}

// S3ScrubReport is the result of a scrub of S3 targets.
type S3ScrubReport struct {
	Targets  string     `json:"targets"`
	Started  time.Time  `json:"started"`
	Finished time.Time  `json:"finished"`
	Volumes  []string   `json:"volumes"`
	Objects  int        `json:"objects"` // batch objects checked
	Shards   int        `json:"shards"`  // shards fetched (objects, without erasure coding)
	Bytes    int64      `json:"bytes"`
	Damaged  []S3Damage `json:"damaged,omitempty"`
}

// Repaired counts the damage rewritten.
func (r *S3ScrubReport) Repaired() int {
	n := 0
	for _, d := range r.Damaged {
		if d.Repaired {
			n++
		}
	}
	return n
}

// Unrepaired counts the damage left.
func (r *S3ScrubReport) Unrepaired() int { return len(r.Damaged) - r.Repaired() }

// Scrub checks (and with o.Repair heals) what the targets hold; see above.
func (s *S3) Scrub(ctx context.Context, o S3ScrubOptions) (*S3ScrubReport, error) {
	rep := &S3ScrubReport{Targets: s.String(), Started: time.Now().UTC()}
	vols := o.Volumes
	if vols == nil {
		var err error
		if vols, err = s.listVolumes(ctx); err != nil {
			return nil, err
		}
	}
	var prog S3ScrubProgress
	for _, vol := range vols {
		if err := checkVolumeName(vol); err != nil {
			return rep, err
		}
		rep.Volumes = append(rep.Volumes, vol)
		m, err := s.scrubManifests(ctx, vol, o.Repair, rep)
		if err != nil {
			return rep, err
		}
		if m == nil {
			continue
		}
		prog = S3ScrubProgress{Volume: vol, ObjectsTotal: len(m.Batches), Bytes: prog.Bytes, ErrorsFound: len(rep.Damaged)}
		for _, e := range m.Batches {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			if err := s.scrubObject(ctx, vol, e, o.Repair, rep); err != nil {
				return rep, err
			}
			rep.Objects++
			prog.Objects++
			prog.Bytes = rep.Bytes
			prog.ErrorsFound = len(rep.Damaged)
			if o.Progress != nil {
				o.Progress(prog)
			}
		}
	}
	rep.Finished = time.Now().UTC()
	return rep, nil
}

// listVolumes lists the volumes that have a manifest on any target: a
// target that lost a volume's manifest (or all it held) is damage found
// when that volume is checked, not a volume to skip.
func (s *S3) listVolumes(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	for _, t := range s.targets {
		prefix := t.prefix
		if prefix != "" {
			prefix += "/"
		}
		for o := range t.client.ListObjects(ctx, t.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
			if o.Err != nil {
				return nil, t.classify("list", prefix, o.Err)
			}
			if vol, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), "/"+manifestName); ok && !strings.Contains(vol, "/") {
				seen[vol] = true
			}
		}
	}
	vols := make([]string, 0, len(seen))
	for vol := range seen {
		vols = append(vols, vol)
	}
	sort.Strings(vols)
	return vols, nil
}

// scrubManifests checks vol's manifest on every target and returns the one
// to follow (nil: none). A target whose manifest is missing or damaged
// gets the good one back when repairing; one that is only older is left to
// the next ship (which brings it up to date), as a shipper may be writing.
func (s *S3) scrubManifests(ctx context.Context, vol string, repair bool, rep *S3ScrubReport) (*Manifest, error) {
	mans, errs := s.readManifests(ctx, vol)
	best := pickManifest(mans)
	if best == nil {
		for i, err := range errs {
			if err != nil && !errors.Is(err, errNoKey) && !errors.Is(err, ErrCorrupt) {
				return nil, err
			}
			problem := "manifest missing"
			if err != nil && errors.Is(err, ErrCorrupt) {
				problem = "manifest damaged: " + err.Error()
			}
			rep.Damaged = append(rep.Damaged, S3Damage{Volume: vol, Key: manifestName, Target: s.targets[i].name, Shard: -1,
				Problem: problem, RepairError: "no target holds a good manifest: the volume cannot be restored from here"})
		}
		return nil, nil
	}
	if err := s.checkCoding(best); err != nil {
		return nil, err
	}
	for i, err := range errs {
		if err == nil {
			continue
		}
		if !errors.Is(err, errNoKey) && !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		d := S3Damage{Volume: vol, Key: manifestName, Target: s.targets[i].name, Shard: -1, Problem: "manifest missing"}
		if errors.Is(err, ErrCorrupt) {
			d.Problem = "manifest damaged: " + err.Error()
		}
		if repair {
			if perr := s.putManifest(ctx, vol, best, []int{i}); perr != nil {
				d.RepairError = perr.Error()
			} else {
				d.Repaired = true
			}
		} else {
			d.RepairError = "not repaired (--no-repair)"
		}
		rep.Damaged = append(rep.Damaged, d)
	}
	return best, nil
}

// scrubObject fetches and checks one batch object, or all its shards.
func (s *S3) scrubObject(ctx context.Context, vol string, e ManifestEntry, repair bool, rep *S3ScrubReport) error {
	damage := func(i int, problem string) *S3Damage {
		rep.Damaged = append(rep.Damaged, S3Damage{Volume: vol, Key: e.Key, Target: s.targets[i].name, Shard: i, Problem: problem, From: e.From, To: e.To})
		return &rep.Damaged[len(rep.Damaged)-1]
	}
	if s.ec == nil {
		t := s.targets[0]
		obj, err := t.get(ctx, t.key(vol, e.Key), e.Stored)
		rep.Shards++
		var problem string
		switch {
		case errors.Is(err, errNoKey):
			problem = "object missing"
		case errors.Is(err, ErrCorrupt):
			problem = fmt.Sprintf("object larger than the %d bytes expected", e.Stored)
		case err != nil:
			return err
		case int64(len(obj)) != e.Stored || crc32.Checksum(obj, castagnoli) != e.CRC:
			problem = fmt.Sprintf("object fails its checksum (%d bytes, %d expected)", len(obj), e.Stored)
		}
		rep.Bytes += int64(len(obj))
		if problem != "" {
			d := damage(0, problem)
			d.Shard = -1
			d.RepairError = "plain objects have no parity to rebuild from (ship with --ec K+M for that): restores at points from this batch on fail; ship the volume to a new prefix for a fresh copy"
		}
		return nil
	}
	c := s.ec
	n := c.k + c.m
	shards := make([][]byte, n)
	ferr := make([]error, n)
	limit := shardHeaderLen + c.shardPayload(e.Stored)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := s.targets[i]
			shards[i], ferr[i] = t.get(ctx, t.key(vol, e.Key), limit)
		}()
	}
	wg.Wait()
	var bad []int
	var problems []string
	for i := 0; i < n; i++ {
		rep.Shards++
		rep.Bytes += int64(len(shards[i]))
		var problem string
		switch {
		case errors.Is(ferr[i], errNoKey):
			problem = "shard missing"
		case errors.Is(ferr[i], ErrCorrupt):
			problem = fmt.Sprintf("shard larger than the %d bytes expected", limit)
		case ferr[i] != nil:
			return ferr[i]
		default:
			if err := c.checkShard(i, shards[i], e.Stored, e.CRC); err != nil {
				problem = err.Error()
			}
		}
		if problem != "" {
			bad = append(bad, i)
			problems = append(problems, problem)
			shards[i] = nil
		}
	}
	if len(bad) == 0 {
		return nil
	}
	start := len(rep.Damaged)
	for k, i := range bad {
		damage(i, problems[k])
	}
	ds := rep.Damaged[start:]
	fail := func(why string) {
		for k := range ds {
			ds[k].RepairError = why
		}
	}
	if !repair {
		fail("not repaired (--no-repair)")
		return nil
	}
	obj, _, err := c.Join(shards, e.Stored, e.CRC)
	if err != nil {
		fail(fmt.Sprintf("%v: restores at points from this batch on fail", err))
		return nil
	}
	good, err := c.Split(obj)
	if err != nil {
		return err
	}
	for k, i := range bad {
		t := s.targets[i]
		if err := t.put(ctx, t.key(vol, e.Key), good[i]); err != nil {
			ds[k].RepairError = err.Error()
			continue
		}
		// Read it back: the repair counts once the target serves it.
		back, err := t.get(ctx, t.key(vol, e.Key), limit)
		if err == nil {
			err = c.checkShard(i, back, e.Stored, e.CRC)
		}
		if err != nil {
			ds[k].RepairError = "rewritten, but reading it back failed: " + err.Error()
			continue
		}
		ds[k].Repaired = true
		s.count(func(st *S3Stats) { st.Repaired++ })
	}
	return nil
}
