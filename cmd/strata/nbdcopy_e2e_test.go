package main

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// firstDiff reports the first offset where a and b differ (-1 if equal).
func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// TestE2ENbdcopy copies 64 MiB of random data onto a volume with nbdcopy
// over four connections, then reads it back to stdout and to a file.
func TestE2ENbdcopy(t *testing.T) {
	need(t, "nbdcopy")
	s := startServer(t)
	s.createVolume("copy", "64MiB")

	seed := time.Now().UnixNano()
	t.Logf("random data seed %d", seed)
	data := make([]byte, 64<<20)
	rand.New(rand.NewSource(seed)).Read(data)
	// A few zero runs so nbdcopy's sparse/zero paths run too.
	for _, off := range []int{3 << 20, 17<<20 + 4096, 40 << 20} {
		clear(data[off : off+1<<20])
	}
	work := t.TempDir()
	src := filepath.Join(work, "src.img")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}

	mustRunTimeout(t, time.Minute, "nbdcopy", "--connections=4", "--requests=16", "--flush", src, s.uri("copy"))

	t.Run("to stdout", func(t *testing.T) {
		s.on(t)
		r := mustRunTimeout(t, time.Minute, "nbdcopy", s.uri("copy"), "-")
		if d := firstDiff([]byte(r.stdout), data); d >= 0 {
			t.Fatalf("nbdcopy URI - differs from the source at byte %d (got %d bytes, want %d)", d, len(r.stdout), len(data))
		}
	})

	t.Run("to file", func(t *testing.T) {
		s.on(t)
		dst := filepath.Join(work, "dst.img")
		mustRunTimeout(t, time.Minute, "nbdcopy", "--connections=2", s.uri("copy"), dst)
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("nbdcopy URI FILE differs from the source at byte %d", firstDiff(got, data))
		}
	})
}
