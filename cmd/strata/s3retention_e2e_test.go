package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestE2ES3Retention ships three runs to an erasure-coded S3 target
// (versitygw), then compacts its history with an 8-second window: the
// daemon is killed with kill -9 as soon as the compaction's first new
// object lands. After a restart the next compaction finishes the job,
// the restores at the oldest and the newest points kept match the
// source, a time between two kept points restores the earlier and says
// which seq it reached, and an older point is refused, naming the oldest
// kept.
func TestE2ES3Retention(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	_, root := startS3(t)
	a := startServer(t)
	a.createVolume("v", "64MiB")
	ec := "s3://bk1/ret,s3://bk2/ret,s3://bk3/ret"
	ship := func() {
		t.Helper()
		a.mustCLI("replicate", "v", "--to", ec, "--ec", "2+1", "--once")
	}
	fillRandom(t, a.uri("v"), 0, 24<<20)
	a.mustCLI("snapshot", "create", "v", "s1")
	ship()
	fillRandom(t, a.uri("v"), 8<<20, 16<<20)
	a.mustCLI("snapshot", "create", "v", "s2")
	ship()
	// A time after the second run and before the third: once compacted,
	// the nearest kept point at or before it is the second run's end.
	between := time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339)
	time.Sleep(9 * time.Second) // the first two runs leave an 8-second window
	fillRandom(t, a.uri("v"), 40<<20, 4<<20)
	a.mustCLI("snapshot", "create", "v", "s3")
	ship()

	// Kill the daemon mid-compaction.
	c := startBG(t, strataBin, "--data", a.dir, "s3", "compact", "v", "--to", ec, "--ec", "2+1", "--keep-history", "8s")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if n, _ := filepath.Glob(filepath.Join(root, "bk*", "ret", "v", "b-*-c*")); len(n) > 0 {
			a.kill9()
			t.Logf("killed the daemon once %s was written", filepath.Base(n[0]))
			break
		}
		if c.exited() {
			t.Fatalf("the compaction ended before the kill: %s", c.output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no compacted object appeared: %s", c.output())
		}
		time.Sleep(time.Millisecond)
	}
	c.kill()
	a.start()

	// The target restores the newest point as it was; the next
	// compaction deletes the leftovers and finishes.
	a.mustCLI("restore", ec, "--ec", "2+1", "v", "mid-newest")
	sameContent(t, "restore after the killed compaction", a.uri("v@s3"), a.uri("mid-newest"))
	out := a.mustCLI("s3", "compact", "v", "--to", ec, "--ec", "2+1", "--keep-history", "8s")
	t.Logf("strata s3 compact:\n%s", out)
	m := regexp.MustCompile(`oldest point kept: seq:(\d+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "cleaned") {
		t.Fatalf("compaction after the kill did not clean up or name the oldest point:\n%s", out)
	}
	oldest := "seq:" + m[1]
	// The oldest point kept is the second run's end: s2's content.
	r := a.mustCLI("restore", ec, "--ec", "2+1", "v", "--at", oldest, "r-oldest")
	t.Logf("%s", strings.TrimSpace(r))
	if !strings.Contains(r, "from 1 batch ") {
		t.Fatalf("restore at the oldest point kept did not read the one base object: %s", r)
	}
	sameContent(t, "restore at the oldest point kept", a.uri("v@s2"), a.uri("r-oldest"))
	a.mustCLI("restore", ec, "--ec", "2+1", "v", "--at", "s3", "r-newest")
	sameContent(t, "restore at the newest point", a.uri("v@s3"), a.uri("r-newest"))
	// A time between two kept points restores the earlier one, and says so.
	r = a.mustCLI("restore", ec, "--ec", "2+1", "v", "--at", between, "r-between")
	t.Logf("%s", strings.TrimSpace(r))
	if want := "restored v@" + between + " (the nearest kept point at or before it: " + oldest + ") from"; !strings.Contains(r, want) {
		t.Fatalf("restore at a time between two kept points: %q does not say %q", r, want)
	}
	sameContent(t, "restore between two kept points", a.uri("v@s2"), a.uri("r-between"))
	checkOneLineError(t, "restore before the oldest point kept", a.cli("restore", ec, "--ec", "2+1", "v", "--at", "seq:1", "r-old"),
		"older than the oldest point", oldest, "--keep-history 8s")
	checkOneLineError(t, "restore at a snapshot compacted away", a.cli("restore", ec, "--ec", "2+1", "v", "--at", "s1", "r-old"),
		"compacted", oldest)

	// A shipping run with the policy applies it after shipping: the
	// third run's point leaves the window and becomes the base.
	time.Sleep(9 * time.Second)
	fillRandom(t, a.uri("v"), 48<<20, 1<<20)
	a.mustCLI("snapshot", "create", "v", "s4")
	out = a.mustCLI("replicate", "v", "--to", ec, "--ec", "2+1", "--once", "--keep-history", "8s")
	t.Logf("strata replicate --keep-history 8s:\n%s", out)
	if !strings.Contains(out, "history (--keep-history 8s): 3 batch objects") {
		t.Fatalf("the shipping run did not apply the policy:\n%s", out)
	}
	a.mustCLI("restore", ec, "--ec", "2+1", "v", "--at", "s4", "r-s4")
	sameContent(t, "restore after a run that compacted", a.uri("v@s4"), a.uri("r-s4"))

	// Every bucket holds the manifest and the objects it lists.
	for _, b := range []string{"bk1", "bk2", "bk3"} {
		objs, _ := filepath.Glob(filepath.Join(root, b, "ret", "v", "*"))
		if len(objs) != 3 { // manifest.json, the base, the fourth run
			t.Fatalf("%s holds %d objects after the compaction: %v", b, len(objs), objs)
		}
	}
}
