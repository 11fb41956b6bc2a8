package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// job is one fio job file of bench/jobs. Its comment lines carry a
// description (the first) and tags ("; tags: key fresh"):
//
//	key:   one of the comparisons the targets are about; -quick runs these,
//	       and so do io_uring and the strata-nocache / strata-snap10
//	       scenarios (unless -all).
//	fresh: runs against a new, never-written target 4x the working set.
type job struct {
	name   string
	file   string
	desc   string
	key    bool
	fresh  bool
	reads  bool
	writes bool
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
	// Group each fresh job after its overwrite twin.
	sortKey := func(j *job) string {
		return strings.Replace(j.name, "-fresh", "", 1) + map[bool]string{false: "0", true: "1"}[j.fresh]
	}
	sort.Slice(jobs, func(a, b int) bool { return sortKey(jobs[a]) < sortKey(jobs[b]) })
	return jobs, nil
}

func parseJob(path string) (*job, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j := &job{name: strings.TrimSuffix(filepath.Base(path), ".fio"), file: path}
	sections := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, ";") || strings.HasPrefix(line, "#"):
			c := strings.TrimSpace(strings.TrimLeft(line, ";#"))
			if tags, ok := strings.CutPrefix(c, "tags:"); ok {
				for _, t := range strings.Fields(tags) {
					switch t {
					case "key":
						j.key = true
					case "fresh":
						j.fresh = true
					default:
						return nil, fmt.Errorf("%s: unknown tag %q", path, t)
					}
				}
			} else if j.desc == "" {
				j.desc = c
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
		}
	}
	if sections != 1 {
		return nil, fmt.Errorf("%s: want exactly one job section, found %d", path, sections)
	}
	if !j.reads && !j.writes {
		return nil, fmt.Errorf("%s: no rw= line", path)
	}
	return j, nil
}

// fioResult is what one run measured. Bandwidths are bytes/s, latencies
// (p99 completion latency) nanoseconds; the totals cover both directions.
type fioResult struct {
	iops, readIOPS, writeIOPS float64
	bw, readBW, writeBW       float64
	p99, readP99, writeP99    float64
}

type fioDir struct {
	IOPS     float64 `json:"iops"`
	BwBytes  float64 `json:"bw_bytes"`
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
