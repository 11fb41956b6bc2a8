package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// S3 is a Target that keeps a volume's stream in S3 buckets: every batch
// becomes one object (or, with erasure coding, one shard on each of K+M
// targets), and a small manifest lists them in order. S3 holds no state
// but the objects, so the manifest is what makes a batch count: Send
// writes the batch first and the manifest only once the batch is whole,
// and Open deletes batch objects the manifest does not list (a run
// interrupted between the two). Restore reads the manifest and then the
// batches it lists (Manifest, ReadBatch).
//
// The parts of a diff (Batch.Partial) are listed as they come but do not
// move Acked; the last part does. Open drops the parts of a diff that
// never got its last part: the shipper starts such a diff over.
//
// Layout, under each target's prefix:
//
//	VOLNAME/manifest.json
//	VOLNAME/b-<from %020d>-<to %020d>.srb   one EncodeBatch frame (or one shard of it)
//	VOLNAME/b-<from>-<to>-<index>.srb        the same, for a batch that does not
//	                                         move the point (a diff's part, a
//	                                         snapshot alone): index in the manifest
//
// With erasure coding the manifest is stored whole on every target, and
// a reader takes the valid one with the highest Acked.
type S3 struct {
	targets []*s3Target
	ec      *ecCodec // nil: plain objects on the one target

	// Set by Open.
	vol string
	man *Manifest
	// gen numbers manifest writes, past every generation seen at Open,
	// so that two manifests with the same Acked but different contents
	// (a diff's parts, or a retried Send after a partly failed manifest
	// write) are told apart: the higher generation is the later write.
	gen uint64

	mu    sync.Mutex
	stats S3Stats
}

// S3Stats counts what an S3 target did, for the user.
type S3Stats struct {
	Batches int64 // batches sent
	// Raw and Stored are the batches' encoded sizes before and after
	// compression (the Counter interface).
	Raw    int64
	Stored int64
	// Objects and Bytes count the S3 objects put for batches: one per
	// batch, or K+M shards per batch with erasure coding.
	Objects int64
	Bytes   int64
	// Manifests and ManifestBytes count manifest writes (one per target
	// per batch with erasure coding).
	Manifests     int64
	ManifestBytes int64
	// Orphans counts batch objects that an interrupted run left and Open
	// deleted.
	Orphans int64
	// ReadObjects and ReadBytes count batch objects or shards fetched.
	ReadObjects int64
	ReadBytes   int64
	// Repaired counts shards Open rebuilt on targets that had lost them;
	// Missing, batch objects found missing that could not be rebuilt.
	Repaired int64
	Missing  int64
}

// Manifest lists what an S3 target holds of one volume.
type Manifest struct {
	// Format of the manifest; readers refuse newer formats.
	Format int `json:"format"`
	// Volume is the volume's name at the target (Hello.Target).
	Volume string `json:"volume"`
	// Source is the shipped volume: another source is refused.
	Source VolumeID `json:"source"`
	// K and M are the erasure coding (0 and 0: plain objects).
	K int `json:"k,omitempty"`
	M int `json:"m,omitempty"`
	// Acked is the source point the batches reach: the last batch's To.
	Acked uint64 `json:"acked"`
	// Size and Time are the volume's size and the time at Acked.
	Size int64 `json:"size"`
	Time int64 `json:"time"`
	// Gen numbers manifest writes (see S3.gen).
	Gen uint64 `json:"gen"`
	// Batches lists every batch object in stream order. Entries after
	// the last complete one may be parts of a diff still being shipped.
	Batches []ManifestEntry `json:"batches"`
	// Snapshots lists the snapshots the stream named, in order.
	Snapshots []ManifestSnapshot `json:"snapshots,omitempty"`
	// Base, once a retention policy compacted the history (format 2):
	// the first batches are a synthetic full copy at the oldest point
	// kept (see Compact).
	Base *ManifestBase `json:"base,omitempty"`
	// CRC is the CRC32C of the manifest's JSON encoding with CRC set to
	// zero: JSON parsing alone would take a flipped digit for a value.
	CRC uint32 `json:"crc32c"`
}

// ManifestEntry is one batch object.
type ManifestEntry struct {
	// Key is the object's name relative to the volume's prefix (the
	// targets of an erasure-coded set may have different prefixes).
	Key  string `json:"key"`
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
	Diff bool   `json:"diff,omitempty"`
	// Partial: a part of a diff; the diff's last part is the next entry
	// with Partial false.
	Partial bool  `json:"partial,omitempty"`
	Time    int64 `json:"time"`
	Size    int64 `json:"size"`
	// Raw is the batch's size before compression, Stored the object's
	// (the frame's) size; with erasure coding each target stores about
	// Stored/K plus a shard header.
	Raw    int64 `json:"raw"`
	Stored int64 `json:"stored"`
	// CRC is the CRC32C of the whole object (the frame).
	CRC uint32 `json:"crc32c"`
}

// ManifestSnapshot is a snapshot the stream named (OpSnapshot).
type ManifestSnapshot struct {
	Name  string `json:"name"`
	Label string `json:"label,omitempty"`
	// Seq is the source point the snapshot holds.
	Seq  uint64 `json:"seq"`
	Time int64  `json:"time"`
	// Batch is the index in Batches of the batch that names it.
	Batch int `json:"batch"`
	// The snapshot's flags, carried into a compacted history's OpSnapshot.
	Scheduled     bool `json:"scheduled,omitempty"`
	AppConsistent bool `json:"app_consistent,omitempty"`
}

const (
	manifestName   = "manifest.json"
	manifestFormat = 1
	// manifestFormatBase: a compacted manifest (Base set), which a build
	// that reads only format 1 must refuse rather than take for corrupt.
	manifestFormatBase = 2
	// maxManifest bounds a manifest read (about a million batches).
	maxManifest = 512 << 20
	// maxObject bounds a batch object: the largest frame FrameLen allows.
	maxObject = frameHeaderSize + MaxBatchRaw + MaxBatchRaw/8
)

// errNoKey: the object does not exist (S3 NoSuchKey). Callers decide
// what that means: a fresh volume, a lost shard, or data loss.
var errNoKey = errors.New("no such object")

// s3Target is one bucket and prefix.
type s3Target struct {
	client   *minio.Client
	bucket   string
	prefix   string // no leading or trailing slash; may be empty
	endpoint string // scheme://host, for messages
	name     string // s3://bucket/prefix, for messages
}

func (t *s3Target) String() string { return t.name }

// key returns the object key of name in volume vol.
func (t *s3Target) key(vol, name string) string {
	if t.prefix == "" {
		return vol + "/" + name
	}
	return t.prefix + "/" + vol + "/" + name
}

// ParseS3Targets parses spec, one URL s3://bucket/prefix or a
// comma-separated list of them, and ec, "" or "K+M". Several URLs need
// erasure coding over exactly that many targets; one URL without ec stores
// plain objects. A URL may carry ?endpoint=http://host:port; otherwise
// the endpoint comes from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else
// AWS (https). The region comes from AWS_REGION or AWS_DEFAULT_REGION
// (us-east-1 by default), credentials from the AWS environment variables,
// the shared credentials file, or the instance's IAM role. Nothing is
// contacted until Open.
func ParseS3Targets(spec string, ec string) (*S3, error) {
	var urls []string
	for _, u := range strings.Split(spec, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			return nil, fmt.Errorf("replica: S3 target list %d: empty entry", len(urls)+1)
		}
		urls = append(urls, u)
	}
	n := len(urls)
	s := &S3{}
	ec = strings.TrimSpace(ec)
	if ec == "" {
		if n > 1 {
			return nil, fmt.Errorf("replica: %d S3 targets need --ec K+M with K+M = %d", n, n)
		}
	} else {
		k, m, err := parseEC(ec)
		if err != nil {
			return nil, err
		}
		if k+m != n {
			return nil, fmt.Errorf("replica: --ec %s needs %d S3 targets, got %d (%d targets need --ec K+M with K+M = %d)", ec, k+m, n, n, n)
		}
		if s.ec, err = newEC(k, m); err != nil {
			return nil, err
		}
	}

	defEndpoint := os.Getenv("AWS_ENDPOINT_URL_S3")
	if defEndpoint == "" {
		defEndpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	if defEndpoint == "" {
		defEndpoint = "https://s3.amazonaws.com"
	}
	region := os.Getenv("AWS_REGION")
	if region == "" {
		region = os.Getenv("AWS_DEFAULT_REGION")
	}
	if region == "" {
		region = "us-east-1"
	}
	// One chain for all targets: the first provider with keys wins.
	// FileAWSCredentials reads AWS_SHARED_CREDENTIALS_FILE and
	// AWS_PROFILE itself. The IAM client has a timeout so that a machine
	// without credentials fails instead of waiting on the metadata
	// service.
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{Client: &http.Client{Timeout: 5 * time.Second}},
	})

	seen := map[string]int{}
	for i, raw := range urls {
		t, err := newS3Target(raw, defEndpoint, region, creds)
		if err != nil {
			if n > 1 {
				return nil, fmt.Errorf("replica: S3 target %d: %w", i+1, err)
			}
			return nil, fmt.Errorf("replica: %w", err)
		}
		// Two shards in one place would make losing that place lose
		// two shards.
		id := t.endpoint + "/" + t.bucket + "/" + t.prefix
		if j, ok := seen[id]; ok {
			return nil, fmt.Errorf("replica: S3 targets %d and %d are the same (%s)", j+1, i+1, t.name)
		}
		seen[id] = i
		s.targets = append(s.targets, t)
	}
	return s, nil
}

func parseEC(ec string) (k, m int, err error) {
	a, b, ok := strings.Cut(ec, "+")
	if ok {
		k, err = strconv.Atoi(strings.TrimSpace(a))
		if err == nil {
			m, err = strconv.Atoi(strings.TrimSpace(b))
		}
	}
	if !ok || err != nil {
		return 0, 0, fmt.Errorf("replica: --ec %q: want K+M, e.g. 2+1", ec)
	}
	if k < 1 || m < 1 || k+m > maxShards {
		return 0, 0, fmt.Errorf("replica: --ec %q: need K >= 1, M >= 1 and K+M <= %d", ec, maxShards)
	}
	return k, m, nil
}

// newS3Target parses one s3:// URL. Errors never repeat the URL whole: it
// might carry credentials.
func newS3Target(raw, defEndpoint, region string, creds *credentials.Credentials) (*s3Target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("invalid S3 URL: %v", err)
	}
	if u.Scheme != "s3" {
		return nil, fmt.Errorf("S3 URL must start with s3://, not %q", u.Scheme+"://")
	}
	if u.User != nil {
		return nil, errors.New("S3 URL must not carry credentials: use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the shared credentials file")
	}
	if u.Host == "" {
		return nil, errors.New("S3 URL has no bucket (want s3://bucket/prefix)")
	}
	t := &s3Target{bucket: u.Host, prefix: strings.Trim(u.Path, "/")}
	t.name = "s3://" + t.bucket
	if t.prefix != "" {
		t.name += "/" + t.prefix
	}
	if err := s3utils.CheckValidBucketName(t.bucket); err != nil {
		return nil, fmt.Errorf("%s: invalid bucket name: %v", t.name, err)
	}
	endpoint := defEndpoint
	for k, v := range u.Query() {
		if k != "endpoint" || len(v) != 1 {
			return nil, fmt.Errorf("%s: unknown or repeated option %q (only ?endpoint=URL)", t.name, k)
		}
		endpoint = v[0]
	}
	ep, err := url.Parse(endpoint)
	if err != nil || (ep.Scheme != "http" && ep.Scheme != "https") || ep.Host == "" ||
		strings.Trim(ep.Path, "/") != "" || ep.RawQuery != "" {
		return nil, fmt.Errorf("%s: endpoint must be http://host[:port] or https://host[:port]", t.name)
	}
	if ep.User != nil {
		return nil, fmt.Errorf("%s: endpoint must not carry credentials", t.name)
	}
	t.endpoint = ep.Scheme + "://" + ep.Host
	// AWS serves buckets as virtual hosts; other servers (versitygw,
	// MinIO, Ceph) usually only by path.
	lookup := minio.BucketLookupPath
	if h := ep.Hostname(); h == "amazonaws.com" || strings.HasSuffix(h, ".amazonaws.com") || strings.HasSuffix(h, ".amazonaws.com.cn") {
		lookup = minio.BucketLookupAuto
	}
	t.client, err = minio.New(ep.Host, &minio.Options{
		Creds:        creds,
		Secure:       ep.Scheme == "https",
		Region:       region,
		BucketLookup: lookup,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: endpoint %s: %v", t.name, t.endpoint, err)
	}
	return t, nil
}

// String names the targets (no endpoint options, no secrets).
func (s *S3) String() string {
	names := make([]string, len(s.targets))
	for i, t := range s.targets {
		names[i] = t.name
	}
	str := strings.Join(names, ",")
	if s.ec != nil {
		str += fmt.Sprintf(" (ec %d+%d)", s.ec.k, s.ec.m)
	}
	return str
}

// Stats returns the counters so far.
func (s *S3) Stats() S3Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Counters implements Counter: the encoded size of the batches sent,
// before and after compression. Erasure coding puts (K+M)/K times the
// latter, plus shard headers (Stats().Bytes).
func (s *S3) Counters() (raw, stored int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.Raw, s.stats.Stored
}

func (s *S3) count(f func(*S3Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

// checkVolumeName refuses names that would escape or confuse the layout.
func checkVolumeName(v string) error {
	if v == "" || v == "." || v == ".." || strings.ContainsAny(v, "/\\\x00") || len(v) > 512 {
		return fmt.Errorf("replica: %q is not a valid volume name for S3", v)
	}
	return nil
}

// batchName is the object name of a batch. A batch that does not move
// the point (a diff's part, whose siblings share From and To, or To ==
// From, a snapshot alone) gets its manifest index as a suffix, so that it
// cannot overwrite another.
func batchName(from, to uint64, partial bool, index int) string {
	if partial || to == from {
		return fmt.Sprintf("b-%020d-%020d-%d.srb", from, to, index)
	}
	return fmt.Sprintf("b-%020d-%020d.srb", from, to)
}

// batchFrom returns the From of a batch object name, or false if name is
// not one.
func batchFrom(name string) (uint64, bool) {
	if !strings.HasPrefix(name, "b-") || !strings.HasSuffix(name, ".srb") || len(name) < 2+20 {
		return 0, false
	}
	from, err := strconv.ParseUint(name[2:22], 10, 64)
	return from, err == nil
}

// Open reads the volume's manifest (none: nothing held yet), refuses
// another source or another coding, brings stale manifests up to date, and
// deletes batch objects no manifest lists. Every target must answer: Send
// writes to all of them.
func (s *S3) Open(ctx context.Context, h Hello) (State, error) {
	if err := checkVolumeName(h.Target); err != nil {
		return State{}, err
	}
	s.vol, s.man = "", nil
	mans, errs := s.readManifests(ctx, h.Target)
	best := pickManifest(mans)
	var gen uint64
	for i, err := range errs {
		switch {
		case err == nil:
			gen = max(gen, mans[i].Gen)
		case errors.Is(err, errNoKey):
		case errors.Is(err, ErrCorrupt) && best != nil:
			// Overwritten below with the good copy.
		default:
			return State{}, err
		}
	}
	m := best
	if m == nil {
		m = &Manifest{Format: manifestFormat, Volume: h.Target, Source: h.Source}
		if s.ec != nil {
			m.K, m.M = s.ec.k, s.ec.m
		}
	} else {
		if m.Source.Pool != h.Source.Pool || m.Source.Vol != h.Source.Vol {
			return State{}, fmt.Errorf("%w: %s holds volume %q from pool %s volume id %d (%q), not from pool %s volume id %d (%q)",
				ErrRefused, s.where(h.Target), h.Target, m.Source.Pool, m.Source.Vol, m.Source.Name, h.Source.Pool, h.Source.Vol, h.Source.Name)
		}
		if err := s.checkCoding(m); err != nil {
			return State{}, err
		}
		// A renamed source volume is still the same volume.
		m.Source.Name = h.Source.Name
	}
	s.gen = gen

	// A diff that never got its last part is shipped again from its
	// start: its parts go, so that a restore never mixes two runs' parts.
	pruned := false
	if n := completeLen(m); n < len(m.Batches) {
		c := *m
		c.Batches = m.Batches[:n:n]
		c.Snapshots = slices.DeleteFunc(slices.Clone(m.Snapshots), func(sn ManifestSnapshot) bool { return sn.Batch >= n })
		m, pruned = &c, true
	}

	// Orphans are listed before anything is written, so that a volume
	// whose manifest is gone is refused untouched; they are deleted once
	// the manifest no longer lists them.
	orphans, present, err := s.listOrphans(ctx, h.Target, m, best == nil)
	if err != nil {
		return State{}, err
	}
	if best != nil {
		var which []int // nil: all
		if !pruned {
			which = []int{}
			for i := range s.targets {
				if mans[i] == nil || mans[i].Gen != best.Gen {
					which = append(which, i)
				}
			}
		}
		if which == nil || len(which) > 0 {
			if err := s.putManifest(ctx, h.Target, m, which); err != nil {
				return State{}, err
			}
		}
	}
	if err := s.deleteOrphans(ctx, orphans); err != nil {
		return State{}, err
	}
	msg, err := s.repair(ctx, h.Target, m, present)
	if err != nil {
		return State{}, err
	}
	s.vol, s.man = h.Target, m
	return State{Acked: m.Acked, AckedTime: m.Time, Message: msg}, nil
}

// repair rebuilds the shards of m's batches that targets lost (an emptied
// bucket, deleted objects), from the shards left, so that the set keeps its
// redundancy; present lists each target's batch objects. Losses it cannot
// rebuild (no erasure coding, or more than M shards of a batch gone) are
// reported in the message: a restore past them fails.
func (s *S3) repair(ctx context.Context, vol string, m *Manifest, present []map[string]bool) (string, error) {
	var notes []string
	lost := map[int]int{} // target -> objects it lacks
	var unrepairable []string
	repaired := 0
	for _, e := range m.Batches {
		var gone []int
		for i := range s.targets {
			if !present[i][e.Key] {
				gone = append(gone, i)
				lost[i]++
			}
		}
		if len(gone) == 0 {
			continue
		}
		if s.ec == nil || len(gone) > s.ec.m {
			unrepairable = append(unrepairable, e.Key)
			continue
		}
		obj, err := s.readShards(ctx, vol, e)
		if errors.Is(err, ErrCorrupt) {
			unrepairable = append(unrepairable, e.Key) // too few good shards left
			continue
		}
		if err != nil {
			return "", fmt.Errorf("rebuild lost shards of %s: %w", e.Key, err)
		}
		shards, err := s.ec.Split(obj)
		if err != nil {
			return "", err
		}
		if err := s.onTargets(gone, func(i int, t *s3Target) error {
			return t.put(ctx, t.key(vol, e.Key), shards[i])
		}); err != nil {
			return "", fmt.Errorf("rebuild lost shards of %s: %w", e.Key, err)
		}
		repaired += len(gone)
		s.count(func(st *S3Stats) { st.Repaired += int64(len(gone)) })
	}
	if repaired > 0 {
		var where []string
		for i, t := range s.targets {
			if lost[i] > 0 {
				where = append(where, fmt.Sprintf("%s had lost %d", t.name, lost[i]))
			}
		}
		notes = append(notes, fmt.Sprintf("rebuilt %d lost shard(s) of volume %s (%s)", repaired, vol, strings.Join(where, ", ")))
	}
	if len(unrepairable) > 0 {
		s.count(func(st *S3Stats) { st.Missing += int64(len(unrepairable)) })
		notes = append(notes, fmt.Sprintf("warning: %d batch object(s) of volume %s are lost and cannot be rebuilt (first: %s); restoring points after them will fail: ship to a new prefix to start a fresh copy",
			len(unrepairable), vol, unrepairable[0]))
	}
	return strings.Join(notes, "; "), nil
}

// completeLen returns how many of m's entries end with a complete batch:
// the entries after are parts of an unfinished diff.
func completeLen(m *Manifest) int {
	n := len(m.Batches)
	for n > 0 && m.Batches[n-1].Partial {
		n--
	}
	return n
}

// where names the volume's place on the targets, for messages.
func (s *S3) where(vol string) string {
	if len(s.targets) == 1 {
		return s.targets[0].name + "/" + vol
	}
	return fmt.Sprintf("%s (volume %s)", s, vol)
}

func (s *S3) checkCoding(m *Manifest) error {
	k, n := 0, 0
	if s.ec != nil {
		k, n = s.ec.k, s.ec.m
	}
	if m.K == k && m.M == n {
		return nil
	}
	was := "plain objects"
	if m.K != 0 {
		was = fmt.Sprintf("--ec %d+%d", m.K, m.M)
	}
	now := "plain objects"
	if s.ec != nil {
		now = fmt.Sprintf("--ec %d+%d", k, n)
	}
	return fmt.Errorf("%w: %s was shipped with %s, not %s", ErrRefused, s.where(m.Volume), was, now)
}

// Send writes b's object (or shards), then the manifest that lists it. A
// diff's part (b.Partial) is listed but leaves Acked at its From.
func (s *S3) Send(ctx context.Context, b *Batch) error {
	if s.man == nil {
		return errors.New("replica: S3 target: Send before a successful Open")
	}
	if b.From != s.man.Acked {
		return fmt.Errorf("replica: %s: batch starts at %d but the target holds %d", s.where(s.vol), b.From, s.man.Acked)
	}
	if b.To < b.From {
		return fmt.Errorf("replica: batch ends at %d, before its start %d", b.To, b.From)
	}
	frame, raw, err := EncodeBatch(b)
	if err != nil {
		return err
	}
	// The new manifest shares its arrays' prefix with s.man; s.man only
	// takes it once written, and never looks past its own length.
	next := *s.man
	if n := completeLen(&next); n < len(next.Batches) {
		if last := next.Batches[len(next.Batches)-1]; !b.Diff || b.From != last.From || b.To != last.To {
			// A batch that does not continue the diff in progress
			// abandons it: its parts go (their objects at the next
			// Open). Capacity n makes the append below copy, leaving
			// s.man's entries alone.
			next.Batches = next.Batches[:n:n]
			next.Snapshots = slices.DeleteFunc(slices.Clone(next.Snapshots), func(sn ManifestSnapshot) bool { return sn.Batch >= n })
		}
	}
	index := len(next.Batches)
	name := batchName(b.From, b.To, b.Partial, index)
	if err := s.putObject(ctx, s.vol, name, frame); err != nil {
		return err
	}
	next.Batches = append(next.Batches, ManifestEntry{
		Key: name, From: b.From, To: b.To, Diff: b.Diff, Partial: b.Partial, Time: b.Time, Size: b.Size,
		Raw: int64(raw), Stored: int64(len(frame)), CRC: crc32.Checksum(frame, castagnoli),
	})
	for i := range b.Ops {
		if op := &b.Ops[i]; op.Kind == OpSnapshot {
			next.Snapshots = append(next.Snapshots, ManifestSnapshot{Name: op.Name, Label: op.Label, Seq: op.Seq, Time: op.Time, Batch: index,
				Scheduled: op.Scheduled, AppConsistent: op.AppConsistent})
		}
	}
	if !b.Partial {
		next.Acked, next.Size, next.Time = b.To, b.Size, b.Time
	}
	if err := s.putManifest(ctx, s.vol, &next, nil); err != nil {
		return err
	}
	s.man = &next
	s.count(func(st *S3Stats) { st.Batches++; st.Raw += int64(raw); st.Stored += int64(len(frame)) })
	return nil
}

// Close releases nothing: S3 holds no session.
func (s *S3) Close() error {
	s.man = nil
	return nil
}

// Manifest returns what the targets hold of volume vol. Erasure-coded,
// it takes the valid manifest with the highest Acked, so any M targets
// may be lost or damaged.
func (s *S3) Manifest(ctx context.Context, vol string) (*Manifest, error) {
	if err := checkVolumeName(vol); err != nil {
		return nil, err
	}
	mans, errs := s.readManifests(ctx, vol)
	if best := pickManifest(mans); best != nil {
		if err := s.checkCoding(best); err != nil {
			return nil, err
		}
		return best, nil
	}
	var first error
	var why []string
	for _, err := range errs {
		if errors.Is(err, errNoKey) {
			continue
		}
		if first == nil {
			first = err
		}
		why = append(why, err.Error())
	}
	if first == nil {
		return nil, fmt.Errorf("%w: nothing was shipped to %s", ErrNotFound, s.where(vol))
	}
	if len(why) == 1 {
		return nil, first
	}
	return nil, fmt.Errorf("replica: %s: no readable manifest: %w (%s)", s.where(vol), first, strings.Join(why, "; "))
}

// ReadBatch fetches the batch that entry lists (rebuilding it from shards
// with erasure coding) and checks it against the manifest.
func (s *S3) ReadBatch(ctx context.Context, vol string, e ManifestEntry) (*Batch, error) {
	if err := checkVolumeName(vol); err != nil {
		return nil, err
	}
	if _, ok := batchFrom(e.Key); !ok || strings.Contains(e.Key, "/") {
		return nil, fmt.Errorf("%w: manifest entry names %q, not a batch object", ErrCorrupt, e.Key)
	}
	if e.Stored < frameHeaderSize || e.Stored > maxObject {
		return nil, fmt.Errorf("%w: manifest entry %s has size %d", ErrCorrupt, e.Key, e.Stored)
	}
	var obj []byte
	var err error
	if s.ec == nil {
		obj, err = s.readPlain(ctx, vol, e)
	} else {
		obj, err = s.readShards(ctx, vol, e)
	}
	if err != nil {
		return nil, err
	}
	b, err := DecodeBatch(obj)
	if err != nil {
		return nil, fmt.Errorf("replica: %s object %s: %w", s.where(vol), e.Key, err)
	}
	if b.From != e.From || b.To != e.To || b.Partial != e.Partial {
		return nil, fmt.Errorf("%w: %s object %s holds batch %d-%d (partial %t), the manifest says %d-%d (partial %t)",
			ErrCorrupt, s.where(vol), e.Key, b.From, b.To, b.Partial, e.From, e.To, e.Partial)
	}
	return b, nil
}

func (s *S3) readPlain(ctx context.Context, vol string, e ManifestEntry) ([]byte, error) {
	t := s.targets[0]
	obj, err := t.get(ctx, t.key(vol, e.Key), e.Stored)
	if errors.Is(err, errNoKey) {
		return nil, fmt.Errorf("%w: %s: object %s is missing", ErrCorrupt, t, t.key(vol, e.Key))
	}
	if err != nil {
		return nil, err
	}
	s.count(func(st *S3Stats) { st.ReadObjects++; st.ReadBytes += int64(len(obj)) })
	if int64(len(obj)) != e.Stored || crc32.Checksum(obj, castagnoli) != e.CRC {
		return nil, fmt.Errorf("%w: %s: object %s fails its checksum (%d bytes, %d expected)",
			ErrCorrupt, t, t.key(vol, e.Key), len(obj), e.Stored)
	}
	return obj, nil
}

// readShards fetches the data shards, and the parity shards only if the
// data shards alone do not rebuild the object: reading costs no more than
// the object unless something is wrong.
func (s *S3) readShards(ctx context.Context, vol string, e ManifestEntry) ([]byte, error) {
	c := s.ec
	n := c.k + c.m
	shards := make([][]byte, n)
	ferr := make([]error, n)
	limit := shardHeaderLen + c.shardPayload(e.Stored)
	fetch := func(lo, hi int) {
		var wg sync.WaitGroup
		for i := lo; i < hi; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := s.targets[i]
				shards[i], ferr[i] = t.get(ctx, t.key(vol, e.Key), limit)
				if ferr[i] == nil {
					s.count(func(st *S3Stats) { st.ReadObjects++; st.ReadBytes += int64(len(shards[i])) })
				}
			}()
		}
		wg.Wait()
	}
	fetch(0, c.k)
	obj, bad, err := c.Join(shards, e.Stored, e.CRC)
	if err != nil {
		fetch(c.k, n)
		obj, bad, err = c.Join(shards, e.Stored, e.CRC)
	}
	if err == nil {
		return obj, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("replica: %s object %s: %w", s.where(vol), e.Key, ctx.Err())
	}
	var why []string
	for i, t := range s.targets {
		switch {
		case errors.Is(ferr[i], errNoKey):
			why = append(why, t.name+": shard missing")
		case ferr[i] != nil:
			why = append(why, ferr[i].Error())
		case bad != nil && bad[i] != nil:
			why = append(why, t.name+": "+bad[i].Error())
		}
	}
	return nil, fmt.Errorf("replica: volume %s object %s: %w (%s)", vol, e.Key, err, strings.Join(why, "; "))
}

// putObject stores obj as name, whole or as shards, on every target.
func (s *S3) putObject(ctx context.Context, vol, name string, obj []byte) error {
	if s.ec == nil {
		t := s.targets[0]
		if err := t.put(ctx, t.key(vol, name), obj); err != nil {
			return err
		}
		s.count(func(st *S3Stats) { st.Objects++; st.Bytes += int64(len(obj)) })
		return nil
	}
	shards, err := s.ec.Split(obj)
	if err != nil {
		return err
	}
	return s.onTargets(nil, func(i int, t *s3Target) error {
		if err := t.put(ctx, t.key(vol, name), shards[i]); err != nil {
			return err
		}
		s.count(func(st *S3Stats) { st.Objects++; st.Bytes += int64(len(shards[i])) })
		return nil
	})
}

// putManifest writes m, with the next generation and its checksum, to the
// targets in which (nil: all).
func (s *S3) putManifest(ctx context.Context, vol string, m *Manifest, which []int) error {
	if which == nil {
		s.gen++
		m.Gen = s.gen
	}
	data, err := encodeManifest(m)
	if err != nil {
		return err
	}
	return s.onTargets(which, func(i int, t *s3Target) error {
		if err := t.put(ctx, t.key(vol, manifestName), data); err != nil {
			return err
		}
		s.count(func(st *S3Stats) { st.Manifests++; st.ManifestBytes += int64(len(data)) })
		return nil
	})
}

// onTargets runs f on the targets in which (nil: all) in parallel and
// returns the first error, naming how many targets failed.
func (s *S3) onTargets(which []int, f func(i int, t *s3Target) error) error {
	if which == nil {
		which = make([]int, len(s.targets))
		for i := range which {
			which[i] = i
		}
	}
	errs := make([]error, len(which))
	if len(which) == 1 {
		errs[0] = f(which[0], s.targets[which[0]])
	} else {
		var wg sync.WaitGroup
		for j, i := range which {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[j] = f(i, s.targets[i])
			}()
		}
		wg.Wait()
	}
	var first error
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if failed > 1 {
		return fmt.Errorf("%w (and %d more targets failed)", first, failed-1)
	}
	return first
}

func encodeManifest(m *Manifest) ([]byte, error) {
	m.CRC = 0
	data, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("replica: encode manifest: %w", err)
	}
	m.CRC = crc32.Checksum(data, castagnoli)
	if data, err = json.Marshal(m); err != nil {
		return nil, fmt.Errorf("replica: encode manifest: %w", err)
	}
	return data, nil
}

// decodeManifest parses and checks a manifest: the checksum is over the
// canonical encoding, so it is checked by encoding again.
func decodeManifest(data []byte, vol string) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest does not parse: %v", ErrCorrupt, err)
	}
	if m.Format != manifestFormat && m.Format != manifestFormatBase {
		return nil, fmt.Errorf("%w: manifest format %d is not supported (this build reads %d and %d)", ErrCorrupt, m.Format, manifestFormat, manifestFormatBase)
	}
	want := m.CRC
	c := m
	if _, err := encodeManifest(&c); err != nil {
		return nil, err
	}
	if c.CRC != want {
		return nil, fmt.Errorf("%w: manifest checksum mismatch", ErrCorrupt)
	}
	if m.Volume != vol {
		return nil, fmt.Errorf("%w: manifest is for volume %q", ErrCorrupt, m.Volume)
	}
	var at uint64
	for i, e := range m.Batches {
		if e.From != at || e.To < e.From {
			return nil, fmt.Errorf("%w: manifest batch %d runs %d-%d after point %d", ErrCorrupt, i, e.From, e.To, at)
		}
		if !e.Partial {
			at = e.To
		}
	}
	if at != m.Acked {
		return nil, fmt.Errorf("%w: manifest batches reach %d but it says %d", ErrCorrupt, at, m.Acked)
	}
	return &m, nil
}

// readManifests reads vol's manifest from every target in parallel.
func (s *S3) readManifests(ctx context.Context, vol string) ([]*Manifest, []error) {
	mans := make([]*Manifest, len(s.targets))
	errs := make([]error, len(s.targets))
	_ = s.onTargets(nil, func(i int, t *s3Target) error {
		key := t.key(vol, manifestName)
		data, err := t.get(ctx, key, maxManifest)
		if err == nil {
			mans[i], err = decodeManifest(data, vol)
			if err != nil {
				err = fmt.Errorf("replica: %s: %s: %w", t, key, err)
			}
		}
		errs[i] = err
		return nil
	})
	return mans, errs
}

// pickManifest returns the manifest with the highest Acked, the latest
// written among equals, or nil.
func pickManifest(mans []*Manifest) *Manifest {
	var best *Manifest
	for _, m := range mans {
		if m != nil && (best == nil || m.Acked > best.Acked || m.Acked == best.Acked && m.Gen > best.Gen) {
			best = m
		}
	}
	return best
}

// listOrphans lists, per target, the batch objects of vol that m does
// not list. fresh says no manifest exists: then only objects of a first
// batch (From 0) can be orphans; later ones mean the manifest was lost, and
// the volume is refused rather than emptied.
func (s *S3) listOrphans(ctx context.Context, vol string, m *Manifest, fresh bool) (orphans [][]string, present []map[string]bool, err error) {
	listed := make(map[string]bool, len(m.Batches))
	for _, e := range m.Batches {
		listed[e.Key] = true
	}
	orphans = make([][]string, len(s.targets))
	present = make([]map[string]bool, len(s.targets))
	for i := range present {
		present[i] = map[string]bool{}
	}
	err = s.onTargets(nil, func(i int, t *s3Target) error {
		prefix := t.key(vol, "")
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for o := range t.client.ListObjects(lctx, t.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
			if o.Err != nil {
				return t.classify("list", prefix, o.Err)
			}
			name := strings.TrimPrefix(o.Key, prefix)
			from, ok := batchFrom(name)
			if !ok {
				continue
			}
			if listed[name] {
				present[i][name] = true
				continue
			}
			if fresh && from != 0 {
				return fmt.Errorf("%w: %s holds batch objects of %s (%s) but no manifest: the manifest was lost; restore it or delete the objects",
					ErrRefused, t, vol, name)
			}
			orphans[i] = append(orphans[i], o.Key)
		}
		return nil
	})
	return orphans, present, err
}

// deleteOrphans deletes what listOrphans found.
func (s *S3) deleteOrphans(ctx context.Context, orphans [][]string) error {
	return s.onTargets(nil, func(i int, t *s3Target) error {
		for _, key := range orphans[i] {
			if err := t.client.RemoveObject(ctx, t.bucket, key, minio.RemoveObjectOptions{}); err != nil {
				return t.classify("delete", key, err)
			}
			s.count(func(st *S3Stats) { st.Orphans++ })
		}
		return nil
	})
}

// put stores data as key in one PUT: S3 makes a PUT durable before it
// succeeds, and a single PUT is atomic, leaving no multipart upload behind
// if interrupted. Content-MD5 lets the server refuse a body damaged on the
// way.
func (t *s3Target) put(ctx context.Context, key string, data []byte) error {
	_, err := t.client.PutObject(ctx, t.bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		DisableMultipart: true,
		SendContentMd5:   true,
	})
	if err != nil {
		return t.classify("put", key, err)
	}
	return nil
}

// get reads key whole, refusing objects longer than limit.
func (t *s3Target) get(ctx context.Context, key string, limit int64) ([]byte, error) {
	o, err := t.client.GetObject(ctx, t.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, t.classify("get", key, err)
	}
	defer o.Close()
	data, err := io.ReadAll(io.LimitReader(o, limit+1))
	if err != nil {
		return nil, t.classify("get", key, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: %s: %s is larger than %d bytes", ErrCorrupt, t, key, limit)
	}
	return data, nil
}

// classify turns an S3 error into one that says what to do, wrapping the
// replica error class it belongs to.
func (t *s3Target) classify(op, key string, err error) error {
	var er minio.ErrorResponse
	if !errors.As(err, &er) {
		return fmt.Errorf("replica: %s: %s %s: %w", t, op, key, err)
	}
	switch er.Code {
	case "NoSuchKey":
		return fmt.Errorf("replica: %s: %s: %w", t, key, errNoKey)
	case "NoSuchBucket":
		return fmt.Errorf("replica: %s: bucket %q does not exist at %s", t, t.bucket, t.endpoint)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
		"TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "XAdminUserNotFound":
		return t.authError(op, key, er)
	case "EntityTooLarge", "InsufficientStorage", "XMinioStorageFull", "QuotaExceeded", "ServiceQuotaExceeded":
		return fmt.Errorf("%w: %s: %s %s: %s (%s)", ErrNoSpace, t, op, key, er.Code, er.Error())
	}
	switch er.StatusCode {
	case http.StatusForbidden:
		// Servers have their own codes for unknown keys.
		return t.authError(op, key, er)
	case http.StatusInsufficientStorage, http.StatusRequestEntityTooLarge:
		return fmt.Errorf("%w: %s: %s %s: %s", ErrNoSpace, t, op, key, er.Error())
	case http.StatusNotFound:
		// A HEAD or an empty error body: no code to tell by.
		if er.Code == "" {
			return fmt.Errorf("replica: %s: %s: %w", t, key, errNoKey)
		}
	}
	code := er.Code
	if code == "" {
		code = fmt.Sprintf("HTTP %d", er.StatusCode)
	}
	return fmt.Errorf("replica: %s: %s %s: %s (%s)", t, op, key, er.Error(), code)
}

func (t *s3Target) authError(op, key string, er minio.ErrorResponse) error {
	return fmt.Errorf("%w: %s: %s %s: %s (%s); check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE, or the instance role) and the bucket's permissions",
		ErrAuth, t, op, key, er.Code, er.Error())
}
