package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-storage/strata/internal/units"
)

type bench struct {
	cfg        config
	tmp        string
	strataBin  string
	serveHelp  string
	uringProbe *string  // why io_uring cannot run here ("" if it can), once probed
	machine    []string // "key: value" lines
	jobs       []*job
	systems    []*system
	results    []result
	csv        *csvWriter
	report     io.Writer // stdout and table.txt

	mu       sync.Mutex
	notes    []string
	cleanups []func()
}

type result struct {
	round   int
	job     string
	system  string
	r       fioResult
	note    string
	prepare string // what was done to the job's own target before the run
	start   time.Time
}

func (b *bench) notef(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *bench) atExit(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups = append(b.cleanups, f)
}

// cleanup undoes everything in reverse: servers stop, files go.
func (b *bench) cleanup() {
	b.mu.Lock()
	fs := b.cleanups
	b.cleanups = nil
	b.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func (b *bench) main(ctx context.Context) error {
	cfg := &b.cfg
	if cfg.from != "" {
		return b.redraw()
	}
	if _, err := command(ctx, "fio", "--version"); err != nil {
		return fmt.Errorf("fio is not installed (make test-deps): %v", err)
	}
	if out, _ := command(ctx, "fio", "--enghelp"); !strings.Contains(out, "nbd") {
		return errors.New("this fio has no nbd engine (Debian's fio has it: make test-deps)")
	}
	all, err := loadJobs(cfg.jobDir)
	if err != nil {
		return err
	}
	if b.jobs, err = selectJobs(all, cfg.jobs, cfg.quick); err != nil {
		return err
	}
	names := cfg.systems
	if len(names) == 0 {
		names = systemNames
	}
	for _, n := range names {
		if !slices.Contains(systemNames, n) {
			return fmt.Errorf("unknown system %q (systems: %s)", n, strings.Join(systemNames, ", "))
		}
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}

	parent := cfg.tmp
	if parent == "" {
		parent = os.TempDir()
	}
	if b.tmp, err = os.MkdirTemp(parent, "strata-bench-"); err != nil {
		return err
	}
	if cfg.keep {
		b.atExit(func() { fmt.Fprintf(os.Stderr, "bench: kept %s\n", b.tmp) })
	} else {
		b.atExit(func() { os.RemoveAll(b.tmp) })
	}

	b.strataBin = cfg.strata
	if b.strataBin == "" {
		b.strataBin = filepath.Join(b.tmp, "bin", "strata")
		fmt.Println("building strata (go build ./cmd/strata) ...")
		build, err := command(ctx, "go", "build", "-C", cfg.repoRoot, "-o", b.strataBin, "./cmd/strata")
		if err != nil {
			return fmt.Errorf("building strata: %v\n%s", err, build)
		}
	} else if b.strataBin, err = filepath.Abs(b.strataBin); err != nil {
		return err
	}
	if b.serveHelp, err = command(ctx, b.strataBin, "serve", "--help"); err != nil {
		return fmt.Errorf("strata serve --help: %v", err)
	}

	for _, n := range names {
		if why := b.available(ctx, n); why != "" {
			b.notef("%s skipped: %s", n, why)
			fmt.Printf("skipping %s: %s\n", n, why)
			continue
		}
		b.systems = append(b.systems, newSystem(b, n))
	}
	if len(b.systems) == 0 {
		return errors.New("no system to run")
	}

	// Everything printed from here on also goes to table.txt.
	tableFile, err := os.Create(filepath.Join(cfg.out, "table.txt"))
	if err != nil {
		return err
	}
	defer tableFile.Close()
	b.report = io.MultiWriter(os.Stdout, tableFile)

	b.collectMachine(ctx)
	if err := os.WriteFile(filepath.Join(cfg.out, "machine.txt"), []byte(strings.Join(b.machine, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(b.report, strings.Join(b.machine, "\n"))
	fmt.Fprintln(b.report)

	plan := b.plan()
	fmt.Printf("%d runs: %d job(s) x %d system(s) x %d round(s), %s each (the once jobs: their whole target), working set %s; about %s plus setup\n",
		len(plan), len(b.jobs), len(b.systems), cfg.rounds, cfg.runtime, sizeArg(cfg.size), b.estimate(plan).Round(time.Minute))
	if len(plan) == 0 {
		return errors.New("no job applies to the selected systems (see -all)")
	}

	if b.csv, err = newCSV(filepath.Join(cfg.out, "results.csv")); err != nil {
		return err
	}
	defer b.csv.close()

	b.warmMemory(cfg.warmMB)

	if err := b.startSystems(ctx, false); err != nil {
		return err
	}

	stopped := ""
	round := 1
	for i, p := range plan {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p.round != round {
			// Every round starts from new, prefilled targets on every
			// system: no round inherits another's layout, and Strata's
			// journal (which keeps every write for its 24 h retention)
			// fits the disk.
			round = p.round
			if err := b.startSystems(ctx, true); err != nil {
				return err
			}
		}
		need := cfg.minFree + b.newData(p)
		if freeBytes(b.tmp) < need {
			b.collect(ctx, i)
		}
		if free := freeBytes(b.tmp); free < need {
			stopped = fmt.Sprintf("stopped after %d of %d runs: %s free under %s, %s wanted for the next run "+
				"(Strata's journal keeps every write for its retention window, 24h by default)",
				i, len(plan), units.FormatSize(free), parent, units.FormatSize(need))
			break
		}
		res, err := b.runOne(ctx, p)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%s on %s (round %d): %w", p.job.name, p.sys.name, p.round, err)
		}
		b.results = append(b.results, res)
		b.csv.write(res)
		fmt.Printf("[%3d/%d r%d] %-*s %-15s %10.0f IOPS %9.1f MB/s  p99 %9s  %s\n", i+1, len(plan), p.round,
			b.jobWidth(), p.job.name, p.sys.name, res.r.iops, res.r.bw/1e6, fmtLatency(res.r.p99), res.note)
	}
	if stopped != "" {
		b.notef("%s", stopped)
	}
	b.diskUsage()

	fmt.Fprintln(b.report)
	b.printTable()
	if err := b.writeTargets(); err != nil {
		b.notef("targets.md: %v", err)
	}
	if err := b.drawChart(filepath.Join(cfg.out, "chart.png")); err != nil {
		b.notef("chart: %v", err)
	}
	if len(b.notes) > 0 {
		fmt.Fprintln(b.report, "\nNotes:")
		for _, n := range b.notes {
			fmt.Fprintln(b.report, "  -", n)
		}
	}
	fmt.Printf("\nwrote %s/{results.csv,chart.png,machine.txt,table.txt,targets.md}\n", cfg.out)
	return nil
}

// selectJobs returns the jobs named, or with no names all of them (the key
// ones with quick), in the order of all.
func selectJobs(all []*job, names []string, quick bool) ([]*job, error) {
	if len(names) == 0 {
		var out []*job
		for _, j := range all {
			if !quick || j.key {
				out = append(out, j)
			}
		}
		return out, nil
	}
	for _, n := range names {
		if !slices.ContainsFunc(all, func(j *job) bool { return j.name == n }) {
			var known []string
			for _, j := range all {
				known = append(known, j.name)
			}
			return nil, fmt.Errorf("unknown job %q (jobs: %s)", n, strings.Join(known, ", "))
		}
	}
	// The jobs run in the full list's order, whatever order they were
	// named in: reads before the writes that push their data out of
	// Strata's tail, as in a full run (a VM boot named after the fresh
	// write jobs had read from the disk: 0.84x nbdkit, against about
	// 1.0x on its own, 2026-12-03).
	var out []*job
	for _, j := range all {
		if slices.Contains(names, j.name) {
			out = append(out, j)
		}
	}
	return out, nil
}

type planned struct {
	round int
	job   *job
	sys   *system
}

// applies says whether a job runs on a system by default: the peers and
// plain Strata run everything; the ceilings and the scenarios run the key
// jobs, a scenario only those its feature can change. -all runs everything
// everywhere, except fresh-file's reads (of a file it just made sparse).
func (b *bench) applies(s *system, j *job) bool {
	if s.kind == kindFresh {
		// The ceiling for writing new data: jobs that only write.
		return j.writes && !j.reads && (j.key || b.cfg.all)
	}
	if b.cfg.all {
		return true
	}
	switch s.name {
	case "io_uring":
		// A fresh sparse file would measure ext4's allocation (fresh-file
		// is the ceiling for new data); a file overwritten in place keeps
		// its layout, so a prepared one would read as the main one.
		return j.key && !j.fresh && len(j.prepare) == 0
	case "strata-nocache":
		return j.key && j.reads && !j.fresh
	case "strata-snap10":
		// Snapshots cost writes (the next write to a block a snapshot
		// holds); the mixed jobs are mostly reads.
		return j.key && j.writes && !j.reads && !j.fresh
	}
	return true
}

// startSystems starts every system on a new, prefilled target (stopping
// it and removing its files first when restart is set).
func (b *bench) startSystems(ctx context.Context, restart bool) error {
	for _, s := range b.systems {
		if err := ctx.Err(); err != nil {
			return err
		}
		if restart {
			for _, pt := range s.prepared {
				pt.done()
			}
			s.prepared = nil
			s.stop()
			if err := os.RemoveAll(s.dir); err != nil {
				return err
			}
		}
		if s.kind == kindFresh {
			fmt.Printf("starting %s (a new file every run) ... ", s.name)
		} else {
			fmt.Printf("starting %s and prefilling %s ... ", s.name, sizeArg(b.cfg.size))
		}
		t0 := time.Now()
		if !restart {
			b.atExit(s.stop)
		}
		if err := s.start(ctx); err != nil {
			fmt.Println()
			return fmt.Errorf("starting %s: %w", s.name, err)
		}
		if err := s.prefill(ctx); err != nil {
			fmt.Println()
			return fmt.Errorf("prefilling %s: %w", s.name, err)
		}
		fmt.Printf("%.1fs\n", time.Since(t0).Seconds())
	}
	// Write the prefill back to disk now, not during the first measurements.
	syscall.Sync()
	return nil
}

// collect asks every running Strata daemon for a garbage collection pass
// now (strata gc --now), as an admin short of disk would, before the run
// numbered i would not fit: the fresh volumes the runner deleted (their
// journal records) are otherwise freed by the background pass, up to a
// minute later. On a machine whose disk took 1.8 GB/s of direct writes, a
// round's Strata journals held about 55 GiB, and a full run stopped for
// want of 0.1 GiB (2026-12-03).
func (b *bench) collect(ctx context.Context, i int) {
	before := freeBytes(b.tmp)
	var done []string
	for _, s := range b.systems {
		if s.kind != kindStrata || s.proc == nil {
			continue
		}
		if _, err := command(ctx, b.strataBin, "--data", filepath.Join(s.dir, "data"), "gc", "--now"); err != nil {
			b.notef("%s: strata gc --now: %v", s.name, err)
			continue
		}
		done = append(done, s.name)
	}
	if len(done) > 0 {
		b.notef("disk short before run %d: strata gc --now on %s freed %s", i+1, strings.Join(done, ", "),
			units.FormatSize(max(0, freeBytes(b.tmp)-before)))
	}
}

// plan orders the runs: round by round, job by job, and within a job every
// system in turn, the order rotated by one each round (A B C, B C A, C A B),
// so no system always runs right after the same other one and inherits what
// that one left behind (its dirty pages, its daemon's background work).
// fresh-file runs last: it writes as much as strata wrote in the round.
func (b *bench) plan() []planned {
	var out []planned
	for r := 1; r <= b.cfg.rounds; r++ {
		for _, j := range b.jobs {
			for _, s := range roundOrder(b.systems, r) {
				if b.applies(s, j) {
					out = append(out, planned{r, j, s})
				}
			}
		}
	}
	return out
}

// roundOrder is the order of the systems in round r (from 1): rotated by
// r-1, the fresh-file ceiling last.
func roundOrder(systems []*system, r int) []*system {
	var rot, last []*system
	for _, s := range systems {
		if s.kind == kindFresh {
			last = append(last, s)
		} else {
			rot = append(rot, s)
		}
	}
	if n := len(rot); n > 0 {
		k := (r - 1) % n
		rot = append(rot[k:len(rot):len(rot)], rot[:k]...)
	}
	return append(rot, last...)
}

func (b *bench) runOne(ctx context.Context, p planned) (result, error) {
	cfg := &b.cfg
	res := result{round: p.round, job: p.job.name, system: p.sys.name}
	t, size, done, err := b.runTarget(ctx, p, &res)
	if err != nil {
		return res, err
	}
	defer done()
	// Dirty pages left by the previous run (another system's, maybe) are
	// written back now, not during this measurement.
	syscall.Sync()
	args := append(t.fioArgs(), "--size="+fioSize(size))
	switch {
	case p.job.once:
		// The whole target once, however long it takes.
	case p.sys.kind == kindFresh:
		// Strata's amount once; the cap only bounds a very slow ceiling.
		args = append(args, fmt.Sprintf("--runtime=%dms", 3*cfg.runtime.Milliseconds()))
	default:
		args = append(args, "--time_based", fmt.Sprintf("--runtime=%dms", cfg.runtime.Milliseconds()))
	}
	args = append(args, p.job.file)
	var sn *snapshotter
	if p.sys.snapshots > 0 && t.volume != "" {
		sn = p.sys.startSnapshots(ctx, t.volume, p.sys.snapshots, cfg.runtime)
	}
	res.start = time.Now()
	jsonPath := filepath.Join(p.sys.dir, fmt.Sprintf("r%d-%s.json", p.round, p.job.name))
	r, err := runFio(ctx, args, jsonPath)
	if sn != nil {
		res.note = joinNotes(res.note, sn.finish())
	}
	if err != nil {
		if p.sys.proc != nil && p.sys.proc.exited() {
			err = fmt.Errorf("%w\n%s exited (%v); its log:\n%s", err, p.sys.name, p.sys.proc.waitErr, p.sys.proc.logTail())
		}
		return res, err
	}
	res.r = r
	if p.sys.kind == kindFresh && r.writeBytes < float64(size) {
		res.note = joinNotes(res.note, fmt.Sprintf("capped at %s: wrote %s", 3*cfg.runtime, units.FormatSize(int64(r.writeBytes))))
	}
	return res, nil
}

// runTarget picks a run's target and its size: the main target, a new one
// (a fresh job, or the fresh-file ceiling), or the job's prepared target;
// done removes what only this run uses.
func (b *bench) runTarget(ctx context.Context, p planned, res *result) (t target, size int64, done func(), err error) {
	size = p.job.targetSize(b.cfg.size)
	switch {
	case p.sys.kind == kindFresh:
		amount, from := b.freshAmount(p, size)
		res.note = "new data: " + sizeArg(amount) + ", " + from
		if t, done, err = p.sys.fresh(ctx, amount, "fresh"); err != nil {
			return target{}, 0, nil, fmt.Errorf("fresh file: %w", err)
		}
		return t, amount, done, nil
	case p.job.fresh:
		if t, done, err = p.sys.fresh(ctx, size, "fresh"); err != nil {
			return target{}, 0, nil, fmt.Errorf("fresh target: %w", err)
		}
		return t, size, done, nil
	case len(p.job.prepare) > 0:
		if t, res.prepare, done, err = p.sys.preparedTarget(ctx, p.job, size); err != nil {
			return target{}, 0, nil, err
		}
		return t, size, done, nil
	}
	return p.sys.main, size, func() {}, nil
}

// freshAmount is how much new data fresh-file writes in a run: what strata
// wrote in the same round's run of the job (rounded up to 1 MiB), or, with
// no such run, the job's target size.
func (b *bench) freshAmount(p planned, size int64) (int64, string) {
	for _, r := range b.results {
		if r.round == p.round && r.job == p.job.name && r.system == "strata" && r.r.writeBytes > 0 {
			return (int64(r.r.writeBytes) + 1<<20 - 1) &^ (1<<20 - 1), "as much as strata wrote in this round"
		}
	}
	return size, "the job's target size (no strata run to match)"
}

// newData is about how much disk a run takes beyond what is already used:
// a new target's data (the prepared target's twice: prefill, overwrite).
func (b *bench) newData(p planned) int64 {
	size := p.job.targetSize(b.cfg.size)
	switch {
	case p.sys.kind == kindFresh:
		n, _ := b.freshAmount(p, size)
		return n
	case p.job.fresh:
		return size
	case len(p.job.prepare) > 0 && (p.job.writes || p.sys.prepared[p.job.name] == nil):
		return 2 * size
	}
	return 0
}

// estimate guesses how long the plan takes: time-based runs take -runtime;
// once jobs are bounded by the disk (their final flush waits for it), taken
// as 200 MB/s; preparing a target writes it twice, the second time in
// 4 KiB random writes, taken as 50 MB/s.
func (b *bench) estimate(plan []planned) time.Duration {
	const disk, random = 200e6, 50e6
	seconds := func(bytes int64, rate float64) time.Duration {
		return time.Duration(float64(bytes) / rate * float64(time.Second))
	}
	var d time.Duration
	prepared := map[string]bool{}
	for _, p := range plan {
		size := p.job.targetSize(b.cfg.size)
		switch {
		case p.job.once:
			d += seconds(size, disk) + 2*time.Second
		case p.sys.kind == kindFresh:
			d += b.cfg.runtime/2 + 800*time.Millisecond
		default:
			d += b.cfg.runtime + 800*time.Millisecond
		}
		if k := p.sys.name + "/" + p.job.name; len(p.job.prepare) > 0 && (p.job.writes || !prepared[k]) {
			prepared[k] = true
			d += seconds(size, disk) + seconds(size, random)
		}
	}
	return d
}

func joinNotes(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}

// warmMemory touches mb MiB of memory once through /dev/shm: virtual
// machines fault fresh guest memory in slowly the first time, and no system
// should pay that inside its measurements.
func (b *bench) warmMemory(mb int) {
	if mb <= 0 {
		return
	}
	if free := freeBytes("/dev/shm"); free < int64(mb)<<20+(1<<30) {
		return
	}
	path := fmt.Sprintf("/dev/shm/strata-bench-warm-%d", os.Getpid())
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer os.Remove(path)
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := 0; i < mb; i++ {
		if _, err := f.Write(buf); err != nil {
			return
		}
	}
}

func freeBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 1 << 62
	}
	return int64(st.Bavail) * st.Bsize
}

// diskUsage notes how much disk each system's files took (Strata's journal
// keeps every write for its retention window, 24h by default).
func (b *bench) diskUsage() {
	var parts []string
	for _, s := range b.systems {
		var n int64
		filepath.WalkDir(s.dir, func(_ string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if fi, err := d.Info(); err == nil {
					if st, ok := fi.Sys().(*syscall.Stat_t); ok {
						n += st.Blocks * 512
					}
				}
			}
			return nil
		})
		parts = append(parts, fmt.Sprintf("%s %s", s.name, units.FormatSize(n)))
	}
	b.notef("disk used at the end (allocated blocks): %s", strings.Join(parts, ", "))
}
