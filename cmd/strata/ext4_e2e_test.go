package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fuseLoop is a volume exposed as a file by nbdfuse and as a block device by
// a loop device. detach undoes both; it is safe to call twice and runs at
// cleanup in any case.
type fuseLoop struct {
	t       *testing.T
	mnt     string // nbdfuse mountpoint; the volume is mnt/disk
	fuse    *bgProc
	dev     string // /dev/loopN
	fuseUp  bool
	loopSet bool
}

func attachFuseLoop(t *testing.T, uri string) *fuseLoop {
	t.Helper()
	a := &fuseLoop{t: t, mnt: shortTempDir(t)}
	a.fuse = startBG(t, "nbdfuse", filepath.Join(a.mnt, "disk"), uri)
	a.fuseUp = true
	// After startBG's own cleanup, so it runs first: loop device, then
	// fusermount3 -u, then nbdfuse is stopped.
	t.Cleanup(a.detach)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(a.mnt, "disk")); err == nil {
			break
		}
		if a.fuse.exited() || time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not expose %s/disk within 10 s (exited %v):\n%s", a.mnt, a.fuse.exited(), a.fuse.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := mustRun(t, "losetup", "-f", "--show", filepath.Join(a.mnt, "disk"))
	a.dev = strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(a.dev, "/dev/loop") {
		t.Fatalf("losetup -f --show printed %q", r.stdout)
	}
	a.loopSet = true
	return a
}

func (a *fuseLoop) detach() {
	if a.loopSet {
		if r := runSpec(a.t, cmdSpec{name: "losetup", args: []string{"-d", a.dev}, timeout: 30 * time.Second}); r.code != 0 {
			a.t.Errorf("losetup -d %s: %s", a.dev, r)
		}
		a.loopSet = false
	}
	if a.fuseUp {
		if !a.fuse.exited() {
			if r := runSpec(a.t, cmdSpec{name: "fusermount3", args: []string{"-u", a.mnt}, timeout: 30 * time.Second}); r.code != 0 {
				a.t.Logf("fusermount3 -u %s: %s", a.mnt, r)
			}
			select {
			case <-a.fuse.done:
			case <-time.After(10 * time.Second):
			}
		}
		if code := a.fuse.stop(10 * time.Second); code != 0 {
			a.t.Logf("nbdfuse exited %d:\n%s", code, a.fuse.output())
		}
		// If nbdfuse died without unmounting, the mount lingers.
		runSpec(a.t, cmdSpec{name: "fusermount3", args: []string{"-u", "-z", a.mnt}, timeout: 30 * time.Second})
		a.fuseUp = false
	}
}

// mountPoint is a mounted filesystem; unmount is safe to call twice and runs
// (lazily, if it must) at cleanup.
type mountPoint struct {
	t       *testing.T
	dir     string
	mounted bool
}

func mountDev(t *testing.T, dev string) *mountPoint {
	t.Helper()
	m := &mountPoint{t: t, dir: shortTempDir(t)}
	t.Cleanup(func() {
		if m.mounted {
			runSpec(t, cmdSpec{name: "umount", args: []string{"-l", m.dir}, timeout: 30 * time.Second})
			m.mounted = false
		}
	})
	mustRunTimeout(t, 30*time.Second, "mount", "-t", "ext4", dev, m.dir)
	m.mounted = true
	return m
}

func (m *mountPoint) unmount() {
	m.t.Helper()
	if m.mounted {
		mustRunTimeout(m.t, time.Minute, "umount", m.dir)
		m.mounted = false
	}
}

func fsck(t *testing.T, dev string) {
	t.Helper()
	r := runSpec(t, cmdSpec{name: "e2fsck", args: []string{"-fn", dev}, timeout: time.Minute})
	if r.code != 0 {
		t.Fatalf("e2fsck -fn %s is not clean: %s", dev, r)
	}
}

// checkFiles compares every file's SHA-256 under root with want.
func checkFiles(t *testing.T, root string, want map[string][32]byte) {
	t.Helper()
	bad := 0
	for name, sum := range want {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Errorf("read %s: %v", name, err)
			bad++
		} else if sha256.Sum256(b) != sum {
			t.Errorf("%s: SHA-256 differs from what was written (%d bytes)", name, len(b))
			bad++
		}
		if bad > 10 {
			t.Fatal("too many bad files")
		}
	}
	if bad > 0 {
		t.FailNow()
	}
}

// TestE2EExt4 runs a real ext4 filesystem on a volume (nbdfuse + loop
// device): mkfs, fsck, files written and checked by SHA-256 across
// unmount/mount, and again after the strata server restarted.
func TestE2EExt4(t *testing.T) {
	needRoot(t)
	need(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	s := startServer(t)
	s.createVolume("ext", "256MiB")

	a := attachFuseLoop(t, s.uri("ext"))
	mustRunTimeout(t, 2*time.Minute, "mkfs.ext4", "-q", a.dev)
	fsck(t, a.dev)

	m := mountDev(t, a.dev)
	seed := time.Now().UnixNano()
	t.Logf("random data seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	want := map[string][32]byte{}
	write := func(name string, n int) {
		b := make([]byte, n)
		rng.Read(b)
		p := filepath.Join(m.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = sha256.Sum256(b)
	}
	for i := 0; i < 5; i++ {
		write(fmt.Sprintf("big/%d.bin", i), 2<<20+rng.Intn(2<<20))
	}
	for i := 0; i < 300; i++ {
		write(fmt.Sprintf("small/d%02d/f%03d", i%16, i), 1+rng.Intn(12000))
	}
	syscall.Sync()
	m.unmount()
	fsck(t, a.dev)
	// The files really went through strata.
	var vols []struct {
		Name    string `json:"name"`
		Written int64  `json:"written"`
	}
	if err := json.Unmarshal([]byte(s.mustCLI("volume", "list", "--json")), &vols); err != nil || len(vols) != 1 || vols[0].Written < 12<<20 {
		t.Fatalf("volume list --json after writing ~15 MiB of files: %+v (err %v), want written >= 12 MiB", vols, err)
	}

	m = mountDev(t, a.dev)
	checkFiles(t, m.dir, want)
	m.unmount()
	a.detach()

	// The data survives a restart of the server.
	s.restart()
	a = attachFuseLoop(t, s.uri("ext"))
	fsck(t, a.dev)
	m = mountDev(t, a.dev)
	checkFiles(t, m.dir, want)
	m.unmount()
	fsck(t, a.dev)
	a.detach()
}
