package main

// End-to-end tests of continuous data protection as a user meets it:
// snapshots, points in time (snapshot, RFC 3339 time, seq:N) read through
// read-only NBD exports VOL@POINT, rollback, clones, pit, df, gc, retention
// (time and size cap) and the messages for points that are not available.
// The JSON shapes are declared here, not borrowed from the daemon, so a
// renamed field breaks a test.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func init() {
	// TestMain builds the binary only when -run selects one of e2eTests.
	e2eTests = append(e2eTests, "TestE2ECDPScenario", "TestE2ECDPErrors", "TestE2ECDPSpace",
		"TestE2ECDPRetentionCap", "TestE2ECDPPit")
}

const mib = int64(1) << 20

type cdpPoint struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Size int64     `json:"size"`
}

type cdpSnapshot struct {
	Name      string    `json:"name"`
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Label     string    `json:"label"`
	Exclusive int64     `json:"exclusive"`
}

type cdpHistory struct {
	Volume    string        `json:"volume"`
	Retention time.Duration `json:"retention"`
	Oldest    cdpPoint      `json:"oldest"`
	Newest    cdpPoint      `json:"newest"`
	Snapshots []cdpSnapshot `json:"snapshots"`
	Activity  []struct {
		Start  time.Time `json:"start"`
		Writes int64     `json:"writes"`
	} `json:"activity"`
	HistoryCut time.Time `json:"history_cut"`
}

type cdpVolSpace struct {
	Name              string           `json:"name"`
	Provisioned       int64            `json:"provisioned"`
	Written           int64            `json:"written"`
	Shared            int64            `json:"shared"`
	History           int64            `json:"history"`
	Origin            int64            `json:"origin"`
	SnapshotExclusive map[string]int64 `json:"snapshot_exclusive"`
}

type cdpSpace struct {
	Volumes      []cdpVolSpace `json:"volumes"`
	JournalBytes int64         `json:"journal_bytes"`
	LiveBytes    int64         `json:"live_bytes"`
	HistoryCut   time.Time     `json:"history_cut"`
}

type cdpGC struct {
	SegmentsRemoved int   `json:"segments_removed"`
	BytesFreed      int64 `json:"bytes_freed"`
	JournalBytes    int64 `json:"journal_bytes"`
	LiveBytes       int64 `json:"live_bytes"`
	HistoryCut      bool  `json:"history_cut"`
}

type cdpStatus struct {
	Pool struct {
		Journal struct {
			Segments int   `json:"segments"`
			Bytes    int64 `json:"bytes"`
		} `json:"journal"`
		AppliedSeq uint64 `json:"applied_seq"`
	} `json:"pool"`
	RetentionSize int64     `json:"retention_size"`
	HistoryCut    time.Time `json:"history_cut"`
}

// cliJSON runs a strata command with --json and decodes its output.
func (s *server) cliJSON(v any, args ...string) {
	s.t.Helper()
	out := s.mustCLI(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		s.t.Fatalf("strata %s --json: %v\n%s", quoteArgs(args), err, out)
	}
}

func (s *server) pit(vol string) cdpHistory {
	s.t.Helper()
	var h cdpHistory
	s.cliJSON(&h, "pit", vol)
	return h
}

func (s *server) snapshots(vol string) map[string]cdpSnapshot {
	s.t.Helper()
	var l []cdpSnapshot
	s.cliJSON(&l, "snapshot", "list", vol)
	m := map[string]cdpSnapshot{}
	for _, sn := range l {
		m[sn.Name] = sn
	}
	return m
}

func (s *server) df() cdpSpace {
	s.t.Helper()
	var sp cdpSpace
	s.cliJSON(&sp, "df")
	return sp
}

func (sp cdpSpace) vol(name string) (cdpVolSpace, bool) {
	for _, v := range sp.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return cdpVolSpace{}, false
}

func (s *server) gcNow() cdpGC {
	s.t.Helper()
	var g cdpGC
	s.cliJSON(&g, "gc", "--now")
	return g
}

func (s *server) statusJSON() cdpStatus {
	s.t.Helper()
	var st cdpStatus
	s.cliJSON(&st, "status")
	return st
}

// waitDetached waits until volume vol has no attached connection.
func (s *server) waitDetached(vol string) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.volumes()[vol].Attached != 0 {
		if time.Now().After(deadline) {
			s.t.Fatalf("volume %s still attached 10 s after its client left", vol)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pointTime formats t as an RFC 3339 point with all nine fraction digits.
func pointTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000000Z07:00")
}

// readsPattern checks that export name reads byte pat over [off, off+n)
// (qemu-io read-only: it never writes to what it checks).
func (s *server) readsPattern(t *testing.T, name string, pat byte, off, n int64) {
	t.Helper()
	cmd := fmt.Sprintf("read -P 0x%02x %d %d", pat, off, n)
	r := runSpec(t, cmdSpec{name: "qemu-io", args: []string{"-r", "-f", "raw", s.uri(name), "-c", cmd}, timeout: time.Minute})
	if r.code != 0 || strings.Contains(r.stdout, "Pattern verification failed") {
		t.Errorf("export %s: %s: %s", name, cmd, r)
	}
}

// nbdHolder is an nbdsh client connected to an export: it stays connected
// until stopped, and reads on request (touch the trigger file).
type nbdHolder struct {
	p    *bgProc
	trig string
}

func holdExport(t *testing.T, uri string) *nbdHolder {
	t.Helper()
	trig := filepath.Join(t.TempDir(), "read")
	script := fmt.Sprintf(`
import os, time
print("ready", flush=True)
while not os.path.exists(%q):
    time.sleep(0.02)
try:
    print("byte=%%02x" %% h.pread(4096, 0)[0], flush=True)
except nbd.Error as e:
    print("byte=error", e, flush=True)
time.sleep(3600)
`, trig)
	p := startBGEnv(t, systemPythonEnv(), "nbdsh", "-u", uri, "-c", script)
	if err := p.waitOutput("ready", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return &nbdHolder{p: p, trig: trig}
}

// readFirstByte makes the holder read offset 0 and returns the first byte
// as two hex digits (or "error ...").
func (h *nbdHolder) readFirstByte(t *testing.T) string {
	t.Helper()
	if err := os.WriteFile(h.trig, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.p.waitOutput("byte=", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`byte=(.*)`).FindStringSubmatch(h.p.output())
	return strings.TrimSpace(m[1])
}

// checkPointError checks the one-line refusal of a point: it names the
// volume's available points (oldest and newest seq) and its snapshots.
func checkPointError(t *testing.T, what string, r result, vol string, snaps ...string) {
	t.Helper()
	checkOneLineError(t, what, r, append([]string{vol + " has points from", "(seq:", "to now (seq:"}, snaps...)...)
}

// TestE2ECDPScenario is the scenario: patterns A, B, C written around
// a snapshot and a time; every point reads what it held, through read-only
// exports; rollback (refused while attached, undone by rolling forward);
// a clone from a time point, independent of its source and outliving it;
// and all of it again after restarts.
func TestE2ECDPScenario(t *testing.T) {
	need(t, "qemu-io", "nbdinfo", "nbdsh")
	needPython(t)
	s := startServer(t)
	s.createVolume("vol", "64MiB")

	mustQemuIO(t, s.uri("vol"), "write -P 0xaa 0 1M")
	if out := s.mustCLI("snapshot", "create", "vol", "snapA", "--label", "before B"); !strings.Contains(out, "vol@snapA") {
		t.Errorf("snapshot create printed %q", out)
	}
	mustQemuIO(t, s.uri("vol"), "write -P 0xbb 0 1M")
	time.Sleep(100 * time.Millisecond)
	tB := pointTime(time.Now())
	time.Sleep(100 * time.Millisecond)
	mustQemuIO(t, s.uri("vol"), "write -P 0xcc 0 1M")

	snaps := s.snapshots("vol")
	snapA, ok := snaps["snapA"]
	if !ok || snapA.Seq == 0 || snapA.Label != "before B" {
		t.Fatalf("snapshot list --json: %+v, want snapA with a seq and label \"before B\"", snaps)
	}
	seqA := fmt.Sprintf("seq:%d", snapA.Seq)
	// Every point, what it reads at 0..1M, and that the rest stays zero.
	points := map[string]byte{"vol@snapA": 0xaa, "vol@" + seqA: 0xaa, "vol@" + tB: 0xbb, "vol": 0xcc}
	checkPoints := func(t *testing.T) {
		t.Helper()
		for name, pat := range points {
			s.readsPattern(t, name, pat, 0, mib)
			s.readsPattern(t, name, 0, mib, 4*mib)
		}
	}

	t.Run("points read", func(t *testing.T) {
		s.on(t)
		checkPoints(t)
		// Just before the snapshot's seq, the 0xaa write is there too; at
		// the volume's creation it is not.
		h := s.pit("vol")
		if h.Oldest.Seq >= snapA.Seq || snapA.Seq >= h.Newest.Seq {
			t.Errorf("pit: oldest seq:%d, snapA seq:%d, newest seq:%d: want oldest < snapA < newest", h.Oldest.Seq, snapA.Seq, h.Newest.Seq)
		}
		s.readsPattern(t, fmt.Sprintf("vol@seq:%d", h.Oldest.Seq), 0, 0, mib)
	})

	t.Run("read-only export", func(t *testing.T) {
		s.on(t)
		r := mustRun(t, "nbdinfo", "--json", s.uri("vol@snapA"))
		var info struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || len(info.Exports) != 1 {
			t.Fatalf("nbdinfo --json vol@snapA: %v\n%s", err, r.stdout)
		}
		if e := info.Exports[0]; e["is_read_only"] != true || e["export-size"] != float64(64<<20) {
			t.Errorf("nbdinfo --json vol@snapA: is_read_only %v, export-size %v; want true, 64 MiB", e["is_read_only"], e["export-size"])
		}
		if rr := qemuIO(t, s.uri("vol@snapA"), "write -P 0x11 0 4k"); rr.code == 0 {
			t.Errorf("qemu-io write to vol@snapA succeeded:\n%s", rr)
		}
		// libnbd refuses writes to a read-only export itself: turn strict
		// mode off so the server has to answer them.
		py := writePy(t, t.TempDir(), "ro.py", `
import errno, nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
print("read_only", h.is_read_only())
for name, f in [("pwrite", lambda: h.pwrite(b"\x11" * 4096, 0)),
                ("trim", lambda: h.trim(4096, 0)),
                ("zero", lambda: h.zero(4096, 0))]:
    try:
        f()
        print(name, "succeeded")
    except nbd.Error as e:
        print(name, "EPERM" if e.errno in (errno.EPERM, "EPERM") else "other error %s: %s" % (e.errno, e.string))
print("first byte %02x" % h.pread(4096, 0)[0])
`)
		out := mustRunTimeout(t, time.Minute, python3, py, s.uri("vol@snapA")).stdout
		for _, want := range []string{"read_only True", "pwrite EPERM", "trim EPERM", "zero EPERM", "first byte aa"} {
			if !strings.Contains(out, want) {
				t.Errorf("python libnbd on vol@snapA: output lacks %q:\n%s", want, out)
			}
		}
		s.readsPattern(t, "vol@snapA", 0xaa, 0, mib)
		// nbdinfo --list shows the snapshot export next to the volume.
		list := mustRun(t, "nbdinfo", "--list", "nbd+unix:///?socket="+s.sock()).stdout
		for _, want := range []string{`export="vol":`, `export="vol@snapA":`} {
			if !strings.Contains(list, want) {
				t.Errorf("nbdinfo --list lacks %s:\n%s", want, list)
			}
		}
	})

	var headC uint64 // the head before the rollback: reads C
	t.Run("rollback", func(t *testing.T) {
		s.on(t)
		headC = s.pit("vol").Newest.Seq
		rw := holdExport(t, s.uri("vol"))
		ro := holdExport(t, s.uri("vol@"+tB)) // a reader does not block a rollback
		if v := s.volumes()["vol"]; v.Attached < 1 {
			t.Errorf("volume list: vol attached %d with an nbdsh client connected", v.Attached)
		}
		r := s.cli("rollback", "vol", "--to", "snapA")
		checkOneLineError(t, "rollback while attached read-write", r, "--force")
		s.readsPattern(t, "vol", 0xcc, 0, mib)
		rw.p.stop(10 * time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for r = s.cli("rollback", "vol", "--to", "snapA"); r.code != 0 && time.Now().Before(deadline); r = s.cli("rollback", "vol", "--to", "snapA") {
			time.Sleep(50 * time.Millisecond) // the server notices the disconnect
		}
		if r.code != 0 {
			t.Fatalf("rollback after the client left: %s", r)
		}
		s.readsPattern(t, "vol", 0xaa, 0, mib)
		s.readsPattern(t, "vol@"+tB, 0xbb, 0, mib)
		s.readsPattern(t, fmt.Sprintf("vol@seq:%d", headC), 0xcc, 0, mib)
		if b := ro.readFirstByte(t); b != "bb" {
			t.Errorf("a reader of vol@%s connected across the rollback read %s, want bb", tB, b)
		}
		ro.p.stop(10 * time.Second)
		// Roll forward to the head before the rollback, with --force while a
		// client is attached read-write: its next read sees C.
		rw2 := holdExport(t, s.uri("vol"))
		checkOneLineError(t, "roll forward while attached", s.cli("rollback", "vol", "--to", fmt.Sprintf("seq:%d", headC)), "--force")
		s.mustCLI("rollback", "vol", "--to", fmt.Sprintf("seq:%d", headC), "--force")
		if b := rw2.readFirstByte(t); b != "cc" {
			t.Errorf("a client attached across rollback --force read %s, want cc", b)
		}
		rw2.p.stop(10 * time.Second)
		s.waitDetached("vol")
		s.readsPattern(t, "vol", 0xcc, 0, mib)
		points[fmt.Sprintf("vol@seq:%d", headC)] = 0xcc
		checkPoints(t)
	})

	t.Run("clone", func(t *testing.T) {
		s.on(t)
		if out := s.mustCLI("clone", "vol@"+tB, "cl"); !strings.Contains(out, "cl") {
			t.Errorf("clone printed %q", out)
		}
		if v, ok := s.volumes()["cl"]; !ok || v.Size != 64<<20 {
			t.Fatalf("clone cl: %+v (listed %v), want size 64 MiB", v, ok)
		}
		s.readsPattern(t, "cl", 0xbb, 0, mib)
		mustQemuIO(t, s.uri("cl"), "write -P 0xdd 0 64k", "write -P 0xdd 8M 64k")
		s.readsPattern(t, "cl", 0xdd, 0, 64<<10)
		s.readsPattern(t, "cl", 0xbb, 64<<10, mib-64<<10)
		s.readsPattern(t, "vol", 0xcc, 0, mib)
		s.readsPattern(t, "vol", 0, 8*mib, 64<<10)
		mustQemuIO(t, s.uri("vol"), "write -P 0xee 0 4k", "write -P 0xee 16M 4k")
		s.readsPattern(t, "cl", 0xdd, 0, 64<<10)
		s.readsPattern(t, "cl", 0, 16*mib, 4096)
		s.readsPattern(t, "vol@"+tB, 0xbb, 0, mib)
		delete(points, "vol") // now 0xee over 0xcc: checked by hand
	})
	clChecks := func(t *testing.T) {
		t.Helper()
		s.readsPattern(t, "cl", 0xdd, 0, 64<<10)
		s.readsPattern(t, "cl", 0xbb, 64<<10, mib-64<<10)
		s.readsPattern(t, "cl", 0xdd, 8*mib, 64<<10)
		s.readsPattern(t, "cl", 0, 16*mib, 4096)
	}

	t.Run("restart", func(t *testing.T) {
		s.on(t)
		s.restart()
		checkPoints(t)
		s.readsPattern(t, "vol", 0xee, 0, 4096)
		s.readsPattern(t, "vol", 0xcc, 4096, mib-4096)
		s.readsPattern(t, "vol", 0xee, 16*mib, 4096)
		clChecks(t)
		if _, ok := s.snapshots("vol")["snapA"]; !ok {
			t.Error("snapshot snapA lost in the restart")
		}
	})

	t.Run("delete source", func(t *testing.T) {
		s.on(t)
		s.mustCLI("volume", "delete", "vol")
		clChecks(t)
		s.mustCLI("gc", "--now")
		clChecks(t)
		s.restart()
		clChecks(t)
		if _, ok := s.volumes()["vol"]; ok {
			t.Error("deleted volume vol is back after a restart")
		}
		r := run(t, "qemu-io", "-r", "-f", "raw", s.uri("vol@snapA"), "-c", "read 0 4k")
		if r.code == 0 {
			t.Errorf("vol@snapA still opens after vol was deleted:\n%s", r)
		}
	})
}

// TestE2ECDPErrors checks the refusals: points that are not available
// (with the available ones named), bad snapshot names, missing volumes,
// existing clone names and gc without --now.
func TestE2ECDPErrors(t *testing.T) {
	need(t, "qemu-io")
	s := startServer(t)
	s.createVolume("e", "64MiB")
	mustQemuIO(t, s.uri("e"), "write -P 0x01 0 64k")
	s.mustCLI("snapshot", "create", "e", "s1")
	s.mustCLI("snapshot", "create", "e", "s2")
	time.Sleep(50 * time.Millisecond)
	beforeLate := pointTime(time.Now())
	time.Sleep(50 * time.Millisecond)
	s.createVolume("late", "64MiB")
	mustQemuIO(t, s.uri("late"), "write -P 0x02 0 64k")

	t.Run("bad points", func(t *testing.T) {
		s.on(t)
		future := pointTime(time.Now().Add(time.Hour))
		for _, tc := range []struct{ vol, point, why string }{
			{"e", "nosuch", "names no snapshot"},
			{"e", future, "in the future"},
			{"e", "seq:99999999", "in the future"},
			{"e", "2001-02-03T04:05:06.5Z", "before the volume was created"},
			{"late", beforeLate, "before the volume was created"},
		} {
			snaps := []string{"s1", "s2"}
			if tc.vol == "late" {
				snaps = nil
			}
			what := "rollback " + tc.vol + " --to " + tc.point
			checkPointError(t, what, s.cli("rollback", tc.vol, "--to", tc.point), tc.vol, append(snaps, tc.why)...)
			what = "clone " + tc.vol + "@" + tc.point
			checkPointError(t, what, s.cli("clone", tc.vol+"@"+tc.point, "c"), tc.vol, append(snaps, tc.why)...)
			r := qemuIO(t, s.uri(tc.vol+"@"+tc.point), "read 0 4k")
			if r.code == 0 {
				t.Errorf("qemu-io opened the export %s@%s:\n%s", tc.vol, tc.point, r)
			} else if !strings.Contains(r.stderr, tc.why) {
				t.Errorf("opening export %s@%s: the error does not say %q:\n%s", tc.vol, tc.point, tc.why, r)
			}
		}
		if _, ok := s.volumes()["c"]; ok {
			t.Error("a refused clone created volume c")
		}
		s.readsPattern(t, "e", 0x01, 0, 64<<10)
	})

	t.Run("malformed seq names the points", func(t *testing.T) {
		s.on(t)
		// Like every other refused point, seq:abc names what is available.
		for _, args := range [][]string{{"rollback", "e", "--to", "seq:abc"}, {"clone", "e@seq:abc", "c"}} {
			r := s.cli(args...)
			checkOneLineError(t, quoteArgs(args), r, "seq:abc")
			if !regexp.MustCompile(`e has points from \S+ \(seq:\d+\) to now \(seq:\d+\), and snapshots s1, s2`).MatchString(r.stderr) {
				t.Errorf("strata %s: the error does not name the available points (as for other bad points): %q", quoteArgs(args), r.stderr)
			}
		}
	})

	t.Run("named oldest point opens", func(t *testing.T) {
		s.on(t)
		// The refusal names where the points start: that time must itself
		// be a point one can use.
		r := s.cli("rollback", "e", "--to", "nosuch")
		m := regexp.MustCompile(`has points from (\S+) \(seq:(\d+)\)`).FindStringSubmatch(r.stderr)
		if m == nil {
			t.Fatalf("rollback --to nosuch: no \"has points from TIME (seq:N)\" in %q", r.stderr)
		}
		if rr := s.cli("clone", "e@seq:"+m[2], "old1"); rr.code != 0 {
			t.Errorf("the oldest point the error names, seq:%s, is refused: %s", m[2], rr)
		}
		if rr := s.cli("clone", "e@"+m[1], "old2"); rr.code != 0 {
			t.Errorf("the oldest time the error names, %s, is refused (the message drops the fraction of a second): %s", m[1], rr)
		}
	})

	t.Run("snapshots", func(t *testing.T) {
		s.on(t)
		checkOneLineError(t, "duplicate snapshot", s.cli("snapshot", "create", "e", "s1"), "s1", "exists")
		checkOneLineError(t, "snapshot named a/b", s.cli("snapshot", "create", "e", "a/b"), "a/b", "letters, digits")
		checkOneLineError(t, "snapshot of a missing volume", s.cli("snapshot", "create", "nov", "x"), "nov")
		checkOneLineError(t, "delete of a missing snapshot", s.cli("snapshot", "delete", "e", "nosuch"), "nosuch")
		if n := len(s.snapshots("e")); n != 2 {
			t.Errorf("after refused snapshot commands e has %d snapshots, want 2", n)
		}
	})

	t.Run("volumes", func(t *testing.T) {
		s.on(t)
		checkOneLineError(t, "rollback of a missing volume", s.cli("rollback", "nov", "--to", "s1"), "nov", "does not exist")
		checkOneLineError(t, "clone of a missing volume", s.cli("clone", "nov@s1", "c"), "nov", "does not exist")
		checkOneLineError(t, "clone onto an existing volume", s.cli("clone", "e@s1", "late"), "late", "exists")
		checkOneLineError(t, "clone without @POINT", s.cli("clone", "e", "c"), "VOL@POINT")
		checkOneLineError(t, "clone to a bad name", s.cli("clone", "e@s1", "x/y"), "x/y")
		checkOneLineError(t, "pit of a missing volume", s.cli("pit", "nov"), "nov")
		checkOneLineError(t, "volume set of a missing volume", s.cli("volume", "set", "nov", "--retention", "1h"), "nov")
		checkOneLineError(t, "bad retention", s.cli("volume", "set", "e", "--retention", "soon"), "90m, 24h or 7d")
		checkOneLineError(t, "rollback without --to", s.cli("rollback", "e"), "to")
		s.readsPattern(t, "late", 0x02, 0, 64<<10)
		vols := s.volumes()
		if _, ok := vols["c"]; ok {
			t.Error("a refused clone created volume c")
		}
	})

	t.Run("gc without --now", func(t *testing.T) {
		s.on(t)
		checkOneLineError(t, "strata gc", s.cli("gc"), "--now")
	})
}

// TestE2ECDPSpace overwrites a volume four times with a short retention and
// checks that gc frees the history (and, once deleted, a snapshot's
// exclusive data), that df and snapshot list account for it, that a volume's
// own retention overrides the pool's, and that every block reads back.
func TestE2ECDPSpace(t *testing.T) {
	need(t, "qemu-io", "qemu-img", "fio", "nbdcopy", "nbdinfo")
	const seg = 4 << 20
	s := startServer(t, "--retention", "2s", "--gc-interval", "0", "--segment-size", "4MiB")
	s.createVolume("v", "64MiB")
	uri := s.uri("v")
	mustQemuIO(t, uri, "write -P 0x11 0 64M")
	s.mustCLI("snapshot", "create", "v", "s0")
	if sn := s.snapshots("v")["s0"]; sn.Exclusive != 0 {
		t.Errorf("snapshot s0 of an unchanged volume: exclusive %d, want 0", sn.Exclusive)
	}
	s.mustCLI("volume", "set", "v", "--retention", "1h")
	if h := s.pit("v"); h.Retention != time.Hour {
		t.Errorf("after volume set --retention 1h, pit says retention %s", h.Retention)
	}

	runFio(t, uri, "--rw=write", "--bs=1M", "--size=64M", "--loops=4", "--iodepth=8")
	time.Sleep(3 * time.Second)
	mustQemuIO(t, uri, "write -P 0x22 1M 4k") // the window moves
	copyPath := filepath.Join(t.TempDir(), "v.raw")
	mustRunTimeout(t, time.Minute, "nbdcopy", uri, copyPath)
	compare := func(t *testing.T, what string) {
		t.Helper()
		if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", copyPath, uri); r.code != 0 {
			t.Errorf("%s: the volume differs from its copy: %s", what, r)
		}
		s.readsPattern(t, "v@s0", 0x11, 0, 64*mib)
	}
	j0 := s.statusJSON().Pool.Journal.Bytes
	if j0 < 5*64*mib {
		t.Fatalf("journal %d bytes after writing 64 MiB five times, want at least %d", j0, 5*64*mib)
	}

	t.Run("volume retention", func(t *testing.T) {
		s.on(t)
		g := s.gcNow()
		if g.JournalBytes < 4*64*mib {
			t.Errorf("gc with the volume's retention at 1h cut the journal to %d bytes (%+v): history within the hour is gone", g.JournalBytes, g)
		}
		if v, _ := s.df().vol("v"); v.History < 3*64*mib {
			t.Errorf("df: history %d, want at least 192 MiB kept by the 1h retention", v.History)
		}
		s.mustCLI("volume", "set", "v", "--retention", "0")
		if h := s.pit("v"); h.Retention != 2*time.Second {
			t.Errorf("after volume set --retention 0, pit says retention %s, want the pool's 2s", h.Retention)
		}
	})

	t.Run("gc frees history", func(t *testing.T) {
		s.on(t)
		sn := s.snapshots("v")["s0"]
		if sn.Exclusive != 64*mib {
			t.Errorf("snapshot list: s0 exclusive %d after all its blocks were overwritten, want %d", sn.Exclusive, 64*mib)
		}
		d := s.df()
		if v, ok := d.vol("v"); !ok || v.Written != 64*mib || v.Provisioned != 64*mib || v.SnapshotExclusive["s0"] != 64*mib {
			t.Errorf("df --json for v: %+v (listed %v), want written and provisioned 64 MiB, s0 exclusive 64 MiB", v, ok)
		}
		if out := s.mustCLI("df"); !regexp.MustCompile(`(?m)^v\s+64 MiB\s+64 MiB\s+.*64 MiB`).MatchString(out) || !strings.Contains(out, "journal") {
			t.Errorf("strata df does not show v with 64 MiB provisioned, written and held by snapshots:\n%s", out)
		}
		if out := s.mustCLI("snapshot", "list", "v"); !regexp.MustCompile(`(?m)^s0\s+seq:\d+\s+\S+\s+64 MiB`).MatchString(out) {
			t.Errorf("strata snapshot list v does not show s0 holding 64 MiB:\n%s", out)
		}
		g := s.gcNow()
		if g.BytesFreed < 160*mib || g.SegmentsRemoved == 0 {
			t.Errorf("gc --now: %+v, want at least 160 MiB freed (three of five copies are out of the 2 s window)", g)
		}
		j := s.statusJSON().Pool.Journal.Bytes
		if limit := 13*(2*64*mib)/10 + seg; j > limit {
			t.Errorf("journal %d bytes after gc, want at most %d (1.3 x (head + snapshot) + one segment)", j, limit)
		}
		compare(t, "after gc")
		if v, _ := s.df().vol("v"); v.History > mib {
			t.Errorf("df after gc: history %d, want (about) 0 with a 2 s window", v.History)
		}
	})

	t.Run("snapshot delete frees", func(t *testing.T) {
		s.on(t)
		s.mustCLI("snapshot", "delete", "v", "s0")
		if _, ok := s.snapshots("v")["s0"]; ok {
			t.Fatal("s0 still listed after delete")
		}
		list := mustRun(t, "nbdinfo", "--list", "nbd+unix:///?socket="+s.sock()).stdout
		if strings.Contains(list, "v@s0") {
			t.Errorf("nbdinfo --list shows the deleted snapshot:\n%s", list)
		}
		g := s.gcNow()
		if g.BytesFreed < 48*mib {
			t.Errorf("gc after deleting s0: %+v, want at least 48 MiB freed", g)
		}
		st := s.statusJSON()
		if limit := 13*(64*mib)/10 + seg; st.Pool.Journal.Bytes > limit {
			t.Errorf("journal %d bytes after gc, want at most %d (1.3 x 64 MiB written + one segment)", st.Pool.Journal.Bytes, limit)
		}
		if d := s.df(); d.JournalBytes != st.Pool.Journal.Bytes {
			t.Errorf("df journal_bytes %d, status journal bytes %d", d.JournalBytes, st.Pool.Journal.Bytes)
		}
		if r := qemuIO(t, s.uri("v@s0"), "read 0 4k"); r.code == 0 {
			t.Errorf("v@s0 opens after the snapshot was deleted")
		}
		if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", copyPath, uri); r.code != 0 {
			t.Errorf("after the second gc the volume differs from its copy: %s", r)
		}
		s.restart()
		if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", copyPath, uri); r.code != 0 {
			t.Errorf("after gc and a restart the volume differs from its copy: %s", r)
		}
		if v, _ := s.df().vol("v"); v.Written != 64*mib {
			t.Errorf("df after restart: written %d, want 64 MiB", v.Written)
		}
	})
}

// TestE2ECDPRetentionCap: with --retention-size, gc discards history older
// than fits (before its retention time), and status, df, pit and the log
// say so; the head and the newest history still read.
func TestE2ECDPRetentionCap(t *testing.T) {
	need(t, "qemu-io", "fio")
	const seg, capBytes = 4 << 20, 32 << 20
	s := startServer(t, "--retention-size", "32MiB", "--gc-interval", "0", "--segment-size", "4MiB")
	s.createVolume("v", "32MiB")
	uri := s.uri("v")
	mustQemuIO(t, uri, "write -P 0x11 0 16M")
	time.Sleep(50 * time.Millisecond)
	early := pointTime(time.Now())
	time.Sleep(50 * time.Millisecond)
	s.readsPattern(t, "v@"+early, 0x11, 0, 16*mib)
	runFio(t, uri, "--rw=write", "--bs=1M", "--size=16M", "--loops=6", "--iodepth=8")
	mustQemuIO(t, uri, "write -P 0x33 16M 1M", "flush")
	time.Sleep(50 * time.Millisecond)
	late := pointTime(time.Now())
	if st := s.statusJSON(); st.RetentionSize != capBytes || !st.HistoryCut.IsZero() {
		t.Errorf("status before gc: retention_size %d, history_cut %v; want %d and none", st.RetentionSize, st.HistoryCut, capBytes)
	}
	if st := s.mustCLI("status"); !strings.Contains(st, "capped at 32 MiB") {
		t.Errorf("status does not show the cap:\n%s", st)
	}

	g := s.gcNow()
	if !g.HistoryCut || g.BytesFreed == 0 {
		t.Errorf("gc --now: %+v, want history_cut and bytes freed", g)
	}
	st := s.statusJSON()
	if st.HistoryCut.IsZero() {
		t.Error("status --json: history_cut not set after the cap cut history")
	}
	if limit := int64(capBytes + 16*mib + 2*seg); st.Pool.Journal.Bytes > limit {
		t.Errorf("journal %d bytes after the capped gc, want at most %d (cap + head + two segments)", st.Pool.Journal.Bytes, limit)
	}
	if out := s.mustCLI("status"); !strings.Contains(out, "WARNING") || !strings.Contains(out, "retention size cap") {
		t.Errorf("status does not warn that the cap cut history:\n%s", out)
	}
	if out := s.mustCLI("pit", "v"); !strings.Contains(out, "--retention-size cap discarded history") {
		t.Errorf("pit does not warn that the cap cut history:\n%s", out)
	}
	if d := s.df(); d.HistoryCut.IsZero() {
		t.Error("df --json: history_cut not set")
	}
	var logs strings.Builder
	for _, f := range s.logs {
		b, _ := os.ReadFile(f)
		logs.Write(b)
	}
	if !strings.Contains(logs.String(), "retention size cap reached") {
		t.Errorf("the serve log does not say the size cap cut history:\n%s", logs.String())
	}
	r := s.cli("rollback", "v", "--to", early)
	checkPointError(t, "rollback to a point the cap discarded", r, "v", "older than the retained history")
	s.readsPattern(t, "v", 0x33, 16*mib, mib)
	s.readsPattern(t, "v@"+late, 0x33, 16*mib, mib)
	if h := s.pit("v"); h.HistoryCut.IsZero() || h.Retention != 24*time.Hour {
		t.Errorf("pit --json: history_cut %v, retention %s; want set and 24h", h.HistoryCut, h.Retention)
	}
}

// TestE2ECDPPit checks `strata pit`: the oldest and newest points, the
// snapshots with their labels, the write histogram and --buckets; and that
// the points it names can be used.
func TestE2ECDPPit(t *testing.T) {
	need(t, "qemu-io")
	s := startServer(t)
	s.createVolume("p", "64MiB")
	mustQemuIO(t, s.uri("p"), "write -P 0x01 0 64k", "write -P 0x02 1M 64k")
	s.mustCLI("snapshot", "create", "p", "first", "--label", "after two writes")
	mustQemuIO(t, s.uri("p"), "write -P 0x03 2M 64k")
	s.mustCLI("snapshot", "create", "p", "second")
	mustQemuIO(t, s.uri("p"), "write -P 0x04 3M 64k", "write -P 0x05 4M 64k")

	out := s.mustCLI("pit", "p")
	h := s.pit("p")
	for _, want := range []string{"volume p", "retention 24h", "oldest point:", "newest point:",
		fmt.Sprintf("(seq:%d)", h.Oldest.Seq), "first", "after two writes", "second", "writes:"} {
		if !strings.Contains(out, want) {
			t.Errorf("strata pit p lacks %q:\n%s", want, out)
		}
	}
	if alias := s.mustCLI("history", "p"); !strings.Contains(alias, "oldest point:") {
		t.Errorf("strata history p:\n%s", alias)
	}
	if h.Volume != "p" || h.Retention != 24*time.Hour || h.Oldest.Size != 64<<20 {
		t.Errorf("pit --json: %+v", h)
	}
	if len(h.Snapshots) != 2 || h.Snapshots[0].Name != "first" || h.Snapshots[1].Name != "second" ||
		h.Snapshots[0].Label != "after two writes" {
		t.Errorf("pit --json snapshots: %+v, want first (labelled) then second", h.Snapshots)
	}
	if len(h.Snapshots) == 2 && !(h.Oldest.Seq < h.Snapshots[0].Seq && h.Snapshots[0].Seq < h.Snapshots[1].Seq && h.Snapshots[1].Seq < h.Newest.Seq) {
		t.Errorf("pit --json: oldest seq:%d, snapshots %+v, newest seq:%d: not in order", h.Oldest.Seq, h.Snapshots, h.Newest.Seq)
	}
	if st := s.statusJSON(); h.Newest.Seq != st.Pool.AppliedSeq {
		t.Errorf("pit newest seq:%d, status applied seq %d", h.Newest.Seq, st.Pool.AppliedSeq)
	}
	if h.Oldest.Time.IsZero() || h.Newest.Time.Before(h.Oldest.Time) || time.Since(h.Newest.Time) > time.Minute {
		t.Errorf("pit --json times: oldest %v, newest %v", h.Oldest.Time, h.Newest.Time)
	}
	var writes int64
	for _, b := range h.Activity {
		writes += b.Writes
	}
	if len(h.Activity) != 24 || writes < 5 {
		t.Errorf("pit --json histogram: %d buckets with %d writes, want 24 buckets and at least the 5 writes", len(h.Activity), writes)
	}
	if m := regexp.MustCompile(`(?m)^\s+\S+ \S+ #+\s+(\d+)$`).FindAllStringSubmatch(out, -1); len(m) == 0 {
		t.Errorf("strata pit p draws no histogram bar:\n%s", out)
	} else {
		var sum int64
		for _, x := range m {
			n, _ := strconv.ParseInt(x[1], 10, 64)
			sum += n
		}
		if sum < 5 {
			t.Errorf("strata pit p: the bars count %d writes, want at least 5:\n%s", sum, out)
		}
	}
	var h5 cdpHistory
	s.cliJSON(&h5, "pit", "p", "--buckets", "5")
	if len(h5.Activity) != 5 {
		t.Errorf("pit --buckets 5: %d buckets", len(h5.Activity))
	}

	// The points pit names open.
	s.readsPattern(t, fmt.Sprintf("p@seq:%d", h.Oldest.Seq), 0, 0, 64<<10)
	s.readsPattern(t, "p@"+pointTime(h.Oldest.Time), 0, 0, 64<<10)
	s.readsPattern(t, fmt.Sprintf("p@seq:%d", h.Newest.Seq), 0x05, 4*mib, 64<<10)
	s.readsPattern(t, "p@first", 0x02, mib, 64<<10)
	s.readsPattern(t, "p@first", 0, 2*mib, 64<<10)
	s.readsPattern(t, "p@second", 0x03, 2*mib, 64<<10)
	s.readsPattern(t, "p@second", 0, 3*mib, 64<<10)
}
