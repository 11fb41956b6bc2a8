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
		fmt.Sprintf("settings: %d round(s) x %s per run, working set %s (fresh targets %s)",
			b.cfg.rounds, b.cfg.runtime, sizeArg(b.cfg.size), sizeArg(4*b.cfg.size)),
		"systems:  " + strings.Join(sys, ", "),
		"jobs:     " + strings.Join(jobs, ", "),
	}
	if d := damonNote(); d != "" {
		b.machine = append(b.machine, "memory:   "+d)
	}
}

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
	c.w.Write([]string{"round", "job", "system", "iops", "read_iops", "write_iops",
		"mb_s", "read_mb_s", "write_mb_s", "p99_us", "read_p99_us", "write_p99_us", "started", "note"})
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
		r.start.Format("2006-01-02T15:04:05.000Z07:00"), r.note})
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
	fmt.Fprintln(w, "ratio: on a peer's row, Strata's IOPS / the peer's (above 1.00x: Strata ahead);")
	fmt.Fprintln(w, "       on a Strata scenario's row, the scenario's IOPS / plain Strata's (its feature's cost).")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-24s %-15s %11s %10s %10s %7s  %s\n", "job", "system", "IOPS", "MB/s", "p99 lat", "spread", "ratio")
	for _, j := range b.jobs {
		base, haveBase := b.summarize(j.name, "strata")
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
			switch {
			case s.name == "strata" || !haveBase || sm.iops == 0:
			case s.kind == kindStrata:
				ratio = fmt.Sprintf("%.2fx of strata", sm.iops/base.iops)
			default:
				ratio = fmt.Sprintf("strata %.2fx", base.iops/sm.iops)
			}
			spread := "-"
			if sm.n > 1 {
				spread = fmt.Sprintf("%.0f%%", 100*sm.spread)
			}
			fmt.Fprintf(w, "%-24s %-15s %11s %10.1f %10s %7s  %s\n", name, s.name, fmtCount(sm.iops), sm.bw/1e6,
				fmtLatency(sm.p99), spread, ratio)
		}
	}
	b.printTargets()
}

// printTargets checks the targets (QD32, medians, same run).
func (b *bench) printTargets() {
	type tgt struct {
		job, sys, base string
		min            float64
		strict         bool
		what           string
	}
	targets := []tgt{
		{"randread-4k-qd32", "strata", "nbdkit", 1.0, false, "4 KiB random read"},
		{"randwrite-4k-qd32", "strata", "nbdkit", 0.8, false, "4 KiB random write (overwrite)"},
		{"randwrite-4k-qd32", "strata", "qemu-nbd", 1.0, true, "4 KiB random write (overwrite)"},
		{"randwrite-4k-fresh-qd32", "strata", "qemu-nbd", 1.0, true, "4 KiB random write (fresh, allocating)"},
		{"seqread-1m-qd32", "strata", "nbdkit", 0.8, false, "1 MiB sequential read"},
		{"seqwrite-1m-qd32", "strata", "nbdkit", 0.8, false, "1 MiB sequential write"},
		{"randwrite-4k-qd32", "strata-snap10", "strata", 0.9, false, "4 KiB random write, 10 snapshots"},
	}
	var lines []string
	for _, t := range targets {
		a, ok1 := b.summarize(t.job, t.sys)
		c, ok2 := b.summarize(t.job, t.base)
		if !ok1 || !ok2 || c.iops == 0 {
			continue
		}
		r := a.iops / c.iops
		op, met := ">=", r >= t.min
		if t.strict {
			op, met = "> ", r > t.min
		}
		verdict := "met"
		if !met {
			verdict = "MISSED"
		}
		lines = append(lines, fmt.Sprintf("  %-40s %-24s %s/%s = %.2fx (want %s %.2f)  %s",
			t.what, t.job, t.sys, t.base, r, op, t.min, verdict))
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(b.report, "\nTargets (issue 4; medians of IOPS, QD32, this run):")
	for _, l := range lines {
		fmt.Fprintln(b.report, l)
	}
	fmt.Fprintf(b.report, "  (strata and strata-snap10 run with --cache-size %s, so the %s working set fits in the read cache;\n"+
		"   strata-nocache shows the same without it)\n", sizeArg(max(256<<20, b.cfg.size*5/4)), sizeArg(b.cfg.size))
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
	}
	b.report = os.Stdout
	b.printTable()
	if err := os.MkdirAll(b.cfg.out, 0o755); err != nil {
		return err
	}
	path := filepath.Join(b.cfg.out, "chart.png")
	if err := b.drawChart(path); err != nil {
		return err
	}
	fmt.Println("\nwrote", path)
	return nil
}
