package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A power cut under a directory, for drills such as "the primary's data
// directory loses power (what was not fsynced is gone), then the primary
// comes back". This machine has no device-mapper (no dm-flakey) and no FUSE
// but nbdfuse, so the disk that loses power is itself a Strata volume:
//
//	outer `strata serve` (own data dir, Unix socket only), volume "disk"
//	  -> nbdfuse (the volume as a file) -> loop device (--direct-io=on)
//	  -> ext4, mounted at Dir()
//
// The outer server keeps the tail of its journal in memory until a FLUSH
// (or until a 1 MiB chunk fills, or an index flush syncs it: its 30 s
// checkpoint when it wrote since the last one, or a full memtable): killed
// with SIGKILL it loses those acknowledged but unflushed writes, as a disk
// loses its volatile write cache. Above it the kernel's page cache of the
// ext4 (dirty data, delayed allocation, uncommitted jbd2 transactions) is
// the other thing a power cut loses: PowerCut makes sure none of it ever
// reaches the restarted disk, by cutting the FUSE connection it would have
// to go through before the disk comes back.
//
// An fsync on Dir() goes ext4 -> loop (REQ_PREFLUSH: vfs_fsync of the
// backing file) -> FUSE fsync -> nbdfuse nbd_flush -> NBD_CMD_FLUSH, which
// the outer server answers once its journal is fsynced: what was fsynced
// survives the cut.
//
// What a cut drops (TestE2EPowerCutDir, measured): a file written without
// fsync a moment before the cut is gone (its pages never left the page
// cache and its creation was in an uncommitted jbd2 transaction); cut more
// than ext4's commit interval (5 s) later it is there with 0 bytes (delayed
// allocation); after a sync(2) it survives whole. A strata daemon killed
// with -9 keeps 15 of 16 MiB of unflushed writes when its directory keeps
// power (what its journal writer had written with O_DIRECT), and none of
// them after the cut (the extents of its journal were still unwritten in
// ext4's uncommitted transaction); flushed writes survive both.
//
// Caveats. The disk's cache is lost as a suffix in journal order, never as
// an arbitrary subset, and writes are never torn or reordered: a full 1 MiB
// chunk of the outer journal is written out at once (so only the open
// chunk, plus chunks queued for the writer, are lost). Anything that writes
// the page cache back before the cut (a sync(2) anywhere on the host, dirty
// pages older than vm.dirty_expire_centisecs, 30 s by default, or memory
// pressure) puts the data on the disk, where only a flush-less tail is
// lost. The outer server's index flush (every 30 s if it wrote) syncs its
// journal, as a disk destaging its cache.

// pcDir is a directory on a filesystem whose disk can lose power: writes
// the filesystem's user did not fsync may be lost, fsynced ones survive.
type pcDir struct {
	t    *testing.T
	dir  string  // the ext4 mount point; the same path across cuts
	disk *server // the outer strata serving volume "disk"
	st   *pcStack
	cuts int
	// probeDropped is whether the last cut's probe write (unflushed, sent
	// to a second volume of the outer server just before it was killed)
	// was gone after the restart.
	probeDropped bool
}

// pcStack is one attachment of the disk: nbdfuse, loop device, mount.
type pcStack struct {
	fuseDir string // nbdfuse mount point; the volume is fuseDir/disk
	fuse    *bgProc
	fuseUp  bool
	dev     string
	loopSet bool
	mounted bool
}

const pcProbeVolume = "probe"

// newPowerCutDir starts the outer server with a volume of size (e.g.
// "2GiB"), makes an ext4 on it and mounts it at Dir(). Cleanup unmounts,
// detaches and stops everything, also when the test failed.
func newPowerCutDir(t *testing.T, size string) *pcDir {
	t.Helper()
	needRoot(t)
	needPython(t)
	need(t, "nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "nbdsh", "qemu-io")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("nbdfuse is unusable: no /dev/fuse (%v)", err)
	}
	p := &pcDir{t: t, dir: shortTempDir(t)} // removed last, once unmounted
	p.disk = startServer(t)
	p.disk.createVolume("disk", size)
	p.disk.createVolume(pcProbeVolume, "16MiB")
	// Registered after the outer server's cleanup, so it runs before it.
	t.Cleanup(p.cleanup)
	p.attach(t, false)
	return p
}

// Dir is the mounted filesystem that loses power: the daemon under test
// keeps its data directory under it.
func (p *pcDir) Dir() string { return p.dir }

// PowerCut cuts the power of Dir()'s disk and brings it back: afterwards
// Dir() is mounted again (same path) with only what was durable before the
// cut. Every process using Dir() (the daemon under test) must already be
// dead (kill -9 it first): a file still open would keep the old
// filesystem alive, and the caller would write into a dead mount.
//
// The cut: SIGKILL the outer server (its unflushed journal tail is gone),
// SIGKILL nbdfuse (the FUSE connection is aborted: from now on every write
// the old ext4, its page cache or the old loop device still hold fails
// with an error instead of reaching a disk), lazy unmount of the ext4,
// detach of the loop device, unmount of the dead FUSE mount. The power
// back: the outer server restarts on its data directory (journal replay),
// new nbdfuse and loop device, e2fsck -fp (ext4 journal replay and check),
// mount at Dir().
func (p *pcDir) PowerCut(t *testing.T) {
	t.Helper()
	p.cuts++
	// The probe: an unflushed write the disk acknowledged just before the
	// cut must be gone after it.
	probeOff := int64(p.cuts%4096) * 4096
	pattern := byte(0x40 + p.cuts%64)
	r := runSpec(t, cmdSpec{name: "nbdsh", env: systemPythonEnv(), timeout: 30 * time.Second,
		args: []string{"-u", p.disk.uri(pcProbeVolume), "-c", fmt.Sprintf("h.pwrite(bytes([%d])*4096, %d)", pattern, probeOff)}})
	if r.code != 0 {
		t.Fatalf("probe write: %s", r)
	}

	start := time.Now()
	p.disk.kill9()
	if p.st != nil && p.st.fuseUp {
		p.st.fuse.kill()
	}
	p.detach(t, true)
	p.disk.start()
	p.attach(t, true)

	r = runSpec(t, cmdSpec{name: "nbdsh", env: systemPythonEnv(), timeout: 30 * time.Second,
		args: []string{"-u", p.disk.uri(pcProbeVolume), "-c", fmt.Sprintf("print(h.pread(4096, %d) == bytes(4096))", probeOff)}})
	if r.code != 0 {
		t.Fatalf("probe read: %s", r)
	}
	p.probeDropped = strings.TrimSpace(r.stdout) == "True"
	if !p.probeDropped {
		// Only the outer server's 30 s checkpoint landing between the probe
		// write and the kill could make it durable.
		t.Errorf("power cut %d: the probe write the disk never flushed survived the cut", p.cuts)
	}
	t.Logf("power cut %d: disk down and back, fsck'd and mounted in %s", p.cuts, time.Since(start).Round(time.Millisecond))
}

// attach starts nbdfuse on the disk volume, a loop device on it and mounts
// it at p.dir; before the first cut it makes the filesystem, after a cut
// e2fsck -fp replays its journal and checks it.
func (p *pcDir) attach(t *testing.T, afterCut bool) {
	t.Helper()
	st := &pcStack{fuseDir: shortTempDir(t)}
	p.st = st
	st.fuse = startBG(t, "nbdfuse", filepath.Join(st.fuseDir, "disk"), p.disk.uri("disk"))
	st.fuseUp = true
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(st.fuseDir, "disk")); err == nil {
			break
		}
		if st.fuse.exited() || time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not expose %s/disk within 10 s (exited %v):\n%s", st.fuseDir, st.fuse.exited(), st.fuse.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Direct I/O: the loop device writes to nbdfuse without keeping pages
	// of the backing file (FUSE is write-through anyway; this keeps the
	// only cache in play the one above the loop device).
	r := mustRunTimeout(t, 30*time.Second, "losetup", "-f", "--show", "--direct-io=on", filepath.Join(st.fuseDir, "disk"))
	st.dev = strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(st.dev, "/dev/loop") {
		t.Fatalf("losetup -f --show printed %q", r.stdout)
	}
	st.loopSet = true
	if !afterCut {
		if dio := strings.TrimSpace(run(t, "losetup", "-n", "-O", "DIO", st.dev).stdout); dio != "1" {
			t.Logf("%s: direct I/O is %q (the kernel refused it; FUSE is write-through, so nothing is cached below the filesystem anyway)", st.dev, dio)
		}
		// Lazy inode tables and journal: the fresh volume reads as zeros.
		mustRunTimeout(t, time.Minute, "mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", st.dev)
	} else {
		r := runSpec(t, cmdSpec{name: "e2fsck", args: []string{"-f", "-p", st.dev}, timeout: time.Minute})
		switch {
		case r.code >= 4:
			t.Fatalf("e2fsck -fp %s after the power cut: %s", st.dev, r)
		case r.code != 0: // 1: the journal was replayed (or something fixed)
			t.Logf("e2fsck -fp %s after the power cut (exit %d):\n%s%s", st.dev, r.code, r.stdout, r.stderr)
		}
	}
	// noinit_itable: no background zeroing of inode tables by the kernel.
	mustRunTimeout(t, 30*time.Second, "mount", "-t", "ext4", "-o", "noinit_itable", st.dev, p.dir)
	st.mounted = true
}

// detach undoes the stack; hard is the power cut (the disk and nbdfuse are
// already dead: lazy unmount, nothing is flushed anywhere), otherwise an
// orderly umount first. Safe on a partial stack.
func (p *pcDir) detach(t *testing.T, hard bool) {
	t.Helper()
	st := p.st
	if st == nil {
		return
	}
	if st.mounted {
		ok := false
		if !hard {
			ok = runSpec(t, cmdSpec{name: "umount", args: []string{p.dir}, timeout: time.Minute}).code == 0
		}
		if !ok {
			if r := runSpec(t, cmdSpec{name: "umount", args: []string{"-l", p.dir}, timeout: 30 * time.Second}); r.code != 0 {
				t.Errorf("umount -l %s: %s", p.dir, r)
			}
		}
		st.mounted = false
	}
	if st.loopSet {
		if r := runSpec(t, cmdSpec{name: "losetup", args: []string{"-d", st.dev}, timeout: 30 * time.Second}); r.code != 0 {
			t.Errorf("losetup -d %s: %s", st.dev, r)
		}
		st.loopSet = false
		// A filesystem still holding it (a process kept a file open)
		// leaves it attached (autoclear); its I/O fails all the same.
		deadline := time.Now().Add(5 * time.Second)
		for strings.Contains(run(t, "losetup", "-l", "-n", "-O", "NAME").stdout, st.dev+"\n") {
			if time.Now().After(deadline) {
				t.Errorf("%s is still attached 5 s after losetup -d: something still uses the old filesystem (the daemon under test must be dead before PowerCut); its I/O goes to a dead FUSE connection", st.dev)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if st.fuseUp {
		if !hard && !st.fuse.exited() {
			runSpec(t, cmdSpec{name: "fusermount3", args: []string{"-u", st.fuseDir}, timeout: 30 * time.Second})
			select {
			case <-st.fuse.done:
			case <-time.After(10 * time.Second):
			}
		}
		st.fuse.stop(5 * time.Second)
		// A killed nbdfuse leaves its mount behind (ENOTCONN).
		runSpec(t, cmdSpec{name: "fusermount3", args: []string{"-u", "-z", st.fuseDir}, timeout: 30 * time.Second})
		st.fuseUp = false
	}
	p.st = nil
}

func (p *pcDir) cleanup() {
	p.detach(p.t, false)
}

// TestE2EPowerCutDir checks the power-cut directory: an fsynced file
// survives the cut, a file written without fsync just before it is
// reported (it is normally gone: its pages never left the page cache);
// then a real strata daemon whose data directory is on it is killed with
// SIGKILL, the power is cut, and the daemon opens again with the flushed
// writes intact.
func TestE2EPowerCutDir(t *testing.T) {
	pc := newPowerCutDir(t, "2GiB")
	seed := time.Now().UnixNano()
	t.Logf("random data seed %d", seed)
	rng := rand.New(rand.NewSource(seed))

	// Files: one fsynced (and its directory), one not.
	synced := make([]byte, 3<<20+rng.Intn(1<<20))
	rng.Read(synced)
	unsynced := make([]byte, 8<<20)
	rng.Read(unsynced)
	fdir := filepath.Join(pc.Dir(), "files")
	if err := os.Mkdir(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile := func(name string, b []byte, sync bool) {
		f, err := os.Create(filepath.Join(fdir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		if sync {
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if sync {
			fsyncDir(t, fdir)
			fsyncDir(t, pc.Dir())
		}
	}
	writeFile("synced", synced, true)
	writeFile("unsynced", unsynced, false)
	pc.PowerCut(t)

	if b, err := os.ReadFile(filepath.Join(fdir, "synced")); err != nil {
		t.Errorf("fsynced file after the power cut: %v", err)
	} else if !bytes.Equal(b, synced) {
		t.Errorf("fsynced file after the power cut: %d bytes, SHA-256 %x; wrote %d bytes, SHA-256 %x", len(b), sha256.Sum256(b), len(synced), sha256.Sum256(synced))
	}
	t.Logf("file written without fsync just before the cut: %s", describeSurvivor(filepath.Join(fdir, "unsynced"), unsynced))

	// A real daemon on the power-cut directory.
	data := filepath.Join(pc.Dir(), "primary")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	fsyncDir(t, pc.Dir())
	s := startServerAt(t, data, nil)
	s.createVolume("vol", "64MiB")
	uri := s.uri("vol")
	// unflushedRange reads 16 MiB from off MiB and says per MiB whether
	// it holds pattern, zeros or a mix.
	unflushedRange := func(off int, pattern byte) string {
		t.Helper()
		r := runSpec(t, cmdSpec{name: "nbdsh", env: systemPythonEnv(), timeout: time.Minute,
			args: []string{"-u", uri, "-c", fmt.Sprintf(`
s = ''
for i in range(16):
    b = h.pread(1 << 20, (%d + i) << 20)
    s += 'P' if b == bytes([%d]) * len(b) else '0' if b == bytes(len(b)) else 'x'
print(s)`, off, pattern)}})
		if r.code != 0 {
			t.Fatalf("nbdsh read of the unflushed range: %s", r)
		}
		return strings.TrimSpace(r.stdout)
	}
	writeUnflushed := func(off int, pattern byte) {
		t.Helper()
		// nbdsh sends no flush.
		r := runSpec(t, cmdSpec{name: "nbdsh", env: systemPythonEnv(), timeout: time.Minute,
			args: []string{"-u", uri, "-c", fmt.Sprintf("for i in range(16): h.pwrite(bytes([%d]) * (1 << 20), (%d + i) << 20)", pattern, off)}})
		if r.code != 0 {
			t.Fatalf("nbdsh unflushed writes: %s", r)
		}
	}
	// Control: kill -9 alone (the data directory keeps power) loses only
	// the daemon's in-memory journal tail.
	writeUnflushed(32, 0x11)
	s.kill9()
	s.start()
	control := unflushedRange(32, 0x11)
	t.Logf("daemon's 16 MiB of unflushed writes after kill -9 alone, per MiB (P: there, 0: zeros, x: mixed): %s", control)

	// Flushed: 4 MiB of 0xab, and 64 KiB of 0xef with FUA.
	mustRunTimeout(t, time.Minute, "qemu-io", "-f", "raw", uri, "-c", "write -P 0xab 0 4M", "-c", "write -f -P 0xef 4M 64k", "-c", "flush")
	// Unflushed: 16 MiB of 0xcd after it.
	writeUnflushed(8, 0xcd)
	s.kill9()
	pc.PowerCut(t)
	s.start()
	mustRunTimeout(t, time.Minute, "qemu-io", "-r", "-f", "raw", uri, "-c", "read -P 0xab 0 4M", "-c", "read -P 0xef 4M 64k")
	t.Logf("daemon's 16 MiB of unflushed writes after kill -9 + power cut, per MiB (P: there, 0: zeros, x: mixed): %s", unflushedRange(8, 0xcd))
	// What the restarted daemon served before the flush is covered by it.
	if got := unflushedRange(32, 0x11); got != control {
		t.Errorf("the range the daemon recovered after kill -9 read %s; after a later flush and the power cut it reads %s", control, got)
	}
	if code := s.stop(); code != 0 {
		t.Errorf("strata serve on the power-cut directory exited %d on SIGTERM", code)
	}
}

func fsyncDir(t *testing.T, dir string) {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", dir, err)
	}
}

// describeSurvivor says what is left of a file that was written (want)
// without an fsync: missing, shorter, and per MiB whether the bytes are
// those written, zeros or something else.
func describeSurvivor(path string, want []byte) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("gone (%v)", err)
	}
	if bytes.Equal(b, want) {
		return fmt.Sprintf("survived whole (%d bytes)", len(b))
	}
	var m strings.Builder
	for off := 0; off < len(b); off += 1 << 20 {
		end := min(off+1<<20, len(b))
		switch {
		case bytes.Equal(b[off:end], want[off:min(end, len(want))]):
			m.WriteByte('W')
		case bytes.Count(b[off:end], []byte{0}) == end-off:
			m.WriteByte('0')
		default:
			m.WriteByte('x')
		}
	}
	return fmt.Sprintf("%d of %d bytes; per MiB (W: written, 0: zeros, x: other): %q", len(b), len(want), m.String())
}
