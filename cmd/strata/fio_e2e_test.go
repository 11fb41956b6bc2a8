package main

import (
	"strings"
	"testing"
	"time"
)

// runFio runs fio with the nbd engine against uri and checks that it exits
// 0 and reports err= 0 for every job.
func runFio(t *testing.T, uri string, args ...string) string {
	t.Helper()
	full := append([]string{"--name=v", "--ioengine=nbd", "--uri=" + uri}, args...)
	// fio saves verify state files in its working directory.
	r := runSpec(t, cmdSpec{name: "fio", args: full, dir: t.TempDir(), timeout: 90 * time.Second})
	if r.code != 0 {
		t.Fatalf("fio %s: %s", quoteArgs(full), r)
	}
	if !strings.Contains(r.stdout, "err= 0") {
		t.Fatalf("fio %s: output lacks \"err= 0\":\n%s", quoteArgs(full), r)
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "err=") && !strings.Contains(line, "err= 0") {
			t.Errorf("fio %s: a job failed: %s\n%s", quoteArgs(full), line, r)
		}
	}
	return r.stdout
}

// TestE2EFioVerify writes with fio's nbd engine and verifies with crc32c:
// random 4 KiB writes with periodic flushes, four connections at once,
// verification in a later run after a server restart, 1 MiB sequential
// writes, and 512-byte random read/writes that force read-modify-write.
func TestE2EFioVerify(t *testing.T) {
	need(t, "fio")
	s := startServer(t)
	verify := []string{"--verify=crc32c", "--verify_fatal=1", "--verify_backlog=1024"}

	t.Run("randwrite", func(t *testing.T) {
		s.on(t)
		s.createVolume("rw", "128MiB")
		runFio(t, s.uri("rw"), append([]string{"--rw=randwrite", "--bs=4k", "--size=128M",
			"--iodepth=32", "--do_verify=1", "--fsync=64"}, verify...)...)
	})

	t.Run("multiconn", func(t *testing.T) {
		s.on(t)
		s.createVolume("mc", "128MiB")
		out := runFio(t, s.uri("mc"), append([]string{"--rw=randwrite", "--bs=4k", "--size=32M",
			"--numjobs=4", "--offset_increment=32M", "--iodepth=16", "--do_verify=1", "--fsync=64"}, verify...)...)
		if n := strings.Count(out, "err= 0"); n != 4 {
			t.Errorf("fio --numjobs=4: %d jobs reported err= 0, want 4\n%s", n, out)
		}
	})

	t.Run("verify after restart", func(t *testing.T) {
		s.on(t)
		s.createVolume("later", "64MiB")
		opts := append([]string{"--rw=randwrite", "--bs=4k", "--size=64M", "--iodepth=32", "--fsync=64"}, verify...)
		runFio(t, s.uri("later"), append(opts, "--do_verify=0")...)
		s.restart()
		out := runFio(t, s.uri("later"), append(opts, "--verify_only=1")...)
		if !strings.Contains(out, "READ:") {
			t.Errorf("fio --verify_only=1 read nothing:\n%s", out)
		}
		// The same verification of a volume never written must fail, or
		// the check above proves nothing.
		s.createVolume("never", "64MiB")
		full := append([]string{"--name=v", "--ioengine=nbd", "--uri=" + s.uri("never")}, append(opts, "--verify_only=1")...)
		if r := runSpec(t, cmdSpec{name: "fio", args: full, dir: t.TempDir(), timeout: 90 * time.Second}); r.code == 0 {
			t.Errorf("fio --verify_only=1 of a never-written volume passed:\n%s", r)
		}
	})

	t.Run("seq 1MiB", func(t *testing.T) {
		s.on(t)
		s.createVolume("seq", "64MiB")
		runFio(t, s.uri("seq"), append([]string{"--rw=write", "--bs=1M", "--size=64M",
			"--iodepth=8", "--do_verify=1", "--fsync=16"}, verify...)...)
	})

	t.Run("randrw 512", func(t *testing.T) {
		s.on(t)
		s.createVolume("rmw", "16MiB")
		runFio(t, s.uri("rmw"), append([]string{"--rw=randrw", "--bs=512", "--size=8M",
			"--iodepth=16", "--do_verify=1", "--fsync=128"}, verify...)...)
	})
}
