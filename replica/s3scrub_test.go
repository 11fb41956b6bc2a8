package replica

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Scrub finds exactly the damaged shards and manifest, rebuilds them from
// the good ones, and a second pass finds nothing; a batch with more damaged
// shards than parity, and a damaged plain object, are reported unrepaired
// with the points they carry.
func TestS3Scrub(t *testing.T) {
	endpoint, dir, c := testServer(t, "bk1", "bk2", "bk3", "plain")
	spec := s3Spec(endpoint, "bk1/p", "bk2/q", "bk3")
	batches := testBatches(7)
	ctx := context.Background()
	s := mustParse(t, spec, "2+1")
	ship(t, s, "c", testSource, batches)
	ship(t, mustParse(t, spec, "2+1"), "d", testSource, batches[:3])
	m, err := s.Manifest(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, filepath.Join(dir, "bk2", "q", "c", m.Batches[2].Key), middle)
	flipByte(t, filepath.Join(dir, "bk3", "c", m.Batches[4].Key), func(n int) int { return n - 1 })
	flipByte(t, filepath.Join(dir, "bk1", "p", "c", manifestName), middle)

	rep, err := mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rep.Volumes) != "[c d]" || rep.Objects != len(m.Batches)+3 || rep.Shards != 3*rep.Objects {
		t.Fatalf("scrub checked %+v", rep)
	}
	if len(rep.Damaged) != 3 || rep.Unrepaired() != 3 {
		t.Fatalf("want 3 damaged, unrepaired without Repair: %+v", rep.Damaged)
	}
	want := map[string]bool{
		fmt.Sprintf("%s/%d", m.Batches[2].Key, 1): true,
		fmt.Sprintf("%s/%d", m.Batches[4].Key, 2): true,
		fmt.Sprintf("%s/%d", manifestName, -1):    true,
	}
	for _, d := range rep.Damaged {
		if !want[fmt.Sprintf("%s/%d", d.Key, d.Shard)] || d.Volume != "c" {
			t.Fatalf("unexpected damage %+v", d)
		}
	}

	rep, err = mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{Volumes: []string{"c"}, Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 3 || rep.Repaired() != 3 {
		t.Fatalf("repair: %+v", rep.Damaged)
	}
	if rep, err = mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{Repair: true}); err != nil || len(rep.Damaged) != 0 {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
	// Every shard holds again: the set survives losing a whole bucket.
	removeAll(t, c, "bk1")
	checkRestore(t, mustParse(t, spec, "2+1"), "c", batches)

	// Two damaged shards of a 2+1 batch: beyond repair, reported.
	flipByte(t, filepath.Join(dir, "bk2", "q", "c", m.Batches[1].Key), middle)
	flipByte(t, filepath.Join(dir, "bk3", "c", m.Batches[1].Key), middle)
	rep, err = mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{Volumes: []string{"c"}, Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	// bk1 lost everything above too: its shards are missing and rebuilt,
	// except batch 1's.
	bad := 0
	for _, d := range rep.Damaged {
		if d.Key == m.Batches[1].Key {
			bad++
			if d.Repaired || d.RepairError == "" || d.To != m.Batches[1].To {
				t.Fatalf("unrepairable batch: %+v", d)
			}
		} else if !d.Repaired {
			t.Fatalf("not repaired: %+v", d)
		}
	}
	if bad != 3 || rep.Unrepaired() != 3 {
		t.Fatalf("batch beyond repair: %d of its shards reported, %d unrepaired: %+v", bad, rep.Unrepaired(), rep.Damaged)
	}

	// A plain object has no parity: reported only.
	ps := s3Spec(endpoint, "plain/x")
	ship(t, mustParse(t, ps, ""), "e", testSource, batches[:2])
	pm, err := mustParse(t, ps, "").Manifest(ctx, "e")
	if err != nil {
		t.Fatal(err)
	}
	flipByte(t, filepath.Join(dir, "plain", "x", "e", pm.Batches[1].Key), middle)
	rep, err = mustParse(t, ps, "").Scrub(ctx, S3ScrubOptions{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 1 || rep.Damaged[0].Shard != -1 || rep.Damaged[0].Key != pm.Batches[1].Key || rep.Unrepaired() != 1 {
		t.Fatalf("plain: %+v", rep.Damaged)
	}
}

// An object or shard that grew on the server (bytes appended) is damage
// like any other: reported, an EC shard rebuilt, and the pass goes on to
// the later objects and volumes instead of stopping at it.
func TestS3ScrubOversized(t *testing.T) {
	endpoint, dir, _ := testServer(t, "bk1", "bk2", "bk3", "plain")
	spec := s3Spec(endpoint, "bk1/p", "bk2/q", "bk3")
	batches := testBatches(3)
	ctx := context.Background()
	s := mustParse(t, spec, "2+1")
	ship(t, s, "c", testSource, batches)
	ship(t, mustParse(t, spec, "2+1"), "d", testSource, batches)
	m, err := s.Manifest(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	dm, err := s.Manifest(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, filepath.Join(dir, "bk2", "q", "c", m.Batches[0].Key))
	flipByte(t, filepath.Join(dir, "bk3", "d", dm.Batches[len(dm.Batches)-1].Key), middle)

	rep, err := mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{Repair: true})
	if err != nil {
		t.Fatalf("scrub: %v", err)
	}
	if fmt.Sprint(rep.Volumes) != "[c d]" || rep.Objects != len(m.Batches)+len(dm.Batches) {
		t.Fatalf("scrub stopped early: %+v", rep)
	}
	if len(rep.Damaged) != 2 || rep.Repaired() != 2 {
		t.Fatalf("want 2 damaged shards repaired: %+v", rep.Damaged)
	}
	if d := rep.Damaged[0]; d.Volume != "c" || d.Key != m.Batches[0].Key || d.Shard != 1 || !strings.Contains(d.Problem, "larger") {
		t.Fatalf("grown shard: %+v", d)
	}
	if rep, err = mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{}); err != nil || len(rep.Damaged) != 0 {
		t.Fatalf("after repair: %+v %v", rep, err)
	}

	ps := s3Spec(endpoint, "plain/x")
	ship(t, mustParse(t, ps, ""), "e", testSource, batches)
	pm, err := mustParse(t, ps, "").Manifest(ctx, "e")
	if err != nil {
		t.Fatal(err)
	}
	appendBytes(t, filepath.Join(dir, "plain", "x", "e", pm.Batches[0].Key))
	rep, err = mustParse(t, ps, "").Scrub(ctx, S3ScrubOptions{Repair: true})
	if err != nil {
		t.Fatalf("plain scrub: %v", err)
	}
	if rep.Objects != len(pm.Batches) || len(rep.Damaged) != 1 || rep.Damaged[0].Key != pm.Batches[0].Key || rep.Unrepaired() != 1 || !strings.Contains(rep.Damaged[0].Problem, "larger") {
		t.Fatalf("plain: %+v", rep)
	}
}

// appendBytes grows a file in the posix directory.
func appendBytes(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("trailing garbage")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// A scrub with no volumes named finds those with a manifest on any target:
// with the first bucket of an EC set emptied, its manifest and shards are
// reported missing and rebuilt, not "no damage found".
func TestS3ScrubFirstTargetEmptied(t *testing.T) {
	endpoint, _, c := testServer(t, "bk1", "bk2", "bk3")
	spec := s3Spec(endpoint, "bk1/p", "bk2/q", "bk3")
	batches := testBatches(2)
	ctx := context.Background()
	s := mustParse(t, spec, "2+1")
	ship(t, s, "c", testSource, batches)
	m, err := s.Manifest(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	removeAll(t, c, "bk1")

	rep, err := mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{Repair: true})
	if err != nil {
		t.Fatalf("scrub: %v", err)
	}
	if fmt.Sprint(rep.Volumes) != "[c]" || rep.Objects != len(m.Batches) {
		t.Fatalf("scrub checked %+v", rep)
	}
	if len(rep.Damaged) != len(m.Batches)+1 || rep.Repaired() != len(rep.Damaged) {
		t.Fatalf("want the manifest and %d shards of bk1 rebuilt: %+v", len(m.Batches), rep.Damaged)
	}
	for _, d := range rep.Damaged {
		if d.Target != "s3://bk1/p" || !strings.Contains(d.Problem, "missing") {
			t.Fatalf("unexpected damage %+v", d)
		}
	}
	if rep, err = mustParse(t, spec, "2+1").Scrub(ctx, S3ScrubOptions{}); err != nil || len(rep.Damaged) != 0 || len(rep.Volumes) != 1 {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
	// bk1 holds everything again: the set survives losing bk2 and bk3's
	// shards.
	removeAll(t, c, "bk2")
	checkRestore(t, mustParse(t, spec, "2+1"), "c", batches)
}
