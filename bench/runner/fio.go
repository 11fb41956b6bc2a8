package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/strata-storage/strata/internal/units"
)

// job is one fio job file of bench/jobs. Its comment lines carry a
// description (the first) and settings:
//
//	; tags: key fresh once
//	    key:   one of the comparisons the targets are about; -quick runs
//	           these, and so do io_uring, fresh-file and the
//	           strata-nocache / strata-snap10 scenarios (unless -all).
//	    fresh: runs against a new, never-written target (4x the working
//	           set unless "size:" says otherwise).
//	    once:  not time-based: the job goes through its target once
//	           (the runner passes --size, no --time_based/--runtime).
//	; size: 8x, at most 8GiB
//	    the target's size as a multiple of the working set (-size),
//	    optionally capped.
//	; prepare: overwrite-random gc
//	    steps run on the job's own target before it is measured (see
//	    prepareSteps); the job then gets its own target of the working
//	    set's size, prefilled like the main one.
type job struct {
	name    string
	file    string
	desc    string
	key     bool
	fresh   bool
	once    bool
	reads   bool
	writes  bool
	mixRead int   // rwmixread= of a mixed job (fio's default 50)
	sizeX   int64 // target size: sizeX times the working set ...
	sizeMax int64 // ... at most this (0: no cap)
	prepare []string
}

// targetSize is the size of the target the job runs on.
func (j *job) targetSize(workingSet int64) int64 {
	n := j.sizeX * workingSet
	if j.sizeMax > 0 && n > j.sizeMax {
		n = j.sizeMax
	}
	return n
}

func loadJobs(dir string) ([]*job, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.fio"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no job files in %s", dir)
	}
	var jobs []*job
	for _, f := range files {
		j, err := parseJob(f)
		if err != nil {
			return nil, err
		}
		jobs = append(jobs, j)
	}
	// Jobs that write less run first: every job of a round on the main
	// target sees the layout the jobs before it left, and a store that
	// keeps every write lays out random writes in the order they came
	// (the peers overwrite in place). Read jobs so measure the prefilled
	// layout, whatever order the files sort in; the layout after random
	// overwrites has its own job (seqread-1m-after-randwrite-qd32, on its
	// own target). Each fresh job runs after its overwrite twin.
	sortKey := func(j *job) string {
		return fmt.Sprintf("%03d %s %v", j.orderShare(), strings.Replace(j.name, "-fresh", "", 1), j.fresh)
	}
	sort.Slice(jobs, func(a, b int) bool { return sortKey(jobs[a]) < sortKey(jobs[b]) })
	return jobs, nil
}

// orderShare is the write share the job runs in order of: its own, or all
// writes for a job with prepare steps, which write its target (a whole
// working set, and more) just before it runs. Run earlier, that writing
// came between the main target's prefill and the read jobs after it:
// Strata's journal tail, which holds what was written recently, then held
// the prepared target instead of the main one, and those read jobs read
// the disk (the peers' files stay in the page cache).
func (j *job) orderShare() int {
	if len(j.prepare) > 0 {
		return 100
	}
	return j.writeShare()
}

// writeShare is the percentage of the job's I/Os that are writes.
func (j *job) writeShare() int {
	switch {
	case !j.writes:
		return 0
	case !j.reads:
		return 100
	}
	return 100 - j.mixRead
}

func parseJob(path string) (*job, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j := &job{name: strings.TrimSuffix(filepath.Base(path), ".fio"), file: path, mixRead: 50}
	sections := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, ";") || strings.HasPrefix(line, "#"):
			c := strings.TrimSpace(strings.TrimLeft(line, ";#"))
			if err := j.parseComment(c); err != nil {
				return nil, fmt.Errorf("%s: %v", path, err)
			}
		case strings.HasPrefix(line, "["):
			sections++
			if line != "["+j.name+"]" {
				return nil, fmt.Errorf("%s: the job section must be [%s], like the file name", path, j.name)
			}
		case strings.HasPrefix(line, "rw=") || strings.HasPrefix(line, "readwrite="):
			rw := line[strings.IndexByte(line, '=')+1:]
			j.reads = strings.Contains(rw, "read") || strings.Contains(rw, "rw")
			j.writes = strings.Contains(rw, "write") || strings.Contains(rw, "rw")
		case strings.HasPrefix(line, "rwmixread="):
			n, err := strconv.Atoi(strings.TrimPrefix(line, "rwmixread="))
			if err != nil || n < 0 || n > 100 {
				return nil, fmt.Errorf("%s: rwmixread must be 0..100, got %q", path, line)
			}
			j.mixRead = n
		}
	}
	if sections != 1 {
		return nil, fmt.Errorf("%s: want exactly one job section, found %d", path, sections)
	}
	if !j.reads && !j.writes {
		return nil, fmt.Errorf("%s: no rw= line", path)
	}
	if j.sizeX == 0 {
		j.sizeX = 1
		if j.fresh {
			j.sizeX = 4
		}
	}
	if j.fresh && len(j.prepare) > 0 {
		return nil, fmt.Errorf("%s: a fresh job cannot have prepare steps (prepared targets are prefilled)", path)
	}
	return j, nil
}

// parseComment reads one comment line of a job file: a setting, or the
// description if it is the first other line.
func (j *job) parseComment(c string) error {
	if tags, ok := strings.CutPrefix(c, "tags:"); ok {
		for _, t := range strings.Fields(tags) {
			switch t {
			case "key":
				j.key = true
			case "fresh":
				j.fresh = true
			case "once":
				j.once = true
			default:
				return fmt.Errorf("unknown tag %q (tags: key, fresh, once)", t)
			}
		}
		return nil
	}
	if size, ok := strings.CutPrefix(c, "size:"); ok {
		// "8x" or "8x, at most 8GiB"
		mult, limit, capped := strings.Cut(size, ",")
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(mult), "x"), 10, 64)
		if err != nil || n < 1 || !strings.HasSuffix(strings.TrimSpace(mult), "x") {
			return fmt.Errorf("size: want \"Nx\" or \"Nx, at most SIZE\", got %q", strings.TrimSpace(size))
		}
		j.sizeX = n
		if capped {
			lim, ok := strings.CutPrefix(strings.TrimSpace(limit), "at most ")
			if j.sizeMax, err = units.ParseSize(strings.TrimSpace(lim)); !ok || err != nil || j.sizeMax < 1<<20 {
				return fmt.Errorf("size: want \"Nx, at most SIZE\", got %q", strings.TrimSpace(size))
			}
		}
		return nil
	}
	if steps, ok := strings.CutPrefix(c, "prepare:"); ok {
		for _, st := range strings.Fields(steps) {
			if _, known := prepareSteps[st]; !known {
				return fmt.Errorf("unknown prepare step %q (steps: %s)", st, strings.Join(slices.Sorted(maps.Keys(prepareSteps)), ", "))
			}
			j.prepare = append(j.prepare, st)
		}
		return nil
	}
	if j.desc == "" {
		j.desc = c
	}
	return nil
}

// fioResult is what one run measured. Bandwidths are bytes/s, latencies
// (p99 completion latency) nanoseconds; the totals cover both directions.
type fioResult struct {
	iops, readIOPS, writeIOPS float64
	bw, readBW, writeBW       float64
	p99, readP99, writeP99    float64
	readBytes, writeBytes     float64 // data moved
	runtime                   float64 // seconds, the end_fsync included
	flushes                   int64   // syncs fio sent (NBD_CMD_FLUSH on the nbd engine)
}

type fioDir struct {
	IOPS     float64 `json:"iops"`
	BwBytes  float64 `json:"bw_bytes"`
	IOBytes  float64 `json:"io_bytes"`
	TotalIOs int64   `json:"total_ios"`
	ClatNs   struct {
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

func (d fioDir) p99() float64 { return d.ClatNs.Percentile["99.000000"] }

type fioJSON struct {
	Jobs []struct {
		Jobname string  `json:"jobname"`
		Error   int     `json:"error"`
		Read    fioDir  `json:"read"`
		Write   fioDir  `json:"write"`
		Mixed   *fioDir `json:"mixed"`
		Sync    struct {
			TotalIOs int64 `json:"total_ios"`
		} `json:"sync"`
		JobRuntime float64 `json:"job_runtime"` // ms
	} `json:"jobs"`
}

// runFio runs fio with args (plus JSON output) and parses the first job's
// numbers; the raw output goes to jsonPath when it is not "". On ctx's end
// fio's process group gets SIGTERM, then SIGKILL.
func runFio(ctx context.Context, args []string, jsonPath string) (fioResult, error) {
	// unified_rw_reporting=both adds a "mixed" section: one p99 over reads
	// and writes together, for the mixed jobs.
	args = append([]string{"--output-format=json", "--unified_rw_reporting=both"}, args...)
	cmd := exec.CommandContext(ctx, "fio", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error {
		pg := -cmd.Process.Pid
		err := syscall.Kill(pg, syscall.SIGTERM)
		go func() {
			time.Sleep(5 * time.Second)
			_ = syscall.Kill(pg, syscall.SIGKILL)
		}()
		return err
	}
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if jsonPath != "" {
		_ = os.WriteFile(jsonPath, stdout.Bytes(), 0o644)
	}
	if ctx.Err() != nil {
		return fioResult{}, ctx.Err()
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return fioResult{}, fmt.Errorf("fio %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	// The nbd engine prints "fio: connected to NBD server" before the JSON.
	out := stdout.Bytes()
	if i := bytes.Index(out, []byte("\n{")); i >= 0 && !bytes.HasPrefix(out, []byte("{")) {
		out = out[i+1:]
	}
	var fj fioJSON
	if err := json.Unmarshal(out, &fj); err != nil {
		return fioResult{}, fmt.Errorf("fio output: %v", err)
	}
	if len(fj.Jobs) == 0 {
		return fioResult{}, fmt.Errorf("fio output has no jobs")
	}
	jr := fj.Jobs[0]
	if jr.Error != 0 {
		return fioResult{}, fmt.Errorf("fio job %s: error %d: %s", jr.Jobname, jr.Error, strings.TrimSpace(stderr.String()))
	}
	r := fioResult{
		readIOPS: jr.Read.IOPS, writeIOPS: jr.Write.IOPS,
		readBW: jr.Read.BwBytes, writeBW: jr.Write.BwBytes,
		readP99: jr.Read.p99(), writeP99: jr.Write.p99(),
		readBytes: jr.Read.IOBytes, writeBytes: jr.Write.IOBytes,
		runtime: jr.JobRuntime / 1e3, flushes: jr.Sync.TotalIOs,
	}
	if m := jr.Mixed; m != nil && m.TotalIOs > 0 {
		r.iops, r.bw, r.p99 = m.IOPS, m.BwBytes, m.p99()
	} else {
		r.iops, r.bw, r.p99 = r.readIOPS+r.writeIOPS, r.readBW+r.writeBW, max(r.readP99, r.writeP99)
	}
	if r.iops == 0 {
		return r, fmt.Errorf("fio job %s did no I/O", jr.Jobname)
	}
	return r, nil
}
