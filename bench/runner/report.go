package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/strata-storage/strata/internal/units"
)

// collectMachine describes the machine, the tools and the settings.
func (b *bench) collectMachine(ctx context.Context) {
	first := func(argv ...string) string {
		out, err := command(ctx, argv...)
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(firstLine(out))
	}
	cpu := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := "?"
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				mem = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	kernel := "?"
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(data))
	}
	fs := first("stat", "-f", "-c", "%T", b.tmp)
	commit := first("git", "-C", b.cfg.repoRoot, "rev-parse", "--short", "HEAD")
	if out, err := command(ctx, "git", "-C", b.cfg.repoRoot, "status", "--porcelain", "--untracked-files=no"); err == nil && strings.TrimSpace(out) != "" {
		commit += " (with uncommitted changes)"
	}
	version := func(kind string, argv ...string) string {
		for _, s := range b.systems {
			if s.kind == kind {
				return first(argv...)
			}
		}
		return "(not used)"
	}
	var sys []string
	for _, s := range b.systems {
		sys = append(sys, s.name)
	}
	var jobs []string
	for _, j := range b.jobs {
		jobs = append(jobs, j.name)
	}
	b.machine = []string{
		"date:     " + time.Now().Format("2006-01-02 15:04:05 MST"),
		fmt.Sprintf("machine:  %d CPUs (%s), %s RAM, Linux %s, temp files on %s", runtime.NumCPU(), cpu, mem, kernel, fs),
		"fio:      " + first("fio", "--version"),
		"qemu-nbd: " + version(kindQemu, "qemu-nbd", "--version"),
		"nbdkit:   " + version(kindNbdkit, "nbdkit", "--version"),
		"strata:   " + first(b.strataBin, "--version") + ", commit " + commit + ", " + runtime.Version(),
		fmt.Sprintf("settings: %d round(s) x %s per run, working set %s",
			b.cfg.rounds, b.cfg.runtime, sizeArg(b.cfg.size)) + b.targetSizes(),
		"systems:  " + strings.Join(sys, ", "),
		"jobs:     " + strings.Join(jobs, ", "),
	}
	if d := damonNote(); d != "" {
		b.machine = append(b.machine, "memory:   "+d)
	}
}

// targetSizes describes the jobs' targets that are not the working set.
func (b *bench) targetSizes() string {
	var parts []string
	fresh := false
	for _, j := range b.jobs {
		switch n := j.targetSize(b.cfg.size); {
		case n == b.cfg.size:
		case j.fresh && j.sizeX == 4 && j.sizeMax == 0:
			fresh = true
		default:
			parts = append(parts, j.name+" "+sizeArg(n))
		}
	}
	if fresh {
		parts = append([]string{"fresh targets " + sizeArg(4*b.cfg.size)}, parts...)
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// csvHeader lists results.csv's columns; later versions add columns at the
// end only, so older readers keep working.
var csvHeader = []string{"round", "job", "system", "iops", "read_iops", "write_iops",
	"mb_s", "read_mb_s", "write_mb_s", "p99_us", "read_p99_us", "write_p99_us", "started", "note",
	"read_mb", "write_mb", "runtime_s", "flushes", "prepare"}

type csvWriter struct {
	f *os.File
	w *csv.Writer
}

func newCSV(path string) (*csvWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	c := &csvWriter{f: f, w: csv.NewWriter(f)}
	c.w.Write(csvHeader)
	c.w.Flush()
	return c, nil
}

// write appends one run's row at once, so an interrupted run keeps its data.
func (c *csvWriter) write(r result) {
	f0 := func(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }
	f1 := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	c.w.Write([]string{strconv.Itoa(r.round), r.job, r.system,
		f0(r.r.iops), f0(r.r.readIOPS), f0(r.r.writeIOPS),
		f1(r.r.bw / 1e6), f1(r.r.readBW / 1e6), f1(r.r.writeBW / 1e6),
		f1(r.r.p99 / 1e3), f1(r.r.readP99 / 1e3), f1(r.r.writeP99 / 1e3),
		r.start.Format("2006-01-02T15:04:05.000Z07:00"), r.note,
		f1(r.r.readBytes / 1e6), f1(r.r.writeBytes / 1e6), strconv.FormatFloat(r.r.runtime, 'f', 3, 64),
		strconv.FormatInt(r.r.flushes, 10), r.prepare})
	c.w.Flush()
}

func (c *csvWriter) close() { c.f.Close() }

type summary struct {
	n                int
	iops, bw, p99    float64 // medians
	spread           float64 // (max-min)/median of IOPS
	minIOPS, maxIOPS float64
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// summarize returns the medians of a job on a system over the rounds.
func (b *bench) summarize(job, system string) (summary, bool) {
	var iops, bw, p99 []float64
	for _, r := range b.results {
		if r.job == job && r.system == system {
			iops = append(iops, r.r.iops)
			bw = append(bw, r.r.bw)
			p99 = append(p99, r.r.p99)
		}
	}
	if len(iops) == 0 {
		return summary{}, false
	}
	s := summary{n: len(iops), iops: median(iops), bw: median(bw), p99: median(p99),
		minIOPS: slices.Min(iops), maxIOPS: slices.Max(iops)}
	if s.iops > 0 {
		s.spread = (s.maxIOPS - s.minIOPS) / s.iops
	}
	return s, true
}

func (b *bench) printTable() {
	w := b.report
	rounds := 0
	for _, r := range b.results {
		rounds = max(rounds, r.round)
	}
	fmt.Fprintf(w, "Medians of %d round(s); spread = (max-min)/median IOPS over the rounds.\n", rounds)
	fmt.Fprintln(w, "ratio: the median over the rounds of the same round's IOPS ratio: on a peer's or a ceiling's row,")
	fmt.Fprintln(w, "       Strata's IOPS / the peer's (above 1.00x: Strata ahead); on a Strata scenario's row,")
	fmt.Fprintln(w, "       the scenario's IOPS / plain Strata's (its feature's cost).")
	fmt.Fprintln(w)
	jw := b.jobWidth()
	fmt.Fprintf(w, "%-*s %-15s %11s %10s %10s %7s  %s\n", jw, "job", "system", "IOPS", "MB/s", "p99 lat", "spread", "ratio")
	for _, j := range b.jobs {
		first := true
		for _, s := range b.systems {
			sm, ok := b.summarize(j.name, s.name)
			if !ok {
				continue
			}
			name := ""
			if first {
				name = j.name
				first = false
			}
			ratio := ""
			if s.name != "strata" && s.kind == kindStrata {
				if r, ok := b.ratio(j.name, s.name, "strata"); ok {
					ratio = fmt.Sprintf("%.2fx of strata", r.median)
				}
			} else if s.name != "strata" {
				if r, ok := b.ratio(j.name, "strata", s.name); ok {
					ratio = fmt.Sprintf("strata %.2fx", r.median)
				}
			}
			spread := "-"
			if sm.n > 1 {
				spread = fmt.Sprintf("%.0f%%", 100*sm.spread)
			}
			fmt.Fprintf(w, "%-*s %-15s %11s %10.1f %10s %7s  %s\n", jw, name, s.name, fmtCount(sm.iops), sm.bw/1e6,
				fmtLatency(sm.p99), spread, ratio)
		}
	}
}

// jobWidth is the width of the job column: the longest job name.
func (b *bench) jobWidth() int {
	w := 24
	for _, j := range b.jobs {
		w = max(w, len(j.name))
	}
	return w
}

func fmtCount(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func fmtLatency(ns float64) string {
	switch {
	case ns <= 0:
		return "-"
	case ns < 1e6:
		return fmt.Sprintf("%.0f us", ns/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	}
	return fmt.Sprintf("%.2f s", ns/1e9)
}

// damonNote says whether DAMON pages memory out on this machine (as some
// VMs do to hand memory back): cold page cache then leaves, and reads that
// would have hit it reach the disk, for the files behind nbdkit, qemu-nbd
// and io_uring as for Strata's journal.
func damonNote() string {
	states, _ := filepath.Glob("/sys/kernel/mm/damon/admin/kdamonds/*/state")
	for _, st := range states {
		if data, err := os.ReadFile(st); err != nil || strings.TrimSpace(string(data)) != "on" {
			continue
		}
		actions, _ := filepath.Glob(filepath.Join(filepath.Dir(st), "contexts/*/schemes/*/action"))
		for _, a := range actions {
			if data, err := os.ReadFile(a); err == nil && strings.TrimSpace(string(data)) == "pageout" {
				return "DAMON pageout is on: the kernel evicts rarely used page cache, so random reads over a working set often reach the disk"
			}
		}
	}
	return ""
}

// redraw prints the table and draws the chart of an earlier run's CSV.
func (b *bench) redraw() error {
	all, err := loadJobs(b.cfg.jobDir)
	if err != nil {
		return err
	}
	f, err := os.Open(b.cfg.from)
	if err != nil {
		return err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return fmt.Errorf("%s: %v", b.cfg.from, err)
	}
	if len(rows) < 2 || len(rows[0]) < 12 || rows[0][0] != "round" {
		return fmt.Errorf("%s: not a results.csv of this runner", b.cfg.from)
	}
	num := func(s string) float64 { v, _ := strconv.ParseFloat(s, 64); return v }
	// Columns added after the first version are found by name.
	col := func(row []string, name string) string {
		if i := slices.Index(rows[0], name); i >= 0 && i < len(row) {
			return row[i]
		}
		return ""
	}
	seenSys, seenJob := map[string]bool{}, map[string]bool{}
	for _, row := range rows[1:] {
		round, _ := strconv.Atoi(row[0])
		r := result{round: round, job: row[1], system: row[2], r: fioResult{
			iops: num(row[3]), readIOPS: num(row[4]), writeIOPS: num(row[5]),
			bw: num(row[6]) * 1e6, readBW: num(row[7]) * 1e6, writeBW: num(row[8]) * 1e6,
			p99: num(row[9]) * 1e3, readP99: num(row[10]) * 1e3, writeP99: num(row[11]) * 1e3,
		}}
		if len(row) > 13 {
			r.note = row[13]
		}
		r.r.readBytes, r.r.writeBytes = num(col(row, "read_mb"))*1e6, num(col(row, "write_mb"))*1e6
		r.r.runtime, r.r.flushes = num(col(row, "runtime_s")), int64(num(col(row, "flushes")))
		r.prepare = col(row, "prepare")
		b.results = append(b.results, r)
		seenSys[r.system], seenJob[r.job] = true, true
	}
	for _, n := range systemNames {
		if seenSys[n] {
			b.systems = append(b.systems, newSystem(b, n))
		}
	}
	for _, j := range all {
		if seenJob[j.name] {
			b.jobs = append(b.jobs, j)
			delete(seenJob, j.name)
		}
	}
	for _, r := range b.results { // jobs since removed from bench/jobs
		if seenJob[r.job] {
			b.jobs = append(b.jobs, &job{name: r.job})
			delete(seenJob, r.job)
		}
	}
	if data, err := os.ReadFile(filepath.Join(filepath.Dir(b.cfg.from), "machine.txt")); err == nil {
		b.machine = strings.Split(strings.TrimSpace(string(data)), "\n")
		// The run's working set, for the cache-size line.
		for _, l := range b.machine {
			if _, rest, ok := strings.Cut(l, "working set "); ok && strings.HasPrefix(l, "settings:") {
				if n, err := units.ParseSize(strings.Fields(rest)[0]); err == nil {
					b.cfg.size = n
				}
			}
		}
	}
	b.report = os.Stdout
	if err := os.MkdirAll(b.cfg.out, 0o755); err != nil {
		return err
	}
	b.printTable()
	if err := b.writeTargets(); err != nil {
		return err
	}
	path := filepath.Join(b.cfg.out, "chart.png")
	if err := b.drawChart(path); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s and targets.md\n", path)
	return nil
}

// writeTargets prints the targets section and writes it to targets.md.
func (b *bench) writeTargets() error {
	f, err := os.Create(filepath.Join(b.cfg.out, "targets.md"))
	if err != nil {
		return err
	}
	b.printTargets(f)
	return f.Close()
}
