package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/qga/qgatest"
)

func snapshotsJSON(t *testing.T, s *server, vol string) []control.SnapshotInfo {
	t.Helper()
	var snaps []control.SnapshotInfo
	if err := json.Unmarshal([]byte(s.mustCLI("snapshot", "list", vol, "--json")), &snaps); err != nil {
		t.Fatal(err)
	}
	return snaps
}

func schedulesJSON(t *testing.T, s *server) []control.ScheduleStatus {
	t.Helper()
	var list []control.ScheduleStatus
	if err := json.Unmarshal([]byte(s.mustCLI("schedule", "list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	return list
}

// TestE2ESchedule drives schedules through the CLI: the pool default and a
// volume's own, the snapshot each takes at once (marked as scheduled in
// snapshot list), the schedule kept across a restart (and no second
// snapshot in the same slot), remove, and the errors; then a replica
// site's schedule that thins the scheduled copies it receives and takes
// none itself.
func TestE2ESchedule(t *testing.T) {
	a, b, bAddr, tok := replSites(t)
	a.args = append(a.args, "--schedule-every", "1d", "--schedule-keep", "daily=7")
	a.restart()
	a.createVolume("vm1", "64MiB")
	a.createVolume("other", "64MiB")
	a.mustCLI("snapshot", "create", "vm1", "by-hand")
	out := a.mustCLI("schedule", "add", "vm1", "--every", "15m", "--keep", "hourly=24,daily=14,weekly=8,monthly=12")
	if !strings.Contains(out, "scheduled vm1: every 15m, keep hourly=24,daily=14,weekly=8,monthly=12") {
		t.Fatalf("schedule add printed %q", out)
	}
	waitFor(t, "a scheduled snapshot of vm1 and of other", func() bool {
		l := schedulesJSON(t, a)
		return len(l) == 2 && l[0].Scheduled == 1 && l[1].Scheduled == 1
	})
	list := schedulesJSON(t, a)
	if l := list[0]; l.Volume != "other" || !l.Default || l.Every != 24*time.Hour {
		t.Fatalf("other follows the default: %+v", l)
	}
	if l := list[1]; l.Volume != "vm1" || l.Default || l.Every != 15*time.Minute || l.Next.Sub(l.Last) > 15*time.Minute {
		t.Fatalf("vm1's own schedule: %+v", l)
	}
	text := a.mustCLI("snapshot", "list", "vm1")
	if !strings.Contains(text, "TAKEN BY") || !regexpMatch(`auto-\d{8}T\d{6}Z +seq:\d+ +\S+ +[\d.]+ \w*B +schedule +crash`, text) || !regexpMatch(`by-hand +seq:\d+ +\S+ +[\d.]+ \w*B +hand +crash`, text) {
		t.Fatalf("snapshot list:\n%s", text)
	}
	// The schedule is durable; the restart lands in the same slot (most
	// likely: the slot is 15 minutes), which has its snapshot already.
	before := len(snapshotsJSON(t, a, "vm1"))
	a.restart()
	list = schedulesJSON(t, a)
	if len(list) != 2 || list[1].Volume != "vm1" || list[1].Default {
		t.Fatalf("after a restart: %+v", list)
	}
	if after := len(snapshotsJSON(t, a, "vm1")); after != before && time.Now().Truncate(15*time.Minute).Equal(list[1].Last.Truncate(15*time.Minute)) {
		t.Fatalf("a restart in the same slot took another snapshot: %d, then %d", before, after)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"schedule", "add", "vm1", "--every", "7m", "--keep", "daily=1"}, "does not divide a day"},
		{[]string{"schedule", "add", "vm1", "--every", "15m", "--keep", "hourly"}, "is not RULE=N"},
		{[]string{"schedule", "add", "vm1", "--every", "15m", "--keep", "daily=1", "--freeze-cmd", "true"}, "go together"},
		{[]string{"schedule", "add", "nope", "--every", "15m", "--keep", "daily=1"}, "does not exist"},
		{[]string{"snapshot", "create", "vm1", "x", "--freeze-timeout", "5s"}, "--freeze-timeout goes with"},
		{[]string{"snapshot", "create", "vm1", "x", "--qga", "/run/x.sock", "--thaw-cmd", "true"}, "not both"},
		{[]string{"schedule", "remove", "other"}, "no schedule of its own"},
	} {
		checkOneLineError(t, strings.Join(bad.args, " "), a.cli(bad.args...), bad.want)
	}
	help := a.mustCLI("schedule", "add", "--help")
	if !strings.Contains(help, "strata schedule add vm1 --every 15m --keep hourly=24,daily=14,weekly=8,monthly=12") {
		t.Fatalf("schedule add --help has no example:\n%s", help)
	}
	a.mustCLI("schedule", "remove", "vm1")
	waitFor(t, "vm1 back on the default", func() bool {
		l := schedulesJSON(t, a)
		return len(l) == 2 && l[1].Default
	})

	// Replication carries the mark; the replica's schedule thins only.
	shipJSON(t, a, "vm1", "--to", "strata://"+bAddr, "--token-file", tok)
	rs := snapshotsJSON(t, b, "vm1")
	sched := 0
	for _, sn := range rs {
		if sn.Scheduled {
			sched++
		}
	}
	if len(rs) != before || sched != before-1 {
		t.Fatalf("the replica has %d snapshots (%d scheduled), want %d (%d)", len(rs), sched, before, before-1)
	}
	b.mustCLI("schedule", "add", "vm1", "--every", "15m", "--keep", "daily=30,monthly=12")
	waitFor(t, "the replica's schedule to pass", func() bool {
		l := schedulesJSON(t, b)
		return len(l) == 1 && l[0].Replica && l[0].Scheduled == sched
	})
	if got := len(snapshotsJSON(t, b, "vm1")); got != before {
		t.Fatalf("the replica's schedule took snapshots: %d, want %d", got, before)
	}
	if text := b.mustCLI("schedule", "list"); !strings.Contains(text, "replica: thin only") {
		t.Fatalf("replica schedule list:\n%s", text)
	}
}

// TestE2EAppConsistentFsfreeze freezes a real ext4 (on a volume through
// nbdfuse and a loop device) with fsfreeze around a snapshot: a writer
// stalls while it is frozen, and the snapshot's copy is a clean ext4
// (nothing in its journal to replay), where a snapshot without the
// freeze needs recovery.
func TestE2EAppConsistentFsfreeze(t *testing.T) {
	needRoot(t)
	need(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "dumpe2fs", "mount", "umount", "fsfreeze", "findmnt", "nbdcopy")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("nbdfuse is unusable: no /dev/fuse (%v)", err)
	}
	if r := runSpec(t, cmdSpec{name: "losetup", args: []string{"-f"}, timeout: 30 * time.Second}); r.code != 0 {
		t.Skipf("losetup is unusable here (no free loop device?): %s", r)
	}
	s := startServer(t)
	s.createVolume("db", "128MiB")
	a := attachFuseLoop(t, s.uri("db"))
	mustRunTimeout(t, 2*time.Minute, "mkfs.ext4", "-q", a.dev)
	m := mountDev(t, a.dev)
	// fsfreeze freezes whatever filesystem holds the path: make sure it is
	// the test's, never this machine's own.
	if src := strings.TrimSpace(mustRun(t, "findmnt", "-n", "-o", "SOURCE", "--mountpoint", m.dir).stdout); src != a.dev {
		t.Fatalf("%s is not the mount of %s (findmnt says %q): refusing to freeze it", m.dir, a.dev, src)
	}
	// Whatever happens, the filesystem is thawed before it is unmounted
	// (cleanups run last-registered first).
	t.Cleanup(func() { runSpec(t, cmdSpec{name: "fsfreeze", args: []string{"-u", m.dir}, timeout: 30 * time.Second}) })

	// A writer: small files, each written and fsynced; it notes when
	// each completes.
	var mu sync.Mutex
	var done []time.Time
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	// The writer stops before the filesystem is thawed and unmounted.
	t.Cleanup(func() {
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f, err := os.Create(filepath.Join(m.dir, fmt.Sprintf("f%05d", i%2000)))
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			f.Write([]byte(strings.Repeat("x", 4096)))
			f.Sync()
			f.Close()
			mu.Lock()
			done = append(done, time.Now())
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	// The freeze holds for a second after fsfreeze returns: the writer
	// must stall through it.
	frozeAt := filepath.Join(t.TempDir(), "froze")
	freeze := fmt.Sprintf("sh -c 'fsfreeze -f %s && date +%%s.%%N > %s && sleep 1'", m.dir, frozeAt)
	out := s.mustCLI("snapshot", "create", "db", "frozen", "--freeze-cmd", freeze, "--thaw-cmd", "fsfreeze -u "+m.dir)
	thawed := time.Now()
	if !strings.Contains(out, "app-consistent") {
		t.Fatalf("snapshot create: %s", out)
	}
	time.Sleep(300 * time.Millisecond)
	// A snapshot without a freeze, of the mounted filesystem.
	s.mustCLI("snapshot", "create", "db", "unfrozen")
	stopOnce.Do(func() { close(stop) })
	wg.Wait()
	b, err := os.ReadFile(frozeAt)
	if err != nil {
		t.Fatal(err)
	}
	var sec float64
	fmt.Sscanf(strings.TrimSpace(string(b)), "%f", &sec)
	froze := time.Unix(0, int64(sec*1e9))
	mu.Lock()
	var during, after int
	for _, d := range done {
		switch {
		case d.After(froze.Add(50*time.Millisecond)) && d.Before(froze.Add(900*time.Millisecond)):
			during++
		case d.After(thawed):
			after++
		}
	}
	mu.Unlock()
	if during != 0 || after == 0 {
		t.Fatalf("writes completed while frozen: %d (want 0); after the thaw: %d (want some)", during, after)
	}
	text := s.mustCLI("snapshot", "list", "db")
	if !regexpMatch(`frozen +seq:\d+ +\S+ +[\d.]+ \w*B +hand +app`, text) || !regexpMatch(`unfrozen +seq:\d+ +\S+ +[\d.]+ \w*B +hand +crash`, text) {
		t.Fatalf("snapshot list:\n%s", text)
	}

	// The frozen snapshot's ext4 is clean; the other one needs recovery.
	dir := t.TempDir()
	for _, snap := range []string{"frozen", "unfrozen"} {
		img := filepath.Join(dir, snap+".img")
		mustRunTimeout(t, 2*time.Minute, "nbdcopy", s.uri("db@"+snap), img)
		hdr := mustRun(t, "dumpe2fs", "-h", img).stdout
		needsRecovery := strings.Contains(hdr, "needs_recovery")
		r := runSpec(t, cmdSpec{name: "e2fsck", args: []string{"-n", "-f", img}, timeout: time.Minute})
		switch snap {
		case "frozen":
			if needsRecovery || r.code != 0 || strings.Contains(r.stdout+r.stderr, "journal") {
				t.Fatalf("the frozen snapshot's ext4 is not clean (needs_recovery %v):\n%s", needsRecovery, r)
			}
		case "unfrozen":
			if !needsRecovery {
				t.Fatalf("the snapshot of a mounted, unfrozen ext4 needs no recovery: the test cannot tell a freeze from none")
			}
		}
	}
	m.unmount()
	a.detach()
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestE2ESnapshotQGA freezes through a QEMU guest agent (a test agent in
// this process, on a Unix socket): one that obeys (app-consistent), one
// that hangs (the timeout thaws it; crash-consistent, with a warning) and
// one that refuses (an error, no snapshot, nothing left frozen).
func TestE2ESnapshotQGA(t *testing.T) {
	s := startServer(t)
	s.createVolume("vm", "64MiB")
	ok := qgatest.Start(t, qgatest.Obey)
	out := s.mustCLI("snapshot", "create", "vm", "quiesced", "--qga", ok.Socket)
	if !strings.Contains(out, "app-consistent") || ok.Frozen() {
		t.Fatalf("obeying agent: %s (frozen %v)", out, ok.Frozen())
	}
	hang := qgatest.Start(t, qgatest.Hang)
	r := s.cli("snapshot", "create", "vm", "hung", "--qga", hang.Socket, "--freeze-timeout", "500ms")
	if r.code != 0 || !strings.Contains(r.stdout, "crash-consistent") || !strings.Contains(r.stderr, "warning: the freeze did not finish within 500ms") || hang.Frozen() {
		t.Fatalf("hung agent: %s (frozen %v)", r, hang.Frozen())
	}
	refuse := qgatest.Start(t, qgatest.Refuse)
	checkOneLineError(t, "refusing agent", s.cli("snapshot", "create", "vm", "refused", "--qga", refuse.Socket), "freeze failed", "no snapshot taken", "Device or resource busy")
	if refuse.Frozen() {
		t.Fatal("a refused freeze left the guest frozen")
	}
	text := s.mustCLI("snapshot", "list", "vm")
	if !regexpMatch(`quiesced +seq:\d+ +\S+ +[\d.]+ \w*B +hand +app`, text) || !regexpMatch(`hung +seq:\d+ +\S+ +[\d.]+ \w*B +hand +crash`, text) || strings.Contains(text, "refused") {
		t.Fatalf("snapshot list:\n%s", text)
	}
	s.mustCLI("schedule", "add", "vm", "--every", "1h", "--keep", "daily=7", "--qga", ok.Socket)
	waitFor(t, "the scheduled snapshot", func() bool {
		for _, sn := range snapshotsJSON(t, s, "vm") {
			if sn.Scheduled && sn.AppConsistent {
				return true
			}
		}
		return false
	})
	if text := s.mustCLI("schedule", "list"); !regexpMatch(`vm +every 1h +daily=7 +qga +1 `, text) {
		t.Fatalf("schedule list:\n%s", text)
	}
	help := s.mustCLI("snapshot", "create", "--help")
	if !strings.Contains(help, "--qga /run/qemu/vm2-qga.sock") || !strings.Contains(help, `--freeze-cmd "fsfreeze -f /srv/db"`) {
		t.Fatalf("snapshot create --help has no examples:\n%s", help)
	}
}
