// Command runner is Strata's benchmark harness: it starts Strata and the
// peers a user would pick instead (nbdkit's file plugin on a raw file,
// qemu-nbd serving qcow2; and two ceilings without a server: fio's io_uring
// engine on a raw file, and on a fresh file for new data), each on its own
// Unix socket in a temporary directory, prefills them, then runs every fio
// job of bench/jobs against each system in turn (A B C A B C ...) for
// several rounds, so the machine's noise hits all of them alike. It prints
// a table of medians and Strata's ratio to each peer, checks the targets of
// the performance issue, and writes results.csv, chart.png, machine.txt,
// table.txt and targets.md.
//
//	go run ./bench/runner               # full run, about 40 minutes
//	go run ./bench/runner -quick        # smoke run, about 10 minutes
//	go run ./bench/runner -systems strata,nbdkit -jobs randread-4k-qd32 -rounds 5
//
// See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/strata-storage/strata/internal/units"
)

type config struct {
	rounds   int
	runtime  time.Duration
	size     int64
	jobs     []string
	systems  []string
	out      string
	quick    bool
	all      bool
	strata   string
	tmp      string
	warmMB   int
	keep     bool
	minFree  int64
	repoRoot string
	jobDir   string
	from     string
}

func main() {
	os.Exit(run())
}

func run() int {
	var cfg config
	var sizeStr, jobsStr, systemsStr string
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds: every job runs once per round against each system")
	flag.DurationVar(&cfg.runtime, "runtime", 8*time.Second, "duration of each fio run")
	flag.StringVar(&sizeStr, "size", "1GiB", "working set: size of each target (fresh targets are 4x, seqwrite-1m-sustained's 8x at most 8GiB: see each job's size: line)")
	flag.StringVar(&jobsStr, "jobs", "", "comma list of jobs to run (default: all in bench/jobs, or the quick ones with -quick)")
	flag.StringVar(&systemsStr, "systems", "", "comma list of systems (default: "+strings.Join(systemNames, ",")+")")
	flag.StringVar(&cfg.out, "out", "", "directory for results.csv, chart.png, machine.txt, table.txt (default REPO/bench/results)")
	flag.BoolVar(&cfg.quick, "quick", false, "smoke run: 1 round of 4s, the jobs tagged key (explicit -rounds/-runtime/-jobs still win)")
	flag.BoolVar(&cfg.all, "all", false, "run every job on every system (default: the io_uring and fresh-file ceilings and the strata-nocache / strata-snap10 scenarios run only the key jobs they concern; fresh-file never runs reads; see bench/README.md)")
	flag.StringVar(&cfg.strata, "strata", "", "strata binary to run (default: go build ./cmd/strata into the temp dir)")
	flag.StringVar(&cfg.tmp, "tmp", "", "parent of the temp dir holding data, files and sockets (default $TMPDIR or /tmp)")
	flag.IntVar(&cfg.warmMB, "warm", 4096, "MiB of memory to touch once in /dev/shm before measuring (VMs fault fresh guest memory in slowly); 0 skips")
	flag.StringVar(&cfg.from, "from", "", "run nothing: print the table and redraw the chart of an earlier results.csv (machine.txt beside it); -out defaults to its directory")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temp dir (data, logs, fio output) instead of removing it")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", flag.Args())
		return 2
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if cfg.quick {
		if !set["rounds"] {
			cfg.rounds = 1
		}
		if !set["runtime"] {
			cfg.runtime = 4 * time.Second
		}
	}
	var err error
	if cfg.size, err = units.ParseSize(sizeStr); err != nil || cfg.size < 16<<20 || cfg.size%(1<<20) != 0 {
		fmt.Fprintf(os.Stderr, "bench: -size %q: want a multiple of 1MiB, at least 16MiB (e.g. 1GiB, 512M)\n", sizeStr)
		return 2
	}
	if cfg.rounds < 1 || cfg.runtime < time.Second {
		fmt.Fprintln(os.Stderr, "bench: -rounds must be at least 1 and -runtime at least 1s")
		return 2
	}
	cfg.jobs = splitList(jobsStr)
	cfg.systems = splitList(systemsStr)
	cfg.minFree = 3 << 30

	if cfg.repoRoot, err = findRepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	cfg.jobDir = filepath.Join(cfg.repoRoot, "bench", "jobs")
	if cfg.out == "" {
		cfg.out = filepath.Join(cfg.repoRoot, "bench", "results")
		if cfg.from != "" {
			cfg.out = filepath.Dir(cfg.from)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	b := &bench{cfg: cfg}
	defer b.cleanup()
	if err := b.main(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "\nbench: interrupted; stopping every process and removing the temp dir")
			return 130
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// findRepoRoot walks up from the working directory to the module root.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.Contains(string(data), "module github.com/strata-storage/strata") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the strata repository (no go.mod of github.com/strata-storage/strata above the working directory)")
		}
		dir = parent
	}
}

// sizeArg writes a size exactly, the way strata, qemu-img and fio all read
// it on their command lines (units.FormatSize rounds, for people).
func sizeArg(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// fioSize is sizeArg in fio's spelling (fio reads "1GiB" too, but "1g" is
// its own documented form).
func fioSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dg", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dm", n>>20)
	}
	return fmt.Sprintf("%dk", n>>10)
}
