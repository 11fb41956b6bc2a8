package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// flipInJournal flips one byte inside the first 4 KiB run of pat found in
// the journal's segment files, and reports whether it found one.
func flipInJournal(t *testing.T, dir string, pat byte) bool {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "journal", "*.seg"))
	want := bytes.Repeat([]byte{pat}, 4096)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, want); i >= 0 {
			b[i+1000] ^= 0x01
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return true
		}
	}
	return false
}

// The drill, as a new user would run it: flip one byte inside the
// newest flushed record after a clean stop. The pool opens (the clean stop
// proved that record durable, so it is not cut as a torn tail), that block
// reads as an I/O error (its checksum), the others read as written, and a
// rewrite heals it; status reports the damaged read. (Recovery does not
// rescan records the index already holds; a scrub would find it first.)
func TestE2EDamagedNewestRecordAfterCleanStop(t *testing.T) {
	need(t, "qemu-io")
	s := startServer(t)
	s.createVolume("d", "16MiB")
	mustQemuIO(t, s.uri("d"), "write -P 0x11 0 64k", "flush", "write -P 0x5c 1M 4k", "flush")
	s.stop()
	if !flipInJournal(t, s.dir, 0x5c) {
		t.Fatal("the newest record's data is not in the journal files")
	}
	s.start() // before: "index ahead of the journal", the pool refused to open
	if r := qemuIO(t, s.uri("d"), "read -P 0x5c 1M 4k"); r.code == 0 && !strings.Contains(r.stdout+r.stderr, "error") {
		t.Fatalf("the damaged block read without an error: %s", r)
	}
	mustQemuIO(t, s.uri("d"), "read -P 0x11 0 64k", "read -P 0 2M 4k")
	if st := s.mustCLI("status"); !strings.Contains(st, "DAMAGED:") || !strings.Contains(st, "failing its checksum") {
		t.Fatalf("status does not report the damaged read:\n%s", st)
	}
	// Rewriting the block heals it; the pool takes writes.
	mustQemuIO(t, s.uri("d"), "write -P 0x6d 1M 4k", "flush", "read -P 0x6d 1M 4k")
}
