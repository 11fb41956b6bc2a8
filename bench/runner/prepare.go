package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
)

// prepareStep runs on a job's own target, of size bytes, outside the
// measurement, and says what it did (for the CSV's prepare column).
type prepareStep func(ctx context.Context, s *system, t target, size int64) (string, error)

// prepareSteps are what a job file's "; prepare:" line may name, run in
// the order given.
var prepareSteps = map[string]prepareStep{
	"overwrite-random": overwriteRandom,
	"gc":               collectGarbage,
}

// overwriteRandom writes every 4 KiB block of the target once, in random
// order (fio's random map), 32 in flight.
func overwriteRandom(ctx context.Context, s *system, t target, size int64) (string, error) {
	t0 := time.Now()
	args := append(t.fioArgs(), "--name=overwrite-random", "--rw=randwrite", "--bs=4k", "--iodepth=32",
		"--size="+fioSize(size))
	if _, err := runFio(ctx, args, filepath.Join(s.dir, "overwrite-random.json")); err != nil {
		return "", err
	}
	return fmt.Sprintf("4 KiB random overwrite of all %s (QD32) in %.1fs", sizeArg(size), time.Since(t0).Seconds()), nil
}

// collectGarbage runs a GC pass on Strata through the CLI, as an admin
// would (`strata gc --now`); the peers have nothing to collect.
func collectGarbage(ctx context.Context, s *system, _ target, _ int64) (string, error) {
	if s.kind != kindStrata {
		return "no GC (nothing to collect)", nil
	}
	out, err := command(ctx, s.b.strataBin, "--data", filepath.Join(s.dir, "data"), "gc", "--now", "--json")
	if err != nil {
		return "", err
	}
	var st control.GCStats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return "", fmt.Errorf("strata gc --now --json: %v: %s", err, firstLine(out))
	}
	return fmt.Sprintf("strata gc --now ran: defragmented %s (%d of %d MiB extents), freed %s in %d segments, relocated %s, dropped %d dead versions in %s; journal %s, live %s",
		units.FormatSize(st.BytesDefragmented), st.ExtentsRewritten, st.ExtentsExamined,
		units.FormatSize(st.BytesFreed), st.SegmentsRemoved, units.FormatSize(st.BytesRelocated), st.DeadVersions,
		st.Duration.Round(time.Millisecond), units.FormatSize(st.JournalBytes), units.FormatSize(st.LiveBytes)), nil
}

// preparedTarget returns the job's own target: a new one of size bytes,
// prefilled like the main target, then put through the job's prepare steps
// and synced. A job that only reads keeps it for the later rounds; one that
// writes gets a new one every round, removed by done.
func (s *system) preparedTarget(ctx context.Context, j *job, size int64) (t target, desc string, done func(), err error) {
	if pt := s.prepared[j.name]; pt != nil {
		return pt.t, "same target as before: " + pt.desc, func() {}, nil
	}
	fmt.Printf("preparing %s on %s (%s) ... ", j.name, s.name, strings.Join(j.prepare, ", "))
	t0 := time.Now()
	t, done, err = s.fresh(ctx, size, "prep")
	if err != nil {
		fmt.Println()
		return target{}, "", nil, fmt.Errorf("new target: %w", err)
	}
	fail := func(err error) (target, string, func(), error) {
		fmt.Println()
		done()
		return target{}, "", nil, err
	}
	if err := s.fill(ctx, t, size, "prep-fill"); err != nil {
		return fail(fmt.Errorf("prefilling: %w", err))
	}
	steps := []string{"new " + sizeArg(size) + " target, prefilled"}
	for _, name := range j.prepare {
		what, err := prepareSteps[name](ctx, s, t, size)
		if err != nil {
			return fail(fmt.Errorf("prepare step %s: %w", name, err))
		}
		steps = append(steps, what)
	}
	syscall.Sync()
	fmt.Printf("%.1fs\n", time.Since(t0).Seconds())
	desc = strings.Join(steps, "; ")
	if j.writes {
		return t, desc, done, nil
	}
	if s.prepared == nil {
		s.prepared = map[string]*prepared{}
	}
	done = sync.OnceFunc(done) // at a new round, and again at exit
	s.prepared[j.name] = &prepared{t: t, desc: desc, done: done}
	s.b.atExit(done)
	return t, desc, func() {}, nil
}
