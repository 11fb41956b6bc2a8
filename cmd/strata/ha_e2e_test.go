package main

// The high-availability drills of docs/ha.md, on real processes in network
// namespaces (netns_e2e_test.go's lab): hosts a and b run strata serve
// with the mirror, w runs strata witness, c runs qemu-storage-daemon, the
// reconnecting NBD client VM disks use, attached to the floating address;
// fio drives it with a verifying write job (a flush every 64 writes).

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

// haLease is the witness's lease in the drills: with QEMU's reconnect
// schedule (attempts 1, 3, 7 s after a drop) a takeover within 3 s is seen
// at the second attempt.
const haLease = "2s"

type haLab struct {
	t     *testing.T
	l     *lab
	token string
	vip   string // ADDR
	dirs  map[string]string
	procs map[string]*labProc
	// written counts what the fio jobs wrote: verifyAt reads back every
	// block of a region, so they must have covered it.
	written int64
}

// newHALab starts the witness on w, strata on a and b (both with the
// floating address), and creates vol0 on a. No mirror yet.
func newHALab(t *testing.T) *haLab { return newHALabDirs(t, nil) }

// newHALabDirs is newHALab with the data directories dirs names (by
// host; the others are temporary).
func newHALabDirs(t *testing.T, dirs map[string]string) *haLab {
	t.Helper()
	need(t, "fio", "qemu-storage-daemon")
	l := newLab(t, "a", "b", "w", "c")
	h := &haLab{t: t, l: l, vip: fmt.Sprintf("10.%d.0.100", l.subnet), dirs: map[string]string{}, procs: map[string]*labProc{}}
	h.token = filepath.Join(shortTempDir(t), "token")
	if err := os.WriteFile(h.token, []byte("ha-drill-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wdir := shortTempDir(t)
	h.procs["w"] = l.Start(t, "w", strataBin, "witness", "--listen", "0.0.0.0:10820", "--data", wdir, "--token-file", h.token, "--lease", haLease, "--insecure")
	for _, host := range []string{"a", "b"} {
		h.dirs[host] = dirs[host]
		if h.dirs[host] == "" {
			h.dirs[host] = shortTempDir(t)
		}
		h.start(host)
	}
	h.strata("a", "volume", "create", "vol0", "--size", "1GiB")
	return h
}

func (h *haLab) start(host string) *labProc {
	h.t.Helper()
	p := h.l.StartStrata(h.t, host, h.dirs[host], "--listen", "0.0.0.0:10809", "--insecure",
		"--replica-listen", "0.0.0.0:10810", "--replica-token-file", h.token,
		"--vip", h.vip+"/24", "--vip-dev", "eth0")
	h.procs[host] = p
	return p
}

func (h *haLab) strata(host string, args ...string) string {
	h.t.Helper()
	return h.l.Strata(h.t, host, h.dirs[host], args...)
}

func (h *haLab) url(host string) string { return "strata://" + h.l.IP(host) + ":10810" }

// mirrorAdd mirrors vol0 from a to b with the witness and waits until it
// is in sync.
func (h *haLab) mirrorAdd() {
	h.t.Helper()
	h.strata("a", "mirror", "add", "vol0", "--to", h.url("b"), "--self", h.url("a"), "--token-file", h.token,
		"--witness", h.l.IP("w")+":10820", "--insecure")
	h.waitMirror("a", control.RolePrimary, control.MirrorInSync, 60*time.Second)
	h.waitMirror("b", control.RoleSecondary, "", 10*time.Second)
}

func (h *haLab) mirror(host string) (control.MirrorStatus, bool) {
	h.t.Helper()
	r := h.l.TryStrata(h.t, host, h.dirs[host], "mirror", "list", "--json")
	if r.code != 0 {
		return control.MirrorStatus{}, false
	}
	var list []control.MirrorStatus
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		h.t.Fatalf("mirror list --json on %s: %v\n%s", host, err, r.stdout)
	}
	for _, s := range list {
		if s.Volume == "vol0" {
			return s, true
		}
	}
	return control.MirrorStatus{}, false
}

func (h *haLab) waitMirror(host, role, state string, d time.Duration) control.MirrorStatus {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for {
		s, ok := h.mirror(host)
		if ok && s.Role == role && (state == "" || s.State == state) {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("on %s vol0 did not become %s %s within %s: %+v (found %v)\n%s", host, role, state, d, s, ok, h.procs[host].Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// holdsVIP says whether host has the floating address on eth0.
func (h *haLab) holdsVIP(host string) bool {
	out := mustRun(h.t, "ip", "-n", h.l.NS(host), "-o", "addr", "show", "dev", "eth0").stdout
	return strings.Contains(out, " "+h.vip+"/")
}

// waitVIP waits (10 s at most) until the floating address is on host alone.
func (h *haLab) waitVIP(host string) {
	h.t.Helper()
	other := map[string]string{"a": "b", "b": "a"}[host]
	deadline := time.Now().Add(10 * time.Second)
	for !(h.holdsVIP(host) && !h.holdsVIP(other)) {
		if time.Now().After(deadline) {
			h.t.Fatalf("the floating address is not on %s alone (%s %v, %s %v)", host, host, h.holdsVIP(host), other, h.holdsVIP(other))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// client attaches qemu-storage-daemon on c to the floating address and
// returns the URI fio uses.
func (h *haLab) client() (string, *labProc) {
	h.t.Helper()
	sock := filepath.Join(shortTempDir(h.t), "qsd.sock")
	qsd := h.l.StartQSD(h.t, "c", h.vip, 10809, "vol0", sock)
	return "nbd+unix:///vol0?socket=" + sock, qsd
}

// checkFio fails the test unless fio ran clean: no I/O error, no verify
// mismatch.
func (h *haLab) checkFio(res fioResult, what string, qsd *labProc) {
	h.t.Helper()
	if err := res.err(); err != nil {
		h.t.Fatalf("%s: %v\nqemu-storage-daemon:\n%s\na:\n%s\nb:\n%s", what, err, qsd.Output(), h.procs["a"].Output(), h.procs["b"].Output())
	}
	h.t.Logf("%s: fio %.0f write IOPS, %d MiB written, slowest I/O %s", what, res.WriteIOPS, res.WriteBytes>>20, res.MaxLat.Round(time.Millisecond))
	h.written += res.WriteBytes
}

// verifyAt reads back, through host's Unix socket, everything the fio job
// of opts wrote, and checks it.
func (h *haLab) verifyAt(host string, opts fioOptions) {
	h.t.Helper()
	region, err := strconv.ParseInt(strings.TrimSuffix(opts.Size, "M"), 10, 64)
	if err != nil {
		h.t.Fatalf("region %q: give it in MiB (e.g. 64M)", opts.Size)
	}
	if h.written < region<<20 {
		// A random write job covers each block once per pass: less than
		// a pass leaves blocks never written, which would read as zeros.
		h.t.Fatalf("the fio jobs wrote %d MiB, less than their %d MiB region: nothing to verify every block of (slow machine?)", h.written>>20, region)
	}
	opts.Runtime = 0
	opts.Extra = append(append([]string(nil), opts.Extra...), "--verify_only=1")
	res := startFio(h.t, "nbd+unix:///vol0?socket="+filepath.Join(h.dirs[host], "nbd.sock"), opts).Wait(2 * time.Minute)
	if res.ExitCode != 0 || res.Errors != 0 {
		h.t.Fatalf("verify_only on %s: exit %d, %d errors:\n%s", host, res.ExitCode, res.Errors, res.Output)
	}
}

// TestE2EHASwitchover: drill 1, a planned switchover under fio verify
// load: no I/O error, the data verifies, the address moves, and failback
// (a switchover back) does the same.
func TestE2EHASwitchover(t *testing.T) {
	h := newHALab(t)
	h.mirrorAdd()
	h.waitVIP("a")
	uri, qsd := h.client()
	opts := fioOptions{Size: "64M", Runtime: 12 * time.Second}
	fio := startFio(t, uri, opts)
	time.Sleep(3 * time.Second)
	out := h.strata("a", "mirror", "switchover", "vol0")
	t.Logf("switchover: %s", strings.TrimSpace(out))
	h.waitMirror("a", control.RoleSecondary, "", 10*time.Second)
	// A failback, like any switchover, waits for the mirror to be in sync
	// (the command refuses otherwise, saying so).
	h.waitMirror("b", control.RolePrimary, control.MirrorInSync, 30*time.Second)
	time.Sleep(2 * time.Second)
	out = h.strata("b", "mirror", "failback", "vol0")
	t.Logf("failback: %s", strings.TrimSpace(out))
	h.checkFio(fio.Wait(2*time.Minute), "switchover and failback", qsd)
	h.waitMirror("a", control.RolePrimary, control.MirrorInSync, 30*time.Second)
	h.waitVIP("a")
	if out := h.strata("a", "status"); !strings.Contains(out, "mirrors:") || !strings.Contains(out, "primary  in sync  3") {
		t.Fatalf("strata status does not show the mirror (primary, in sync, epoch 3):\n%s", out)
	}
	qsd.Stop()
	h.verifyAt("a", opts)
}

// TestE2EHAKill9: drills 2 and 5. kill -9 of the primary under load: the
// secondary takes over by itself, the address follows, QEMU reconnects
// and fio sees no error; every write verifies on the new primary. The old
// primary comes back: it follows the new one, catching up without a full
// copy. STRATA_HA_ROUNDS=5 repeats the kill for a median failover time.
func TestE2EHAKill9(t *testing.T) {
	h := newHALab(t)
	h.mirrorAdd()
	rounds := 1
	if n, err := strconv.Atoi(os.Getenv("STRATA_HA_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	uri, qsd := h.client()
	opts := fioOptions{Size: "64M", Runtime: time.Duration(8+9*rounds) * time.Second}
	fio := startFio(t, uri, opts)
	time.Sleep(3 * time.Second)
	primary, secondary := "a", "b"
	var takeovers, reconnects []time.Duration
	for r := 0; r < rounds; r++ {
		killed := time.Now()
		h.procs[primary].Kill9()
		h.waitMirror(secondary, control.RolePrimary, "", 15*time.Second)
		// The log line follows the role change by a moment.
		var took []time.Time
		for deadline := time.Now().Add(5 * time.Second); len(took) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			took = h.procs[secondary].LogTimes("this host is now the primary")
		}
		if len(took) == 0 {
			t.Fatalf("no takeover in %s's log:\n%s", secondary, h.procs[secondary].Output())
		}
		takeovers = append(takeovers, took[len(took)-1].Sub(killed))
		deadline := time.Now().Add(10 * time.Second)
		for !h.holdsVIP(secondary) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !h.holdsVIP(secondary) {
			t.Fatalf("%s took over but does not hold the floating address", secondary)
		}
		// QEMU's next handshake is the client back on the new primary.
		deadline = time.Now().Add(20 * time.Second)
		for {
			shakes := qsd.LogTimes("nbd_client_handshake_success")
			if n := len(shakes); n > 0 && shakes[n-1].After(killed) {
				reconnects = append(reconnects, shakes[n-1].Sub(killed))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("QEMU did not reconnect after the kill:\n%s", qsd.Output())
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("round %d: killed %s; %s took over after %s, QEMU wrote again after %s", r+1, primary, secondary,
			takeovers[r].Round(time.Millisecond), reconnects[r].Round(time.Millisecond))
		// The old primary returns: it follows without a full copy.
		h.start(primary)
		h.waitMirror(primary, control.RoleSecondary, "", 15*time.Second)
		st := h.waitMirror(secondary, control.RolePrimary, control.MirrorInSync, 60*time.Second)
		// It follows from the last common point: no full copy.
		var followed []time.Time
		for deadline := time.Now().Add(5 * time.Second); len(followed) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			followed = h.procs[primary].LogTimes("now follows vol0 from the last common point")
		}
		if len(followed) == 0 {
			t.Fatalf("%s did not take the new primary's stream as a failback from the common point:\n%s", primary, h.procs[primary].Output())
		}
		if len(h.procs[secondary].LogTimes("copying the difference")) > 0 {
			t.Fatalf("%s copied the volume by difference instead of shipping the journal since the common point", secondary)
		}
		t.Logf("round %d: %s is back as the secondary, resynced from the common point (%d MiB shipped, writes since included)", r+1, primary, st.SyncedBytes>>20)
		primary, secondary = secondary, primary
		time.Sleep(2 * time.Second)
	}
	h.checkFio(fio.Wait(3*time.Minute), "kill -9 of the primary", qsd)
	qsd.Stop()
	h.verifyAt(primary, opts)
	// The host that came back holds the same data: hand it the volume
	// and read everything back there.
	h.waitMirror(primary, control.RolePrimary, control.MirrorInSync, 30*time.Second)
	h.strata(primary, "mirror", "switchover", "vol0")
	h.waitMirror(secondary, control.RolePrimary, "", 10*time.Second)
	h.verifyAt(secondary, opts)
	sort.Slice(takeovers, func(i, j int) bool { return takeovers[i] < takeovers[j] })
	sort.Slice(reconnects, func(i, j int) bool { return reconnects[i] < reconnects[j] })
	t.Logf("failover over %d rounds: takeover median %s (max %s), client writing again median %s (max %s)", rounds,
		takeovers[len(takeovers)/2].Round(time.Millisecond), takeovers[len(takeovers)-1].Round(time.Millisecond),
		reconnects[len(reconnects)/2].Round(time.Millisecond), reconnects[len(reconnects)-1].Round(time.Millisecond))
	for _, host := range []string{"a", "b"} {
		if out := h.strata(host, "volume", "list"); strings.Contains(out, "vol0-split-") {
			t.Logf("%s kept writes the other host did not get as a split clone:\n%s", host, out)
		}
	}
}

// TestE2EHAPartition: drill 3. The cable between the hosts is cut while
// both reach the witness: the primary goes on alone (degraded), the
// secondary does not take over; healed, it resyncs from the divergence
// point. Then the primary is cut off from the secondary and the witness:
// it stops taking writes, the secondary takes over, the client follows;
// healed, the old primary steps down and resyncs.
func TestE2EHAPartition(t *testing.T) {
	h := newHALab(t)
	h.mirrorAdd()
	uri, qsd := h.client()

	// Part 1: a and b cannot talk; both reach w and c. The outage lasts
	// 6 s (STRATA_HA_OUTAGE sets it, e.g. 60s for the closing figure).
	outage := 6 * time.Second
	if d, err := time.ParseDuration(os.Getenv("STRATA_HA_OUTAGE")); err == nil && d > 0 {
		outage = d
	}
	opts := fioOptions{Size: "64M", Runtime: outage + 2*time.Second}
	fio := startFio(t, uri, opts)
	time.Sleep(2 * time.Second)
	h.l.CutBetween("a", "b")
	res := fio.Wait(outage + time.Minute)
	h.checkFio(res, "link between the hosts cut", qsd)
	st := h.waitMirror("a", control.RolePrimary, control.MirrorDegraded, 10*time.Second)
	if s, _ := h.mirror("b"); s.Role != control.RoleSecondary {
		t.Fatalf("b took over while a held the witness: %+v", s)
	}
	lag := st.LagBytes
	h.l.HealBetween("a", "b")
	st = h.waitMirror("a", control.RolePrimary, control.MirrorInSync, 60*time.Second)
	t.Logf("resync after the cut: %d KiB missed, %d KiB shipped (%.2fx)", lag>>10, st.SyncedBytes>>10, float64(st.SyncedBytes)/float64(max(lag, 1)))
	if lag == 0 || float64(st.SyncedBytes) > 1.1*float64(lag)+float64(1<<20) {
		t.Fatalf("resync shipped %d bytes for %d missed", st.SyncedBytes, lag)
	}

	// Part 2: a reaches only c; b reaches w.
	fio = startFio(t, uri, fioOptions{Size: "64M", Runtime: 12 * time.Second})
	time.Sleep(2 * time.Second)
	h.l.CutBetween("a", "b")
	h.l.CutBetween("a", "w")
	h.waitMirror("b", control.RolePrimary, "", 15*time.Second)
	// a acknowledges nothing b does not hold (every write waits for b,
	// which it cannot reach; the final verify on b checks that), and says
	// it is fenced once its lease and its wait for b have run out.
	deadline := time.Now().Add(15 * time.Second)
	for {
		s, _ := h.mirror("a")
		if s.Role != control.RolePrimary || s.State == control.MirrorFenced {
			t.Logf("a, cut off: %s %s (%s)", s.Role, s.State, s.LastError)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a still says it serves without the witness or the secondary: %+v", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if os.Getenv("STRATA_HA_DEBUG") != "" {
		time.Sleep(5 * time.Second)
		r := run(t, "curl", "-s", "--unix-socket", filepath.Join(h.dirs["a"], "control.sock"), "http://x/debug/pprof/goroutine?debug=2")
		os.WriteFile("/tmp/a-goroutines.txt", []byte(r.stdout), 0o644)
	}
	h.checkFio(fio.Wait(time.Minute), "primary cut off", qsd)
	if os.Getenv("STRATA_HA_DEBUG") != "" {
		t.Logf("qsd:\n%s\na:\n%s\nb:\n%s", qsd.Output(), h.procs["a"].Output(), h.procs["b"].Output())
	}
	h.l.HealBetween("a", "b")
	h.l.HealBetween("a", "w")
	h.waitMirror("a", control.RoleSecondary, "", 15*time.Second)
	h.waitMirror("b", control.RolePrimary, control.MirrorInSync, 60*time.Second)
	qsd.Stop()
	h.verifyAt("b", opts)
}

// TestE2EHAMigrate: drill 6. The volume moves from a to b under fio
// verify load: no errors, the data verifies on b, a no longer holds it.
func TestE2EHAMigrate(t *testing.T) {
	h := newHALab(t)
	// Before any mirror, the address is the admin's: put it on a.
	mustRun(t, "ip", "-n", h.l.NS("a"), "addr", "add", h.vip+"/24", "dev", "eth0")
	uri, qsd := h.client()
	// STRATA_HA_MIGRATE_FILL=4GiB (with STRATA_HA_MIGRATE_SIZE=10GiB)
	// writes that much first, for the closing figure.
	if fill := os.Getenv("STRATA_HA_MIGRATE_FILL"); fill != "" {
		if size := os.Getenv("STRATA_HA_MIGRATE_SIZE"); size != "" {
			h.strata("a", "volume", "resize", "vol0", "--size", size)
		}
		mustRun(t, "fio", "--name=fill", "--ioengine=nbd", "--uri="+uri, "--rw=write", "--bs=1M", "--size="+strings.TrimSuffix(fill, "iB"),
			"--offset=256M", "--iodepth=8", "--refill_buffers", "--end_fsync=1", "--output=/dev/null")
	}
	opts := fioOptions{Size: "64M", Runtime: 12 * time.Second}
	if os.Getenv("STRATA_HA_MIGRATE_FILL") != "" {
		opts.Runtime = 40 * time.Second // the copy of the fill takes seconds
	}
	fio := startFio(t, uri, opts)
	time.Sleep(3 * time.Second)
	start := time.Now()
	out := h.strata("a", "migrate", "vol0", "--to", h.url("b"), "--self", h.url("a"), "--token-file", h.token, "--insecure")
	t.Logf("migrate: %s (%s by the test's clock)", strings.TrimSpace(out), time.Since(start).Round(time.Millisecond))

	if res := fio.Wait(2 * time.Minute); res.err() != nil {
		for _, host := range []string{"a", "b"} {
			t.Logf("%s: %s", host, mustRun(t, "ip", "-n", h.l.NS(host), "-o", "addr", "show", "dev", "eth0").stdout)
		}
		t.Logf("c's neighbours: %s", mustRun(t, "ip", "-n", h.l.NS("c"), "neigh").stdout)
		h.checkFio(res, "migration", qsd)
	} else {
		h.checkFio(res, "migration", qsd)
	}
	if out := h.strata("a", "volume", "list"); strings.Contains(out, "vol0") {
		t.Fatalf("a still holds vol0 after the migration:\n%s", out)
	}
	if _, ok := h.mirror("b"); ok {
		t.Fatal("b still has a mirror of vol0 after the migration")
	}
	h.waitVIP("b")
	qsd.Stop()
	h.verifyAt("b", opts)
}

// TestE2EHAPowerCut: drill 4. The primary's data directory loses power
// under load (what it had not fsynced is gone, including writes the
// secondary had received); the secondary takes over; the old primary
// comes back, rejoins as the secondary from a point both hold, and holds
// the same data (checked after handing it the volume back).
func TestE2EHAPowerCut(t *testing.T) {
	pc := newPowerCutDir(t, "2GiB")
	h := newHALabDirs(t, map[string]string{"a": filepath.Join(pc.Dir(), "a")})
	h.mirrorAdd()
	uri, qsd := h.client()
	// The disk under a is slow (FUSE): a small region, so that the run
	// writes all of it (verify_only reads every block of it back).
	opts := fioOptions{Size: "32M", Runtime: 12 * time.Second}
	fio := startFio(t, uri, opts)
	time.Sleep(3 * time.Second)
	h.procs["a"].Kill9()
	pc.PowerCut(t)
	h.waitMirror("b", control.RolePrimary, "", 15*time.Second)
	h.start("a")
	h.waitMirror("a", control.RoleSecondary, "", 20*time.Second)
	h.waitMirror("b", control.RolePrimary, control.MirrorInSync, 60*time.Second)
	if res := fio.Wait(2 * time.Minute); res.WriteBytes < 32<<20 {
		h.checkFio(res, "power cut of the primary", qsd)
		t.Fatalf("fio wrote %d MiB, less than its region: verify_only would find blocks never written", res.WriteBytes>>20)
	} else {
		h.checkFio(res, "power cut of the primary", qsd)
	}
	qsd.Stop()
	for _, line := range strings.Split(h.procs["a"].Output(), "\n") {
		if strings.Contains(line, "common point") || strings.Contains(line, "full copy") || strings.Contains(line, "lost") {
			t.Logf("a: %s", strings.TrimSpace(line))
		}
	}
	h.verifyAt("b", opts)
	h.strata("b", "mirror", "switchover", "vol0")
	h.waitMirror("a", control.RolePrimary, "", 10*time.Second)
	h.verifyAt("a", opts)
}

// TestE2EHAQuickRestart: the primary is killed and started again before
// its lease runs out (a service manager's restart). It may have lost
// writes only its journal's memory held, which the secondary has: it
// hands the lease to the up-to-date secondary instead of serving on, and
// follows it. The client sees a pause; every write fio saw complete reads
// back, on the new primary and, after a switchover, on the old one.
func TestE2EHAQuickRestart(t *testing.T) {
	h := newHALab(t)
	h.mirrorAdd()
	uri, qsd := h.client()
	opts := fioOptions{Size: "64M", Runtime: 14 * time.Second}
	fio := startFio(t, uri, opts)
	time.Sleep(3 * time.Second)
	h.procs["a"].Kill9()
	h.start("a")
	h.waitMirror("b", control.RolePrimary, "", 15*time.Second)
	h.waitMirror("a", control.RoleSecondary, "", 15*time.Second)
	var yielded []time.Time
	for deadline := time.Now().Add(5 * time.Second); len(yielded) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		yielded = h.procs["a"].LogTimes("the secondary takes over")
	}
	if len(yielded) == 0 {
		t.Fatalf("a did not hand over to its up-to-date secondary:\n%s", h.procs["a"].Output())
	}
	h.checkFio(fio.Wait(2*time.Minute), "quick restart of the primary", qsd)
	qsd.Stop()
	h.verifyAt("b", opts)
	h.waitMirror("b", control.RolePrimary, control.MirrorInSync, 60*time.Second)
	h.strata("b", "mirror", "switchover", "vol0")
	h.waitMirror("a", control.RolePrimary, "", 10*time.Second)
	h.verifyAt("a", opts)
}
