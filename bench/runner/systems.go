package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// systemNames lists every system in the order each round runs them.
// fresh-file comes last: it writes as much new data as strata wrote in the
// same round's run of the job.
var systemNames = []string{"strata", "strata-nocache", "strata-snap10", "nbdkit", "qemu-nbd", "io_uring", "fresh-file"}

// Kinds of system.
const (
	kindStrata = "strata"
	kindNbdkit = "nbdkit"
	kindQemu   = "qemu-nbd"
	kindUring  = "io_uring"
	kindFresh  = "fresh-file"
)

// target is what one fio run addresses: an NBD export, or a file for the
// io_uring and fresh-file ceilings.
type target struct {
	uri    string
	volume string // strata: the volume behind uri
	file   string // io_uring, fresh-file
}

func (t target) fioArgs() []string {
	if t.uri != "" {
		return []string{"--ioengine=nbd", "--uri=" + t.uri}
	}
	// Buffered, like the servers' files: the page cache is the ceiling.
	// fallocate=none keeps a fresh file sparse.
	return []string{"--ioengine=io_uring", "--filename=" + t.file, "--direct=0", "--fallocate=none"}
}

type system struct {
	b         *bench
	name      string
	kind      string
	desc      string
	extra     []string // extra `strata serve` flags
	snapshots int      // snapshots taken during each run
	dir       string
	proc      *proc
	main      target
	freshSeq  int
	prepared  map[string]*prepared // by job, for jobs that only read
}

// prepared is a job's own target, prepared once and kept for later rounds.
type prepared struct {
	t    target
	desc string
	done func() // removes the target (a Strata volume or a file)
}

func newSystem(b *bench, name string) *system {
	s := &system{b: b, name: name, dir: filepath.Join(b.tmp, name)}
	switch name {
	case "strata":
		s.kind, s.desc = kindStrata, "strata serve, read cache sized to hold the working set (the in-cache target)"
	case "strata-nocache":
		s.kind, s.desc = kindStrata, "strata serve --cache-size 0 (read cache off)"
		s.extra = []string{"--cache-size", "0"}
	case "strata-snap10":
		s.kind, s.desc = kindStrata, "strata serve as above; 10 snapshots (CLI) taken evenly during each run"
		s.snapshots = 10
	case "nbdkit":
		s.kind, s.desc = kindNbdkit, "nbdkit -f -U SOCK file FILE (raw file)"
	case "qemu-nbd":
		s.kind, s.desc = kindQemu, "qemu-nbd -t --shared=8 -f qcow2 --cache=writeback --aio=threads (qcow2 file)"
	case "io_uring":
		s.kind, s.desc = kindUring, "fio io_uring engine on a raw file, buffered (ceiling: no server, no socket)"
	case "fresh-file":
		s.kind, s.desc = kindFresh, "fio io_uring engine, buffered, writing as much new data as strata did to a fresh sparse file (ceiling for new data)"
	}
	return s
}

// start launches the system's server with its prefilled-to-be target.
func (s *system) start(ctx context.Context) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	size := s.b.cfg.size
	switch s.kind {
	case kindStrata:
		data := filepath.Join(s.dir, "data")
		// strata serve's defaults (GC on at its interval), apart from the
		// cache size; --listen= only turns TCP off, so that several
		// daemons can run side by side (they serve on Unix sockets).
		args := []string{s.b.strataBin, "serve", "--data", data, "--listen=", "--volume", "bench=" + sizeArg(size)}
		extra := s.extra
		if s.name != "strata-nocache" {
			// The working set fits in the read cache (the random
			// read target is "with the working set in cache").
			extra = append([]string{"--cache-size", sizeArg(max(256<<20, size*5/4))}, extra...)
		}
		p, err := startProc(s.name, filepath.Join(s.dir, "server.log"), append(args, extra...)...)
		if err != nil {
			return err
		}
		s.proc = p
		sock := filepath.Join(data, "nbd.sock")
		s.main = target{uri: "nbd+unix:///bench?socket=" + sock, volume: "bench"}
		return waitSocket(ctx, p, sock)
	case kindNbdkit, kindQemu:
		p, t, err := s.startPeer(ctx, s.dir, size)
		s.proc, s.main = p, t
		return err
	case kindUring:
		file := filepath.Join(s.dir, "disk.raw")
		s.main = target{file: file}
		return sparseFile(file, size)
	case kindFresh:
		// No lasting target: every run writes a new file.
		return nil
	}
	return fmt.Errorf("unknown system %s", s.name)
}

// startPeer starts nbdkit or qemu-nbd on a new image of size bytes in dir.
func (s *system) startPeer(ctx context.Context, dir string, size int64) (*proc, target, error) {
	sock := filepath.Join(dir, "nbd.sock")
	var p *proc
	var err error
	switch s.kind {
	case kindNbdkit:
		file := filepath.Join(dir, "disk.raw")
		if err := sparseFile(file, size); err != nil {
			return nil, target{}, err
		}
		p, err = startProc(s.name, filepath.Join(dir, "server.log"), "nbdkit", "-f", "-U", sock, "file", file)
	case kindQemu:
		file := filepath.Join(dir, "disk.qcow2")
		if _, err := command(ctx, "qemu-img", "create", "-q", "-f", "qcow2", file, strconv.FormatInt(size, 10)); err != nil {
			return nil, target{}, err
		}
		p, err = startProc(s.name, filepath.Join(dir, "server.log"), "qemu-nbd", "-t", "--shared=8", "-k", sock,
			"-f", "qcow2", "--cache=writeback", "--aio=threads", file)
	}
	if err != nil {
		return nil, target{}, err
	}
	return p, target{uri: "nbd+unix:///?socket=" + sock}, waitSocket(ctx, p, sock)
}

// prefill writes the whole working set once, sequentially in 1 MiB writes,
// then reads it once in 4 KiB reads: every system starts measured with its
// caches warm (the page cache for the peers, and Strata's read cache, which
// takes small reads only).
func (s *system) prefill(ctx context.Context) error {
	if s.kind == kindFresh {
		return nil
	}
	if err := s.fill(ctx, s.main, s.b.cfg.size, "prefill"); err != nil {
		return err
	}
	args := append(s.main.fioArgs(), "--name=warm", "--rw=read", "--bs=4k", "--iodepth=32",
		"--size="+fioSize(s.b.cfg.size))
	_, err := runFio(ctx, args, filepath.Join(s.dir, "warm.json"))
	return err
}

// fill writes size bytes of t once, sequentially in 1 MiB writes (QD8).
func (s *system) fill(ctx context.Context, t target, size int64, name string) error {
	args := append(t.fioArgs(), "--name="+name, "--rw=write", "--bs=1m", "--iodepth=8", "--size="+fioSize(size))
	_, err := runFio(ctx, args, filepath.Join(s.dir, name+".json"))
	return err
}

// fresh makes a new, never-written target of size bytes, named after label,
// and the function that removes it.
func (s *system) fresh(ctx context.Context, size int64, label string) (target, func(), error) {
	s.freshSeq++
	switch s.kind {
	case kindStrata:
		name := fmt.Sprintf("%s-%d", label, s.freshSeq)
		data := filepath.Join(s.dir, "data")
		if _, err := command(ctx, s.b.strataBin, "--data", data, "volume", "create", name, "--size", sizeArg(size)); err != nil {
			return target{}, nil, err
		}
		t := target{uri: "nbd+unix:///" + name + "?socket=" + filepath.Join(data, "nbd.sock"), volume: name}
		return t, func() {
			// The volume goes now; its journal records stay on disk until
			// a GC pass (background, every minute by default) frees them.
			if _, err := command(context.Background(), s.b.strataBin, "--data", data, "volume", "delete", name, "--force"); err != nil {
				s.b.notef("%s: deleting fresh volume %s: %v", s.name, name, err)
			}
		}, nil
	case kindNbdkit, kindQemu:
		dir := filepath.Join(s.dir, fmt.Sprintf("%s-%d", label, s.freshSeq))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return target{}, nil, err
		}
		p, t, err := s.startPeer(ctx, dir, size)
		done := func() {
			p.stop()
			os.RemoveAll(dir)
		}
		if err != nil {
			done()
			return target{}, nil, err
		}
		return t, done, nil
	case kindUring, kindFresh:
		file := filepath.Join(s.dir, fmt.Sprintf("%s-%d.raw", label, s.freshSeq))
		if err := sparseFile(file, size); err != nil {
			return target{}, nil, err
		}
		return target{file: file}, func() { os.Remove(file) }, nil
	}
	return target{}, nil, fmt.Errorf("unknown system %s", s.name)
}

func (s *system) stop() {
	s.proc.stop()
}

// snapshotter takes n snapshots of a volume, evenly spread over d, through
// the CLI, then deletes them when told to.
type snapshotter struct {
	s     *system
	vol   string
	names []string
	times []time.Duration
	errs  []error
	wg    sync.WaitGroup
}

var snapSeq int

func (s *system) startSnapshots(ctx context.Context, vol string, n int, d time.Duration) *snapshotter {
	sn := &snapshotter{s: s, vol: vol}
	data := filepath.Join(s.dir, "data")
	start := time.Now()
	sn.wg.Add(1)
	go func() {
		defer sn.wg.Done()
		for k := 1; k <= n; k++ {
			at := start.Add(d * time.Duration(k) / time.Duration(n+1))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
			snapSeq++
			name := fmt.Sprintf("bench-%d", snapSeq)
			t0 := time.Now()
			_, err := command(ctx, s.b.strataBin, "--data", data, "snapshot", "create", vol, name)
			if err != nil {
				sn.errs = append(sn.errs, err)
				continue
			}
			sn.names = append(sn.names, name)
			sn.times = append(sn.times, time.Since(t0))
		}
	}()
	return sn
}

// finish waits for the snapshots, deletes them (so every run starts with
// none) and describes what was taken.
func (sn *snapshotter) finish() string {
	sn.wg.Wait()
	data := filepath.Join(sn.s.dir, "data")
	for _, name := range sn.names {
		if _, err := command(context.Background(), sn.s.b.strataBin, "--data", data, "snapshot", "delete", sn.vol, name); err != nil {
			sn.s.b.notef("%s: deleting snapshot %s: %v", sn.s.name, name, err)
		}
	}
	var maxT time.Duration
	for _, t := range sn.times {
		maxT = max(maxT, t)
	}
	note := fmt.Sprintf("snapshots=%d slowest=%s", len(sn.names), maxT.Round(time.Millisecond))
	if len(sn.errs) > 0 {
		note += fmt.Sprintf(" failed=%d (%v)", len(sn.errs), sn.errs[0])
	}
	return note
}

// available says why a system cannot run here, or "" if it can.
func (b *bench) available(ctx context.Context, name string) string {
	switch name {
	case "strata-nocache":
		if !strings.Contains(b.serveHelp, "--cache-size") {
			return "`strata serve --help` has no --cache-size flag (read cache not in this build)"
		}
	case "nbdkit":
		if _, err := exec.LookPath("nbdkit"); err != nil {
			return "nbdkit is not installed (make test-deps)"
		}
	case "qemu-nbd":
		for _, t := range []string{"qemu-nbd", "qemu-img"} {
			if _, err := exec.LookPath(t); err != nil {
				return t + " is not installed (make test-deps: qemu-utils)"
			}
		}
	case "io_uring", "fresh-file":
		if b.uringProbe == nil {
			why := b.probeUring(ctx)
			b.uringProbe = &why
		}
		return *b.uringProbe
	}
	return ""
}

// probeUring runs a tiny io_uring job: the engine may be missing from fio,
// or io_uring disabled in the kernel (kernel.io_uring_disabled, seccomp).
func (b *bench) probeUring(ctx context.Context) string {
	out, _ := command(ctx, "fio", "--enghelp")
	if !strings.Contains(out, "io_uring") {
		return "this fio has no io_uring engine"
	}
	file := filepath.Join(b.tmp, "uring-probe.raw")
	defer os.Remove(file)
	if err := sparseFile(file, 1<<20); err != nil {
		return err.Error()
	}
	_, err := runFio(ctx, []string{"--name=probe", "--ioengine=io_uring", "--filename=" + file, "--direct=0",
		"--rw=randwrite", "--bs=4k", "--size=1m", "--iodepth=4", "--fallocate=none"}, "")
	if err != nil {
		return "fio's io_uring engine fails here: " + firstLine(err.Error())
	}
	return ""
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// sparseFile creates (or empties) a sparse file of size bytes.
func sparseFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
