package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

// scrubJSON runs `strata scrub --now --json ARGS` and returns its report
// and exit status.
func scrubJSON(t *testing.T, s *server, args ...string) (control.ScrubReport, result) {
	t.Helper()
	r := s.cli(append([]string{"scrub", "--now", "--json"}, args...)...)
	var rep control.ScrubReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("scrub --json: %v: %s", err, r)
	}
	return rep, r
}

// The drill with two real sites: flip a byte in a journal segment
// in a block of a replicated volume and in one of a volume with no
// replica (and in one of a third volume). Reads of both fail with EIO; scrub finds exactly those two
// blocks and names their volumes, points and snapshots; it heals the first
// from the replica site --from names (reads return the right data, at the
// head and the snapshot, also after a restart) and exits non-zero for the
// second, whose reads keep failing. A third block, of a volume that
// replicates continuously, heals from its configured target.
func TestE2EScrub(t *testing.T) {
	a, _, bAddr, tok := replSites(t)
	a.createVolume("d", "16MiB")
	a.createVolume("e", "16MiB")
	mustQemuIO(t, a.uri("d"), "write -P 0x11 0 64k", "write -P 0x5c 1M 4k", "flush")
	a.mustCLI("snapshot", "create", "d", "s1")
	mustQemuIO(t, a.uri("d"), "write -P 0x22 2M 4k", "flush")
	mustQemuIO(t, a.uri("e"), "write -P 0x3c 0 4k", "write -P 0x44 4k 4k", "flush")
	a.mustCLI("replicate", "d", "--to", "strata://"+bAddr, "--token-file", tok, "--once")
	// f replicates continuously: scrub heals it from its target unasked.
	a.createVolume("f", "16MiB")
	mustQemuIO(t, a.uri("f"), "write -P 0x6e 8k 4k", "flush")
	a.mustCLI("replication", "add", "f", "--to", "strata://"+bAddr, "--token-file", tok)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if l := replicationList(t, a); len(l) > 0 && l[len(l)-1].Volume == "f" && l[len(l)-1].Acked > 0 && l[len(l)-1].LagRecords == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("f never caught up: %+v", replicationList(t, a))
		}
	}

	// Bad flags: one clear line each.
	dir := shortTempDir(t)
	checkOneLineError(t, "serve --scrub-rate", run(t, strataBin, "serve", "--data", dir, "--scrub-rate", "fast"), "--scrub-rate \"fast\"", "64MiB/s")
	checkOneLineError(t, "serve --scrub-interval", run(t, strataBin, "serve", "--data", dir, "--scrub-interval", "weekly"), "--scrub-interval \"weekly\"", "7d")
	checkOneLineError(t, "scrub VOL without --now", a.cli("scrub", "d"), "go with --now")
	checkOneLineError(t, "scrub --now --from s3", a.cli("scrub", "--now", "--from", "s3://bk1/x"), "strata://")
	checkOneLineError(t, "scrub --now unknown volume", a.cli("scrub", "--now", "nope"), "nope")

	// A clean pass first: nothing to find.
	if rep, r := scrubJSON(t, a); r.code != 0 || rep.ErrorsFound() != 0 || rep.Versions < 21 {
		t.Fatalf("scrub of an undamaged pool: %s", r)
	}
	a.stop()
	for _, pat := range []byte{0x5c, 0x3c, 0x6e} {
		if !flipInJournal(t, a.dir, pat) {
			t.Fatalf("no block of %#x in the journal", pat)
		}
	}
	a.start()
	for _, u := range []string{a.uri("d"), a.uri("e")} {
		off := map[string]string{a.uri("d"): "1M", a.uri("e"): "0"}[u]
		if r := qemuIO(t, u, "read 0x0 4k", fmt.Sprintf("read %s 4k", off)); r.code == 0 && !strings.Contains(r.stdout+r.stderr, "error") {
			t.Fatalf("%s: the damaged block read without an error: %s", u, r)
		}
	}

	// Found, not repaired: exactly the two blocks, with what reads them.
	rep, r := scrubJSON(t, a, "--no-repair")
	if r.code != exitDamage || len(rep.Damaged) != 3 || rep.ErrorsFound() != 3 || rep.Unrepaired() != 3 {
		t.Fatalf("scrub --no-repair: %s", r)
	}
	d, e, f := rep.Damaged[0], rep.Damaged[1], rep.Damaged[2]
	if d.Volume != "d" || d.Offset != 1<<20 || !d.Head || fmt.Sprint(d.Snapshots) != "[s1]" ||
		e.Volume != "e" || e.Offset != 0 || !e.Head || len(e.Snapshots) != 0 || f.Volume != "f" || f.Offset != 8192 {
		t.Fatalf("damaged blocks: %+v", rep.Damaged)
	}

	// Healed from the replica site where it holds the block.
	r = a.cli("scrub", "--now", "--from", "strata://"+bAddr, "--token-file", tok)
	t.Logf("scrub --now --from:\n%s%s", r.stdout, r.stderr)
	if r.code != exitDamage || !strings.Contains(r.stdout, "REPAIRED: d offset 1048576") || !strings.Contains(r.stdout, "REPAIRED: f offset 8192") ||
		!strings.Contains(r.stdout, "snapshots s1") || !strings.Contains(r.stdout, "DAMAGED:  e offset 0") ||
		!strings.Contains(r.stdout, "restore: bytes 0..4095 of e") || !strings.Contains(r.stderr, "1 damaged block left unrepaired") {
		t.Fatalf("scrub --now --from: %s", r)
	}
	check := func() {
		t.Helper()
		mustQemuIO(t, a.uri("d"), "read -P 0x5c 1M 4k", "read -P 0x11 0 64k", "read -P 0x22 2M 4k")
		mustRun(t, "qemu-io", "-r", "-f", "raw", a.uri("d@s1"), "-c", "read -P 0x5c 1M 4k", "-c", "read -P 0 2M 4k")
		mustQemuIO(t, a.uri("e"), "read -P 0x44 4k 4k")
		mustQemuIO(t, a.uri("f"), "read -P 0x6e 8k 4k")
		if r := qemuIO(t, a.uri("e"), "read -P 0x3c 0 4k"); r.code == 0 && !strings.Contains(r.stdout+r.stderr, "error") {
			t.Fatalf("the unrepaired block read without an error: %s", r)
		}
	}
	check()
	if r := run(t, "nbdcopy", a.uri("d"), "-"); r.code != 0 {
		t.Fatalf("nbdcopy of the healed volume: %s", r)
	}

	// Status, the last report and the metrics say what happened.
	if st := a.mustCLI("status"); !strings.Contains(st, "scrub:    last pass") || !strings.Contains(st, "2 repaired, 1 left") {
		t.Fatalf("status:\n%s", st)
	}
	if r := a.cli("scrub"); r.code != exitDamage || !strings.Contains(r.stdout, "REPAIRED: d offset 1048576") {
		t.Fatalf("strata scrub: %s", r)
	}
	fams, text := a.scrape(t)
	for name, want := range map[string]float64{"strata_scrub_errors_found_total": 6, "strata_scrub_errors_repaired_total": 2, "strata_scrub_unrepaired_errors": 1} {
		if v, err := fams.Value(name); err != nil || v != want {
			t.Fatalf("%s = %v (%v), want %v\n%s", name, v, err, want, text)
		}
	}
	if v, _ := fams.Value("strata_scrub_bytes_checked_total"); v < 3*(19*4096) {
		t.Fatalf("strata_scrub_bytes_checked_total = %v", v)
	}
	if v, _ := fams.Value("strata_scrub_last_completed_timestamp_seconds"); v == 0 {
		t.Fatal("no strata_scrub_last_completed_timestamp_seconds")
	}

	// The repair is in the journal: it survives a restart.
	a.restart()
	check()
	rep, r = scrubJSON(t, a)
	if r.code != exitDamage || len(rep.Damaged) != 1 || rep.Damaged[0].Volume != "e" || len(rep.Unreferenced) != 2 {
		t.Fatalf("scrub after the restart: %s", r)
	}
}

// An S3 target shipped with erasure coding (versitygw): a byte flipped in
// one shard is found, named, rebuilt from the other shards, and a restore
// afterwards (with another bucket gone) returns the volume's content.
func TestE2EScrubS3(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	_, root := startS3(t)
	a := startServer(t)
	a.createVolume("v", "16MiB")
	fillRandom(t, a.uri("v"), 0, 4<<20)
	a.mustCLI("snapshot", "create", "v", "s1")
	fillRandom(t, a.uri("v"), 1<<20, 1<<20)
	ec := "s3://bk1/x,s3://bk2/x,s3://bk3/x"
	a.mustCLI("replicate", "v", "--to", ec, "--ec", "2+1", "--once")
	if r := a.cli("scrub", "--target", ec, "--ec", "2+1"); r.code != 0 || !strings.Contains(r.stdout, "no damage found") {
		t.Fatalf("scrub of an undamaged target: %s", r)
	}
	shards, _ := filepath.Glob(filepath.Join(root, "bk2", "x", "v", "b-*.srb"))
	if len(shards) == 0 {
		t.Fatal("no shard in bk2")
	}
	b, err := os.ReadFile(shards[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	if err := os.WriteFile(shards[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	key := filepath.Base(shards[0])
	r := a.cli("scrub", "--target", ec, "--ec", "2+1", "--no-repair")
	if r.code != exitDamage || !strings.Contains(r.stdout, "DAMAGED:  volume v "+key+" shard 1 on s3://bk2/x (shard payload checksum mismatch)") ||
		!strings.Contains(r.stdout, "1 error found, 0 repaired, 1 left") {
		t.Fatalf("scrub --no-repair: %s", r)
	}
	r = a.cli("scrub", "--target", ec, "--ec", "2+1")
	t.Logf("scrub --target:\n%s", r.stdout)
	if r.code != 0 || !strings.Contains(r.stdout, "REPAIRED: volume v "+key+" shard 1 on s3://bk2/x") {
		t.Fatalf("scrub: %s", r)
	}
	if r := a.cli("scrub", "--target", ec, "--ec", "2+1", "v"); r.code != 0 || !strings.Contains(r.stdout, "no damage found") {
		t.Fatalf("scrub after the repair: %s", r)
	}
	// The rebuilt shard is good: restore with bk1 gone reads bk2 and bk3.
	if err := os.RemoveAll(filepath.Join(root, "bk1", "x")); err != nil {
		t.Fatal(err)
	}
	a.mustCLI("restore", ec, "--ec", "2+1", "v", "--at", "s1", "r1")
	sameContent(t, "restore at s1 after the scrub", a.uri("v@s1"), a.uri("r1"))
}
