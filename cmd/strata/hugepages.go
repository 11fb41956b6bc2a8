package main

import (
	"log/slog"
	"os"
	"strings"
	"syscall"
)

// The index's memtables (4 MiB each) and its block cache are allocated by
// pebble with C malloc. Written at random, a memtable is a skiplist whose
// every insert walks a dozen or more nodes spread over the whole arena: in
// 4 KiB pages each is a TLB miss as well as a cache miss (the insert was a
// third of the daemon's CPU on 4 KiB writes to a new volume). With
// transparent huge pages in "madvise" mode (Debian's default) glibc's
// malloc asks for huge pages only when the tunable glibc.malloc.hugetlb=1
// is set, and glibc reads tunables once, at process start. So `strata
// serve` starts itself again, once, with the tunable added, when the
// kernel would otherwise not give huge pages to that memory. By hand
// (docs/performance.md, Step 9): 4 KiB writes to a new volume at QD32
// about 8% faster. GLIBC_TUNABLES=glibc.malloc.hugetlb=0 in the environment
// keeps it off (any value set there is left alone).
const (
	hugeTunable = "glibc.malloc.hugetlb"
	thpEnabled  = "/sys/kernel/mm/transparent_hugepage/enabled"
)

// hugePageEnv says whether serve should start again with env changed to
// ask glibc for huge pages, given the kernel's THP mode (the content of
// thpEnabled, e.g. "always [madvise] never").
func hugePageEnv(env []string, thpMode string) ([]string, bool) {
	if !strings.Contains(thpMode, "[madvise]") {
		return env, false // "always": huge pages anyway; "never": none to have
	}
	out := make([]string, 0, len(env)+1)
	found := false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GLIBC_TUNABLES="); ok {
			for _, t := range strings.Split(v, ":") {
				if strings.HasPrefix(t, hugeTunable+"=") {
					return env, false // set already (by us, or by the admin)
				}
			}
			if v != "" {
				v += ":"
			}
			kv = "GLIBC_TUNABLES=" + v + hugeTunable + "=1"
			found = true
		}
		out = append(out, kv)
	}
	if !found {
		out = append(out, "GLIBC_TUNABLES="+hugeTunable+"=1")
	}
	return out, true
}

// reexecForHugePages starts the process again with glibc's huge-page
// tunable set (see above), if the kernel's mode calls for it; it returns
// only if it did not (or could not: then serve goes on without).
func reexecForHugePages(log *slog.Logger) {
	mode, err := os.ReadFile(thpEnabled)
	if err != nil {
		return // no THP in this kernel
	}
	env, again := hugePageEnv(os.Environ(), string(mode))
	if !again {
		return
	}
	exe, err := os.Executable()
	if err == nil {
		err = syscall.Exec(exe, os.Args, env)
	}
	log.Warn("could not start again with huge pages for the index's memory; serving without them", "err", err)
}
