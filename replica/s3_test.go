package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/build"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

const (
	testAccess = "strata-test-access"
	testSecret = "strata-test-secret-0123456789"
)

// startVersityGW runs versitygw over the posix directory dir (buckets are
// its subdirectories) on a free local port, with the test credentials in
// the AWS environment variables, and returns its endpoint and a cleanup
// that kills it (also run at the end of the test).
func startVersityGW(t *testing.T, dir string) (endpoint string, cleanup func()) {
	t.Helper()
	bin := filepath.Join(build.Default.GOPATH, "bin", "versitygw")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("versitygw is not installed at %s (go install github.com/versity/versitygw/cmd/versitygw@v1.0.14)", bin)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	// The environment must not send the client elsewhere or give it
	// other keys.
	for _, v := range []string{"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_ACCESS_KEY_ID", testAccess)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecret)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-credentials"))

	var out bytes.Buffer
	cmd := exec.Command(bin, "--quiet", "--access", testAccess, "--secret", testSecret, "--port", addr, "posix", dir)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	var once sync.Once
	cleanup = func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	t.Cleanup(cleanup)

	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("versitygw exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			cleanup()
			t.Fatalf("versitygw does not answer on %s: %s", addr, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "http://" + addr, cleanup
}

// testServer starts versitygw with the named buckets.
func testServer(t *testing.T, buckets ...string) (endpoint, dir string, c *minio.Client) {
	t.Helper()
	dir = t.TempDir()
	endpoint, _ = startVersityGW(t, dir)
	c, err := minio.New(strings.TrimPrefix(endpoint, "http://"), &minio.Options{
		Creds:        credentials.NewStaticV4(testAccess, testSecret, ""),
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range buckets {
		if err := c.MakeBucket(context.Background(), b, minio.MakeBucketOptions{}); err != nil {
			t.Fatalf("make bucket %s: %v", b, err)
		}
	}
	return endpoint, dir, c
}

func s3Spec(endpoint string, targets ...string) string {
	for i := range targets {
		targets[i] = "s3://" + targets[i] + "?endpoint=" + endpoint
	}
	return strings.Join(targets, ",")
}

func mustParse(t *testing.T, spec, ec string) *S3 {
	t.Helper()
	s, err := ParseS3Targets(spec, ec)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var testSource = VolumeID{Pool: "pool-aaaa", Vol: 7, Name: "db"}

// testBatches makes a stream: a first full copy by difference in parts,
// ordinary batches with writes of random data, zeros, trims and
// snapshots, a batch that only names a snapshot, and a rollback diff.
func testBatches(seed uint64) []*Batch {
	r := rand.New(rand.NewPCG(seed, 99))
	const bs = 4096
	const size = 64 << 20
	t0 := int64(1_700_000_000_000_000_000)
	var out []*Batch
	at := uint64(0)
	record := func(b *Batch, seq uint64, big bool) {
		tm := t0 + int64(seq)*1e9
		for n := 1 + r.IntN(4); n > 0; n-- {
			off := uint64(r.IntN(size/bs-64)) * bs
			switch r.IntN(4) {
			case 0, 1:
				l := (1 + r.IntN(16)) * bs
				if big {
					l, big = 2<<20, false
				}
				b.Ops = append(b.Ops, Op{Kind: OpWrite, Seq: seq, Time: tm, Offset: off, Length: uint64(l), Data: randBytes(r, l)})
			case 2:
				b.Ops = append(b.Ops, Op{Kind: OpZero, Seq: seq, Time: tm, Offset: off, Length: uint64(1+r.IntN(64)) * bs, NoHole: r.IntN(2) == 0})
			case 3:
				b.Ops = append(b.Ops, Op{Kind: OpTrim, Seq: seq, Time: tm, Offset: off, Length: uint64(1+r.IntN(64)) * bs})
			}
		}
		b.Ops = append(b.Ops, Op{Kind: OpPoint, Seq: seq, Time: tm})
	}
	// A diff of n points in parts: one consistent point at the end of
	// its last part.
	diff := func(n uint64, parts int) {
		for p := 0; p < parts; p++ {
			b := &Batch{From: at, To: at + n, Diff: true, Partial: p < parts-1, Size: size, Time: t0 + int64(at+n)*1e9}
			if p == 0 {
				b.Ops = append(b.Ops, Op{Kind: OpResize, Seq: b.To, Time: b.Time, Length: size})
			}
			for i := 0; i < 4; i++ {
				l := (1 + r.IntN(32)) * bs
				b.Ops = append(b.Ops, Op{Kind: OpWrite, Seq: b.To, Time: b.Time, Offset: uint64(p*4+i) << 20, Length: uint64(l), Data: randBytes(r, l)})
			}
			b.Ops = append(b.Ops, Op{Kind: OpZero, Seq: b.To, Time: b.Time, Offset: uint64(32+p) << 20, Length: 1 << 20, NoHole: true})
			b.Ops = append(b.Ops, Op{Kind: OpTrim, Seq: b.To, Time: b.Time, Offset: uint64(40+p) << 20, Length: 1 << 20})
			if !b.Partial {
				b.Ops = append(b.Ops, Op{Kind: OpPoint, Seq: b.To, Time: b.Time})
			}
			out = append(out, b)
		}
		at += n
	}
	batch := func(n uint64, snap string, big bool) {
		b := &Batch{From: at, To: at + n, Size: size, Time: t0 + int64(at+n)*1e9}
		{
			for seq := at + 1; seq <= at+n; seq++ {
				record(b, seq, big && seq == at+1)
			}
		}
		if snap != "" {
			b.Ops = append(b.Ops, Op{Kind: OpSnapshot, Seq: b.To, Time: b.Time, Name: snap, Label: "label of " + snap})
		}
		at = b.To
		out = append(out, b)
	}
	diff(10, 3)           // 0-2: the first full copy
	batch(4, "s1", false) // 3
	batch(6, "", true)    // 4: 2 MiB of data
	batch(0, "s2", false) // 5: a snapshot alone
	diff(5, 2)            // 6-7: a rollback
	batch(2, "s3", false) // 8
	return out
}

// ship opens vol, which must hold the point batches start from, and
// sends them.
func ship(t *testing.T, s *S3, vol string, src VolumeID, batches []*Batch) {
	t.Helper()
	ctx := context.Background()
	st, err := s.Open(ctx, Hello{Source: src, Target: vol, Size: 64 << 20})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if st.Acked != batches[0].From {
		t.Fatalf("open: acked %d, want %d", st.Acked, batches[0].From)
	}
	for _, b := range batches {
		if err := s.Send(ctx, b); err != nil {
			t.Fatalf("send %d-%d: %v", b.From, b.To, err)
		}
	}
}

// checkRestore reads the volume back and compares it with batches.
func checkRestore(t *testing.T, s *S3, vol string, batches []*Batch) {
	t.Helper()
	ctx := context.Background()
	m, err := s.Manifest(ctx, vol)
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	last := batches[len(batches)-1]
	if len(m.Batches) != len(batches) || m.Acked != last.To || m.Size != last.Size || m.Time != last.Time || m.Source.Pool != testSource.Pool || m.Source.Vol != testSource.Vol {
		t.Fatalf("manifest: %d batches to %d (size %d, time %d, source %+v), want %d to %d", len(m.Batches), m.Acked, m.Size, m.Time, m.Source, len(batches), last.To)
	}
	var want, got []ManifestSnapshot
	for i, b := range batches {
		for _, op := range b.Ops {
			if op.Kind == OpSnapshot {
				want = append(want, ManifestSnapshot{Name: op.Name, Label: op.Label, Seq: op.Seq, Time: op.Time, Batch: i})
			}
		}
	}
	got = m.Snapshots
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("manifest snapshots %v, want %v", got, want)
	}
	for i, e := range m.Batches {
		if e.From != batches[i].From || e.To != batches[i].To || e.Diff != batches[i].Diff || e.Partial != batches[i].Partial {
			t.Fatalf("manifest entry %d: %+v", i, e)
		}
		b, err := s.ReadBatch(ctx, vol, e)
		if err != nil {
			t.Fatalf("read batch %d (%s): %v", i, e.Key, err)
		}
		if !b.Equal(batches[i]) {
			t.Fatalf("batch %d (%s) reads back different", i, e.Key)
		}
	}
}

func TestS3ShipAndRestore(t *testing.T) {
	endpoint, _, _ := testServer(t, "bkt")
	s := mustParse(t, s3Spec(endpoint, "bkt/some/prefix"), "")
	batches := testBatches(1)
	ship(t, s, "vol1", testSource, batches)
	checkRestore(t, s, "vol1", batches)

	st := s.Stats()
	if st.Batches != int64(len(batches)) || st.Objects != int64(len(batches)) || st.Bytes == 0 || st.Manifests != int64(len(batches)) {
		t.Fatalf("stats %+v", st)
	}
	m, err := s.Manifest(context.Background(), "vol1")
	if err != nil {
		t.Fatal(err)
	}
	// Batches that do not move the point get keys of their own.
	if k := m.Batches[5].Key; k != fmt.Sprintf("b-%020d-%020d-5.srb", 20, 20) {
		t.Fatalf("snapshot-only batch key %s", k)
	}
	if k0, k1, k2 := m.Batches[0].Key, m.Batches[1].Key, m.Batches[2].Key; k0 != fmt.Sprintf("b-%020d-%020d-0.srb", 0, 10) ||
		k1 != fmt.Sprintf("b-%020d-%020d-1.srb", 0, 10) || k2 != fmt.Sprintf("b-%020d-%020d.srb", 0, 10) {
		t.Fatalf("diff part keys %s %s %s", k0, k1, k2)
	}
	if !m.Batches[0].Diff || m.Batches[3].Diff || m.Batches[4].Raw <= m.Batches[4].Stored/2 {
		t.Fatalf("manifest entries %+v", m.Batches[:5])
	}
	if raw, stored := s.Counters(); raw != st.Raw || stored != st.Bytes || raw == 0 {
		t.Fatalf("counters %d %d, stats %+v", raw, stored, st)
	}

	if _, err := s.Manifest(context.Background(), "nothing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("manifest of an unshipped volume: %v, want ErrNotFound", err)
	}
	if _, err := s.Open(context.Background(), Hello{Source: testSource, Target: "../x"}); err == nil {
		t.Fatal("volume name ../x accepted")
	}
}

func TestS3Resume(t *testing.T) {
	endpoint, _, _ := testServer(t, "bkt")
	spec := s3Spec(endpoint, "bkt/p")
	batches := testBatches(2)
	ctx := context.Background()

	// Interrupted in the middle of a diff.
	s := mustParse(t, spec, "")
	ship(t, s, "v", testSource, batches[:7])
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Manifest(ctx, "v"); err != nil || m.Acked != 20 || len(m.Batches) != 7 {
		t.Fatalf("manifest with a diff part: %v", err)
	}

	s = mustParse(t, spec, "")
	// A renamed source volume is the same volume.
	src := testSource
	src.Name = "renamed"
	st, err := s.Open(ctx, Hello{Source: src, Target: "v"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Acked != batches[6].From {
		t.Fatalf("acked %d, want %d", st.Acked, batches[6].From)
	}
	// The unfinished diff's part is gone from the manifest and the bucket.
	if m, err := s.Manifest(ctx, "v"); err != nil || len(m.Batches) != 6 || s.Stats().Orphans != 1 {
		t.Fatalf("unfinished diff not dropped: %v, stats %+v", err, s.Stats())
	}
	if err := s.Send(ctx, batches[8]); err == nil || !strings.Contains(err.Error(), "holds") {
		t.Fatalf("send from the wrong point: %v", err)
	}
	if err := s.Send(ctx, batches[1]); err == nil {
		t.Fatal("send of an old batch accepted")
	}
	for _, b := range batches[6:] {
		if err := s.Send(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.Manifest(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if m.Source.Name != "renamed" {
		t.Fatalf("source name %q", m.Source.Name)
	}
	checkRestore(t, mustParse(t, spec, ""), "v", batches)
}

// TestS3AbandonedDiff: a batch that does not continue the diff in
// progress drops the diff's parts from the manifest.
func TestS3AbandonedDiff(t *testing.T) {
	endpoint, _, _ := testServer(t, "bkt")
	spec := s3Spec(endpoint, "bkt")
	batches := testBatches(8)
	ctx := context.Background()
	s := mustParse(t, spec, "")
	ship(t, s, "v", testSource, batches[:7])
	next := &Batch{From: 20, To: 21, Size: 64 << 20, Time: 21, Ops: []Op{{Kind: OpPoint, Seq: 21, Time: 21}}}
	if err := s.Send(ctx, next); err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Batches) != 7 || m.Acked != 21 || m.Batches[6].Key != batchName(20, 21, false, 6) || len(m.Snapshots) != 2 {
		t.Fatalf("manifest after an abandoned diff: %d batches to %d, last %s", len(m.Batches), m.Acked, m.Batches[len(m.Batches)-1].Key)
	}
	s = mustParse(t, spec, "")
	if st, err := s.Open(ctx, Hello{Source: testSource, Target: "v"}); err != nil || st.Acked != 21 || s.Stats().Orphans != 1 {
		t.Fatalf("open: %v, acked %d, stats %+v", err, st.Acked, s.Stats())
	}
	checkRestore(t, s, "v", append(batches[:6:6], next))
}

func TestS3Orphans(t *testing.T) {
	endpoint, _, c := testServer(t, "bkt")
	spec := s3Spec(endpoint, "bkt/p")
	batches := testBatches(3)
	ctx := context.Background()

	s := mustParse(t, spec, "")
	ship(t, s, "v", testSource, batches[:4])

	// An interrupted run: batch objects put, the manifest not.
	put := func(key string, data []byte) {
		t.Helper()
		if _, err := c.PutObject(ctx, "bkt", key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	frame, _, err := EncodeBatch(batches[4])
	if err != nil {
		t.Fatal(err)
	}
	orphan := "p/v/" + batchName(batches[4].From, batches[4].To, false, 4)
	put(orphan, frame)
	put("p/v/b-00000000000000000014-00000000000000000099.srb", frame)
	put("p/v/notes.txt", []byte("not ours"))
	put("p/other/b-00000000000000000000-00000000000000000001.srb", frame)

	s = mustParse(t, spec, "")
	st, err := s.Open(ctx, Hello{Source: testSource, Target: "v"})
	if err != nil || st.Acked != batches[3].To {
		t.Fatalf("open: %v, acked %d", err, st.Acked)
	}
	if n := s.Stats().Orphans; n != 2 {
		t.Fatalf("%d orphans deleted, want 2", n)
	}
	exists := func(key string) bool {
		_, err := c.StatObject(ctx, "bkt", key, minio.StatObjectOptions{})
		return err == nil
	}
	if exists(orphan) || !exists("p/v/notes.txt") || !exists("p/other/b-00000000000000000000-00000000000000000001.srb") {
		t.Fatal("orphan cleanup deleted the wrong objects")
	}
	for _, b := range batches[4:] {
		if err := s.Send(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	checkRestore(t, s, "v", batches)

	// An interrupted first batch is an orphan too.
	put("p/w/"+batchName(0, 10, true, 0), frame)
	st, err = s.Open(ctx, Hello{Source: testSource, Target: "w"})
	if err != nil || st.Acked != 0 || exists("p/w/"+batchName(0, 10, true, 0)) {
		t.Fatalf("fresh volume with an orphan first batch: %v, acked %d", err, st.Acked)
	}

	// Batch objects past the first without a manifest mean the manifest
	// was lost: refused, nothing deleted.
	if err := c.RemoveObject(ctx, "bkt", "p/v/manifest.json", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Open(ctx, Hello{Source: testSource, Target: "v"})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "no manifest") {
		t.Fatalf("open without manifest: %v, want ErrRefused", err)
	}
	if !exists("p/v/" + batchName(batches[3].From, batches[3].To, false, 3)) {
		t.Fatal("batch objects deleted although the manifest is lost")
	}
}

func TestS3OtherSourceRefused(t *testing.T) {
	endpoint, _, _ := testServer(t, "bkt")
	s := mustParse(t, s3Spec(endpoint, "bkt"), "")
	ship(t, s, "v", testSource, testBatches(4)[:3])

	for _, other := range []VolumeID{{Pool: "pool-bbbb", Vol: 7, Name: "db"}, {Pool: testSource.Pool, Vol: 8, Name: "db"}} {
		s := mustParse(t, s3Spec(endpoint, "bkt"), "")
		_, err := s.Open(context.Background(), Hello{Source: other, Target: "v"})
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "pool-aaaa") {
			t.Fatalf("open from %+v: %v, want ErrRefused naming the holder", other, err)
		}
		if err := s.Send(context.Background(), testBatches(4)[0]); err == nil {
			t.Fatal("send after a refused open accepted")
		}
	}
}

// removeAll deletes every object of a bucket, as if the bucket were lost.
func removeAll(t *testing.T, c *minio.Client, bucket string) {
	t.Helper()
	ctx := context.Background()
	for o := range c.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if err := c.RemoveObject(ctx, bucket, o.Key, minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// flipByte damages one byte of a file in the posix directory, as bit rot
// on the S3 server would.
func flipByte(t *testing.T, path string, at func(n int) int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[at(len(data))] ^= 0x40
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func middle(n int) int { return n / 2 }

func TestS3ErasureCoded(t *testing.T) {
	endpoint, dir, c := testServer(t, "bk1", "bk2", "bk3")
	spec := s3Spec(endpoint, "bk1/p", "bk2/q", "bk3")
	batches := testBatches(5)
	ctx := context.Background()

	// Losing all of any one bucket loses nothing, and shipping goes on
	// with the bucket emptied.
	for lost, bucket := range []string{"bk1", "bk2", "bk3"} {
		vol := fmt.Sprintf("v%d", lost)
		s := mustParse(t, spec, "2+1")
		ship(t, s, vol, testSource, batches[:4])
		if st := s.Stats(); st.Objects != 4*3 || st.Manifests != 4*3 {
			t.Fatalf("stats %+v, want 12 shards and 12 manifests", st)
		}
		removeAll(t, c, bucket)
		checkRestore(t, mustParse(t, spec, "2+1"), vol, batches[:4])

		// The next run rebuilds the lost bucket's shards, so the set
		// survives losing another bucket afterwards.
		s = mustParse(t, spec, "2+1")
		st, err := s.Open(ctx, Hello{Source: testSource, Target: vol, Size: 64 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if s.Stats().Repaired != 4 || !strings.Contains(st.Message, "rebuilt 4 lost shard(s)") || !strings.Contains(st.Message, "had lost 4") {
			t.Fatalf("open after losing %s: stats %+v, message %q", bucket, s.Stats(), st.Message)
		}
		t.Logf("open after losing %s: %s", bucket, st.Message)
		for _, b := range batches[4:] {
			if err := s.Send(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		checkRestore(t, mustParse(t, spec, "2+1"), vol, batches)
		removeAll(t, c, []string{"bk1", "bk2", "bk3"}[(lost+1)%3])
		checkRestore(t, mustParse(t, spec, "2+1"), vol, batches)
	}

	// A damaged shard, or damaged manifest, on one target is outvoted.
	s := mustParse(t, spec, "2+1")
	ship(t, s, "c", testSource, batches)
	m, err := s.Manifest(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, filepath.Join(dir, "bk2", "q", "c", m.Batches[2].Key), middle)
	flipByte(t, filepath.Join(dir, "bk1", "p", "c", m.Batches[0].Key), func(int) int { return 5 })
	flipByte(t, filepath.Join(dir, "bk3", "c", m.Batches[4].Key), func(n int) int { return n - 1 })
	flipByte(t, filepath.Join(dir, "bk3", "c", manifestName), middle)
	checkRestore(t, mustParse(t, spec, "2+1"), "c", batches)

	// Open rewrites the damaged manifest.
	s = mustParse(t, spec, "2+1")
	if _, err := s.Open(ctx, Hello{Source: testSource, Target: "c"}); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "bk3", "c", manifestName)); err != nil {
		t.Fatal(err)
	} else if _, err := decodeManifest(data, "c"); err != nil {
		t.Fatalf("damaged manifest not rewritten: %v", err)
	}

	// Two damaged shards of one batch are one too many.
	flipByte(t, filepath.Join(dir, "bk1", "p", "c", m.Batches[2].Key), middle)
	_, err = s.ReadBatch(ctx, "c", m.Batches[2])
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "s3://bk1/p:") || !strings.Contains(err.Error(), "s3://bk2/q:") {
		t.Fatalf("two damaged shards: %v, want ErrCorrupt naming bk1 and bk2", err)
	}
	t.Logf("two damaged shards: %v", err)

	// The coding must match what was shipped.
	plain := mustParse(t, s3Spec(endpoint, "bk1/p"), "")
	if _, err := plain.Open(ctx, Hello{Source: testSource, Target: "c"}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "--ec 2+1") {
		t.Fatalf("plain open of an erasure-coded volume: %v, want ErrRefused", err)
	}

	// Losing two buckets of three loses the data, clearly.
	ship(t, mustParse(t, spec, "2+1"), "d", testSource, batches[:3])
	removeAll(t, c, "bk1")
	removeAll(t, c, "bk3")
	s = mustParse(t, spec, "2+1")
	m, err = s.Manifest(ctx, "d")
	if err != nil {
		t.Fatalf("manifest with one target left: %v", err)
	}
	_, err = s.ReadBatch(ctx, "d", m.Batches[0])
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "s3://bk1/p: shard missing") || !strings.Contains(err.Error(), "s3://bk3: shard missing") {
		t.Fatalf("two lost targets: %v, want ErrCorrupt naming bk1 and bk3", err)
	}
	t.Logf("two lost targets: %v", err)
	removeAll(t, c, "bk2")
	if _, err := s.Manifest(ctx, "d"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("manifest with all targets emptied: %v, want ErrNotFound", err)
	}
}

func TestS3CorruptPlain(t *testing.T) {
	endpoint, dir, _ := testServer(t, "bkt")
	spec := s3Spec(endpoint, "bkt/p")
	batches := testBatches(6)
	ctx := context.Background()
	s := mustParse(t, spec, "")
	ship(t, s, "v", testSource, batches)
	m, err := s.Manifest(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	vdir := filepath.Join(dir, "bkt", "p", "v")

	flipByte(t, filepath.Join(vdir, m.Batches[2].Key), middle)
	if _, err := s.ReadBatch(ctx, "v", m.Batches[2]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged object: %v, want ErrCorrupt", err)
	}
	if b, err := s.ReadBatch(ctx, "v", m.Batches[1]); err != nil || !b.Equal(batches[1]) {
		t.Fatalf("undamaged object: %v", err)
	}
	if err := os.Remove(filepath.Join(vdir, m.Batches[1].Key)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadBatch(ctx, "v", m.Batches[1]); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("lost object: %v, want ErrCorrupt", err)
	}

	flipByte(t, filepath.Join(vdir, manifestName), func(n int) int { return n - 5 })
	if _, err := s.Manifest(ctx, "v"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged manifest: %v, want ErrCorrupt", err)
	}
	if _, err := mustParse(t, spec, "").Open(ctx, Hello{Source: testSource, Target: "v"}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open with a damaged manifest: %v, want ErrCorrupt", err)
	}
}

func TestS3BadCredentials(t *testing.T) {
	endpoint, _, _ := testServer(t, "bkt")
	ctx := context.Background()
	hello := Hello{Source: testSource, Target: "v"}

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-42")
	_, err := mustParse(t, s3Spec(endpoint, "bkt"), "").Open(ctx, hello)
	if !errors.Is(err, ErrAuth) || strings.Contains(err.Error(), "wrong-secret-42") || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("wrong secret: %v, want ErrAuth without the secret", err)
	}
	t.Logf("wrong secret: %v", err)

	t.Setenv("AWS_ACCESS_KEY_ID", "nobody")
	_, err = mustParse(t, s3Spec(endpoint, "bkt"), "").Open(ctx, hello)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong access key: %v, want ErrAuth", err)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", testAccess)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecret)
	_, err = mustParse(t, s3Spec(endpoint, "no-such-bucket/p"), "").Open(ctx, hello)
	if err == nil || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) {
		t.Fatalf("missing bucket: %v", err)
	}
	t.Logf("missing bucket: %v", err)
}

func TestParseS3Targets(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_ENDPOINT_URL", "http://env.example:9000")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "eu-west-3")

	s, err := ParseS3Targets("s3://bkt/a/b/", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "s3://bkt/a/b" || s.ec != nil || s.targets[0].endpoint != "http://env.example:9000" ||
		s.targets[0].key("v", manifestName) != "a/b/v/manifest.json" {
		t.Fatalf("parsed %s at %s", s, s.targets[0].endpoint)
	}
	s, err = ParseS3Targets("s3://bk1?endpoint=https://one.example, s3://bk2/x,s3://bk3/y", "2+1")
	if err != nil {
		t.Fatal(err)
	}
	if s.String() != "s3://bk1,s3://bk2/x,s3://bk3/y (ec 2+1)" || s.targets[0].endpoint != "https://one.example" ||
		s.targets[1].endpoint != "http://env.example:9000" || s.targets[0].key("v", "k") != "v/k" {
		t.Fatalf("parsed %s", s)
	}
	t.Setenv("AWS_ENDPOINT_URL", "")
	if s, err = ParseS3Targets("s3://bkt", ""); err != nil || s.targets[0].endpoint != "https://s3.amazonaws.com" {
		t.Fatalf("default endpoint: %v", err)
	}

	bad := []struct{ spec, ec, want string }{
		{"s3://bk1,s3://bk2,s3://bk3", "", "3 S3 targets need --ec K+M with K+M = 3"},
		{"s3://bk1,s3://bk2,s3://bk3", "2+2", "needs 4 S3 targets, got 3"},
		{"s3://bk1", "1+1", "needs 2 S3 targets, got 1"},
		{"s3://bk1,s3://bk2", "2", "want K+M"},
		{"s3://bk1,s3://bk2", "1+x", "want K+M"},
		{"s3://bk1,s3://bk2", "2+0", "M >= 1"},
		{"s3://bk1,,s3://bk2", "1+1", "empty entry"},
		{"s3://bk1/p,s3://bk1/p/", "1+1", "are the same"},
		{"http://bk1/p", "", "must start with s3://"},
		{"s3:///p", "", "no bucket"},
		{"s3://bk1/p?region=x", "", "unknown"},
		{"s3://bk1/p?endpoint=ftp://x", "", "endpoint must be"},
		{"s3://bk1/p?endpoint=127.0.0.1:7070", "", "endpoint must be"},
		{"s3://AKIAXX:topsecret@bk1/p", "", "must not carry credentials"},
		{"s3://bk1/p?endpoint=http://u:topsecret@h", "", "must not carry credentials"},
		{"s3://bk1/p%zz:topsecret", "", "invalid S3 URL"},
	}
	for _, c := range bad {
		_, err := ParseS3Targets(c.spec, c.ec)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "topsecret") {
			t.Errorf("ParseS3Targets(%q, %q): %v, want %q", c.spec, c.ec, err, c.want)
		}
	}
}

// TestS3FailedSend: a Send that fails (a shard or a manifest not written)
// acknowledges nothing, and the same batch can be sent again.
func TestS3FailedSend(t *testing.T) {
	endpoint, dir, c := testServer(t, "bk1", "bk2", "bk3")
	spec := s3Spec(endpoint, "bk1", "bk2", "bk3")
	batches := testBatches(7)
	ctx := context.Background()
	s := mustParse(t, spec, "2+1")
	ship(t, s, "v", testSource, batches[:3])
	acked := batches[2].To

	// A shard PUT fails: the bucket is gone.
	removeAll(t, c, "bk2")
	if err := c.RemoveBucket(ctx, "bk2"); err != nil {
		t.Fatal(err)
	}
	err := s.Send(ctx, batches[3])
	if err == nil || !strings.Contains(err.Error(), `bucket "bk2" does not exist`) {
		t.Fatalf("send to a lost bucket: %v", err)
	}
	if err := s.Send(ctx, batches[4]); err == nil {
		t.Fatal("send past a failed batch accepted")
	}
	if err := c.MakeBucket(ctx, "bk2", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	if st, err := mustParse(t, spec, "2+1").Open(ctx, Hello{Source: testSource, Target: "v"}); err != nil || st.Acked != acked {
		t.Fatalf("reopen after a failed send: %v, acked %d, want %d", err, st.Acked, acked)
	}

	// A manifest PUT fails on one target: a directory is in its way.
	s = mustParse(t, spec, "2+1")
	ship(t, s, "v", testSource, batches[3:4])
	block := filepath.Join(dir, "bk3", "v", manifestName)
	if err := os.Remove(block); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(block, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err = s.Send(ctx, batches[4])
	if err == nil || !strings.Contains(err.Error(), "s3://bk3: put v/manifest.json") {
		t.Fatalf("send with a manifest not written: %v", err)
	}
	t.Logf("manifest not written: %v", err)
	// The other targets hold the batch and a manifest listing it: a reader
	// takes that one.
	if m, err := mustParse(t, spec, "2+1").Manifest(ctx, "v"); err != nil || m.Acked != batches[4].To {
		t.Fatalf("manifest after a partly written one: %v", err)
	}
	if err := os.RemoveAll(block); err != nil {
		t.Fatal(err)
	}
	for _, b := range batches[4:] {
		if err := s.Send(ctx, b); err != nil {
			t.Fatalf("send %d-%d after the failure: %v", b.From, b.To, err)
		}
	}
	checkRestore(t, mustParse(t, spec, "2+1"), "v", batches)
}

func TestS3ErrorClasses(t *testing.T) {
	tg := &s3Target{bucket: "bkt", name: "s3://bkt/p", endpoint: "http://h"}
	cases := []struct {
		er   minio.ErrorResponse
		want error
	}{
		{minio.ErrorResponse{Code: "NoSuchKey", StatusCode: 404}, errNoKey},
		{minio.ErrorResponse{StatusCode: 404}, errNoKey},
		{minio.ErrorResponse{Code: "EntityTooLarge", StatusCode: 400}, ErrNoSpace},
		{minio.ErrorResponse{Code: "InsufficientStorage", StatusCode: 507}, ErrNoSpace},
		{minio.ErrorResponse{Code: "XServerFull", StatusCode: 507}, ErrNoSpace},
		{minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403}, ErrAuth},
		{minio.ErrorResponse{Code: "XSomethingElse", StatusCode: 403}, ErrAuth},
		{minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, nil},
	}
	for _, c := range cases {
		err := tg.classify("put", "v/k", c.er)
		for _, class := range []error{errNoKey, ErrNoSpace, ErrAuth, ErrCorrupt} {
			if errors.Is(err, class) != (class == c.want) {
				t.Errorf("%s (%d): %v", c.er.Code, c.er.StatusCode, err)
			}
		}
	}
	err := tg.classify("put", "v/k", minio.ErrorResponse{Code: "NoSuchBucket", StatusCode: 404})
	if !strings.Contains(err.Error(), `bucket "bkt" does not exist`) {
		t.Errorf("NoSuchBucket: %v", err)
	}
}

// TestS3ShipSkipsUnchanged: on S3 a run after writes to other volumes of
// the pool stores no object and rewrites no manifest.
func TestS3ShipSkipsUnchanged(t *testing.T) {
	endpoint, _, _ := testServer(t, "bkt")
	s := mustParse(t, s3Spec(endpoint, "bkt/p"), "")
	a := newSite(t)
	a.pool.CreateVolume("v", 8<<20)
	a.pool.CreateVolume("other", 8<<20)
	rng := seed(t)
	scribble(t, a.pool, "v", rng, 20)
	ship := func() Result {
		t.Helper()
		r, err := Ship(context.Background(), ShipOptions{Pool: a.pool, Volume: "v", Target: s, PinID: "s3"})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ship()
	before := s.Stats()
	scribble(t, a.pool, "other", rng, 20)
	if r := ship(); r.Batches != 0 {
		t.Fatalf("run after writes to another volume: %+v", r)
	}
	if after := s.Stats(); after.Objects != before.Objects || after.Manifests != before.Manifests {
		t.Fatalf("S3 stats went from %+v to %+v", before, after)
	}
	scribble(t, a.pool, "v", rng, 5)
	if r := ship(); r.Batches != 1 || r.Acked != a.pool.AppliedSeq() {
		t.Fatalf("run after writes to the volume: %+v", r)
	}
}

// TestS3LostObjectReported: without erasure coding a lost batch object
// cannot be rebuilt; the next run says so (and what to do).
func TestS3LostObjectReported(t *testing.T) {
	endpoint, _, c := testServer(t, "bkt")
	spec := s3Spec(endpoint, "bkt/p")
	batches := testBatches(7)
	s := mustParse(t, spec, "")
	ship(t, s, "v", testSource, batches)
	m, err := s.Manifest(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveObject(context.Background(), "bkt", "p/v/"+m.Batches[3].Key, minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	s = mustParse(t, spec, "")
	st, err := s.Open(context.Background(), Hello{Source: testSource, Target: "v", Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.Message, "1 batch object(s) of volume v are lost") || !strings.Contains(st.Message, m.Batches[3].Key) || s.Stats().Missing != 1 {
		t.Fatalf("open after losing an object: %q, stats %+v", st.Message, s.Stats())
	}
	t.Log(st.Message)
}
