package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The job files parse, and every target of the report names a job that
// exists, so a renamed job cannot leave a target "not run" for good.
func TestJobFilesAndTargets(t *testing.T) {
	jobs, err := loadJobs("../jobs")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*job{}
	for _, j := range jobs {
		byName[j.name] = j
	}
	for _, g := range goals {
		if g.every == nil && byName[g.job] == nil {
			t.Errorf("target %q names job %s, which has no file in bench/jobs", g.what, g.job)
		}
	}
	sus := byName["seqwrite-1m-sustained"]
	if sus == nil || !sus.once || !sus.fresh || !sus.key {
		t.Fatalf("seqwrite-1m-sustained: want tags key fresh once, got %+v", sus)
	}
	for _, c := range []struct{ ws, want int64 }{{1 << 30, 8 << 30}, {64 << 20, 512 << 20}, {2 << 30, 8 << 30}} {
		if got := sus.targetSize(c.ws); got != c.want {
			t.Errorf("sustained target for working set %d: %d, want %d", c.ws, got, c.want)
		}
	}
	if j := byName["randwrite-4k-fresh-qd1"]; j == nil || j.targetSize(1<<30) != 4<<30 {
		t.Errorf("randwrite-4k-fresh-qd1: want a fresh target 4x the working set, got %+v", j)
	}
	if j := byName["seqread-1m-after-randwrite-qd32"]; j == nil || !slices.Equal(j.prepare, []string{"overwrite-random", "gc"}) || j.writes {
		t.Errorf("seqread-1m-after-randwrite-qd32: want a read-only job prepared by overwrite-random, gc; got %+v", j)
	}
	if j := byName["randwrite-4k-qd32"]; j == nil || j.targetSize(1<<30) != 1<<30 || j.once {
		t.Errorf("randwrite-4k-qd32: want a time-based job on the working set, got %+v", j)
	}
	// Read jobs run before any job that writes, mixes by their write share,
	// a job whose preparation writes its target with the writers, and
	// each fresh job right after its overwrite twin.
	share, at := -1, map[string]int{}
	for i, j := range jobs {
		if j.orderShare() < share {
			t.Errorf("job %s (%d%% writes) runs after a job with %d%%", j.name, j.orderShare(), share)
		}
		share = j.orderShare()
		at[j.name] = i
	}
	if at["seqread-1m-after-randwrite-qd32"] < at["vm-boot-qd8"] || at["seqread-1m-after-randwrite-qd32"] < at["seqread-1m-qd1"] {
		t.Errorf("the prepared read job runs before the main target's reads: %v", at)
	}
	if vm := byName["vm-boot-qd8"]; vm == nil || vm.writeShare() != 10 {
		t.Errorf("vm-boot-qd8: want 10%% writes, got %+v", vm)
	}
	if at["randwrite-4k-fresh-qd32"] != at["randwrite-4k-qd32"]+1 {
		t.Errorf("randwrite-4k-fresh-qd32 does not follow its twin: %v", at)
	}
}

// Jobs named with -jobs run in the full list's order (reads before the
// writes that would push their data out of Strata's tail), not in the
// order named; an unknown name is refused.
func TestSelectJobsKeepsOrder(t *testing.T) {
	all, err := loadJobs("../jobs")
	if err != nil {
		t.Fatal(err)
	}
	got, err := selectJobs(all, []string{"randwrite-4k-fresh-qd32", "randwrite-4k-qd32", "vm-boot-qd8", "randread-4k-qd1"}, false)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, j := range got {
		names = append(names, j.name)
	}
	if want := []string{"randread-4k-qd1", "vm-boot-qd8", "randwrite-4k-qd32", "randwrite-4k-fresh-qd32"}; !slices.Equal(names, want) {
		t.Errorf("selected jobs run as %v, want %v", names, want)
	}
	if _, err := selectJobs(all, []string{"vm-boot-qd8", "no-such-job"}, false); err == nil || !strings.Contains(err.Error(), `unknown job "no-such-job"`) {
		t.Errorf("an unknown job: %v", err)
	}
}

func TestParseCommentErrors(t *testing.T) {
	for _, c := range []string{"tags: key often", "size: 8", "size: x", "size: 8x, at most lots", "size: 8x, 8GiB", "prepare: defrag"} {
		var j job
		if err := j.parseComment(c); err == nil {
			t.Errorf("%q: no error", c)
		}
	}
	var j job
	if err := j.parseComment("size: 2x, at most 1GiB"); err != nil || j.targetSize(1<<30) != 1<<30 || j.targetSize(256<<20) != 512<<20 {
		t.Errorf("size: 2x, at most 1GiB: %v, %+v", err, j)
	}
}

// The ratio is the median of per-round ratios, not the ratio of medians.
func TestRatioPerRound(t *testing.T) {
	b := &bench{}
	add := func(round int, sys string, iops float64) {
		b.results = append(b.results, result{round: round, job: "j", system: sys, r: fioResult{iops: iops}})
	}
	// Per round: 1.0, 2.0, 0.5 -> median 1.0; medians 100 / 100 would
	// say 1.0 too, so make the rounds disagree: 10/10, 200/100, 50/100.
	add(1, "strata", 10)
	add(1, "nbdkit", 10)
	add(2, "strata", 200)
	add(2, "nbdkit", 100)
	add(3, "strata", 50)
	add(3, "nbdkit", 100)
	add(4, "strata", 999) // no nbdkit run in round 4: left out
	r, ok := b.ratio("j", "strata", "nbdkit")
	if !ok || r.n != 3 || r.median != 1.0 || r.lo != 0.5 || r.hi != 2.0 {
		t.Fatalf("ratio = %+v, %v; want median 1.0 over 3 rounds, 0.5-2.0", r, ok)
	}
	if _, ok := b.ratio("j", "strata", "qemu-nbd"); ok {
		t.Error("a ratio to a system that never ran")
	}
	g := goal{min: 0.9}
	if s := g.show(0.8996); s != "0.899x" {
		t.Errorf("show(0.8996) = %s, want 0.899x", s)
	}
	if s := g.show(0.95); s != "0.95x" {
		t.Errorf("show(0.95) = %s", s)
	}
}

// Every round rotates the order of the systems by one, so none always runs
// right after the same other one; fresh-file (which writes what strata
// wrote in the round) stays last.
func TestRoundOrder(t *testing.T) {
	var systems []*system
	for _, n := range []string{"strata", "fresh-file", "nbdkit", "qemu-nbd"} {
		systems = append(systems, newSystem(&bench{}, n))
	}
	names := func(ss []*system) (out []string) {
		for _, s := range ss {
			out = append(out, s.name)
		}
		return out
	}
	want := [][]string{
		{"strata", "nbdkit", "qemu-nbd", "fresh-file"},
		{"nbdkit", "qemu-nbd", "strata", "fresh-file"},
		{"qemu-nbd", "strata", "nbdkit", "fresh-file"},
		{"strata", "nbdkit", "qemu-nbd", "fresh-file"},
	}
	for r, w := range want {
		if got := names(roundOrder(systems, r+1)); !slices.Equal(got, w) {
			t.Errorf("round %d: %v, want %v", r+1, got, w)
		}
	}
	if got := names(systems); !slices.Equal(got, []string{"strata", "fresh-file", "nbdkit", "qemu-nbd"}) {
		t.Errorf("roundOrder changed its argument: %v", got)
	}
}

// collect runs `strata gc --now` on every running Strata system's data
// directory, and on nothing else.
func TestCollectRunsGC(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	bin := filepath.Join(dir, "strata")
	script := "#!/bin/sh\necho \"$*\" >> " + log + "\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	b := &bench{strataBin: bin, tmp: dir}
	b.systems = []*system{
		{name: "strata", kind: kindStrata, dir: filepath.Join(dir, "s1"), proc: &proc{}},
		{name: "strata-stopped", kind: kindStrata, dir: filepath.Join(dir, "s2")},
		{name: "nbdkit", kind: kindNbdkit, dir: filepath.Join(dir, "n"), proc: &proc{}},
	}
	b.collect(context.Background(), 4)
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if want := "--data " + filepath.Join(dir, "s1", "data") + " gc --now\n"; string(got) != want {
		t.Errorf("calls: %q, want %q", got, want)
	}
	if len(b.notes) != 1 || !strings.Contains(b.notes[0], "before run 5: strata gc --now on strata freed") {
		t.Errorf("notes: %q", b.notes)
	}
}
