package main

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procKB reads a "Vm...:  N kB" line of /proc/PID/status.
func procKB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			n, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestE2EMemoryBounded (P5): memory is bounded by configuration, not by
// what is read. The daemon reads 128 MiB of a volume 8x larger than its read
// cache, then the whole volume twice more: the second phase reads 4x as much
// and may raise the peak resident size by less than twice the cache (evicted
// blocks wait for the garbage collector; an unbounded cache would grow by at
// least the 128 MiB not read before), and the peak stays under
// the start-up size plus the cache plus a fixed allowance (192 MiB: the
// index cache and memtables, request buffers of the client's connections,
// garbage awaiting collection).
func TestE2EMemoryBounded(t *testing.T) {
	need(t, "nbdcopy", "fio")
	const cacheMiB, volMiB = 32, 256
	s := startServer(t, "--cache-size", strconv.Itoa(cacheMiB)+"MiB", "--index-cache", "16MiB")
	s.createVolume("big", strconv.Itoa(volMiB)+"MiB")
	src := filepath.Join(t.TempDir(), "src.raw")
	data := make([]byte, volMiB<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRunTimeout(t, 2*time.Minute, "nbdcopy", "--flush", src, s.uri("big"))
	// A fresh daemon: its peak so far is its start-up size.
	s.stop()
	s.start()
	base := procKB(t, s.pid(), "VmRSS")
	read := func(size string, loops int) {
		mustRunTimeout(t, 2*time.Minute, "fio", "--name=r", "--ioengine=nbd", "--uri="+s.uri("big"), "--rw=read", "--bs=1M",
			"--iodepth=8", "--size="+size, "--loops="+strconv.Itoa(loops), "--directory="+t.TempDir())
	}
	read("128M", 1)
	peak1 := procKB(t, s.pid(), "VmHWM")
	read(strconv.Itoa(volMiB)+"M", 2)
	peak2 := procKB(t, s.pid(), "VmHWM")
	t.Logf("RSS at start %d MiB; peak after reading 128 MiB %d MiB; after %d MiB more %d MiB", base>>10, peak1>>10, 2*volMiB, peak2>>10)
	if grow := peak2 - peak1; grow > 2*cacheMiB<<10 {
		t.Errorf("reading 4x more data raised the peak by %d MiB, more than twice the %d MiB cache", grow>>10, cacheMiB)
	}
	if limit := base + (cacheMiB+192)<<10; peak2 > limit {
		t.Errorf("peak RSS %d MiB exceeds start-up %d MiB + %d MiB cache + 192 MiB", peak2>>10, base>>10, cacheMiB)
	}
}
