package main

import (
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// qemuIO runs qemu-io -f raw URI with one -c per command.
func qemuIO(t *testing.T, uri string, cmds ...string) result {
	t.Helper()
	args := []string{"-f", "raw", uri}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return runSpec(t, cmdSpec{name: "qemu-io", args: args, timeout: time.Minute})
}

func mustQemuIO(t *testing.T, uri string, cmds ...string) {
	t.Helper()
	if r := qemuIO(t, uri, cmds...); r.code != 0 {
		t.Fatalf("qemu-io %q: %s", cmds, r)
	}
}

type mapExtent struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Present bool  `json:"present"`
	Zero    bool  `json:"zero"`
	Data    bool  `json:"data"`
}

// extentsAt returns the map's extents overlapping [off, off+n).
func extentsAt(m []mapExtent, off, n int64) []mapExtent {
	var out []mapExtent
	for _, e := range m {
		if e.Start < off+n && off < e.Start+e.Length {
			out = append(out, e)
		}
	}
	return out
}

// TestE2EQemu drives a volume with qemu-io patterns (write, FUA write,
// write-zeroes, discard, flush, unaligned writes), checks block status with
// qemu-img map, and converts and compares an image with qemu-img.
func TestE2EQemu(t *testing.T) {
	need(t, "qemu-io", "qemu-img")
	s := startServer(t)
	s.createVolume("q", "64MiB")
	uri := s.uri("q")

	t.Run("patterns", func(t *testing.T) {
		s.on(t)
		mustQemuIO(t, uri,
			"write -P 0xab 0 1M", "write -f -P 0xcd 1M 64k", "write -z 2M 1M", "discard 4M 1M", "flush",
			"read -P 0xab 0 1M", "read -P 0xcd 1M 64k", "read -P 0 2M 1M")
		// A new connection sees the same thing.
		mustQemuIO(t, uri, "read -P 0xab 0 1M", "read -P 0xcd 1M 64k", "read -P 0 2M 1M", "read -P 0 4M 1M", "read -P 0 8M 1M")
	})

	t.Run("wrong pattern fails", func(t *testing.T) {
		s.on(t)
		if r := qemuIO(t, uri, "read -P 0xac 0 4k"); r.code == 0 {
			t.Fatalf("qemu-io read -P 0xac over 0xab data passed:\n%s", r)
		}
		if r := qemuIO(t, uri, "read -P 0xab 1M 4k"); r.code == 0 {
			t.Fatalf("qemu-io read -P 0xab over 0xcd data passed:\n%s", r)
		}
	})

	t.Run("map", func(t *testing.T) {
		s.on(t)
		r := mustRun(t, "qemu-img", "map", "--output=json", "-f", "raw", uri)
		var m []mapExtent
		if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
			t.Fatalf("qemu-img map: %v\n%s", err, r.stdout)
		}
		defer func() {
			if t.Failed() {
				t.Logf("qemu-img map:\n%s", r.stdout)
			}
		}()
		var end int64
		for _, e := range m {
			if e.Start != end {
				t.Errorf("map extent at %d, want %d (gap or overlap)", e.Start, end)
			}
			end = e.Start + e.Length
		}
		if end != 64<<20 {
			t.Errorf("map covers %d bytes, want %d", end, 64<<20)
		}
		for _, e := range extentsAt(m, 0, 1<<20+64<<10) {
			if !e.Data || e.Zero {
				t.Errorf("written range 0..1M+64k: extent %+v is not data", e)
			}
		}
		for _, e := range extentsAt(m, 2<<20, 1<<20) {
			if !e.Zero {
				t.Errorf("write-zeroes range 2M..3M: extent %+v does not read as zero", e)
			}
		}
		for _, rg := range [][2]int64{{1<<20 + 64<<10, 2<<20 - (1<<20 + 64<<10)}, {3 << 20, 1 << 20}, {4 << 20, 1 << 20}, {5 << 20, 59 << 20}} {
			for _, e := range extentsAt(m, rg[0], rg[1]) {
				if !e.Zero || e.Data {
					t.Errorf("never written or discarded range %d+%d: extent %+v is not a zero hole", rg[0], rg[1], e)
				}
			}
		}
	})

	t.Run("unaligned", func(t *testing.T) {
		s.on(t)
		mustQemuIO(t, uri, "write -P 0x11 1000 3000", "read -P 0x11 1000 3000")
		// A new connection: the write landed, its neighbours are intact.
		mustQemuIO(t, uri, "read -P 0x11 1000 3000", "read -P 0xab 0 1000", "read -P 0xab 4000 96")
		// Crossing a 4 KiB boundary into never-written space.
		mustQemuIO(t, uri, "write -P 0x22 12000 5000", "read -P 0x22 12000 5000")
		mustQemuIO(t, uri, "read -P 0x22 12000 5000", "read -P 0xab 11000 1000", "read -P 0xab 17000 1000",
			"read -P 0 6M 100", "write -P 0x33 6291556 7000", "read -P 0 6M 100", "read -P 0x33 6291556 7000", "read -P 0 6298556 1000")
	})

	t.Run("convert compare", func(t *testing.T) {
		s.on(t)
		s.createVolume("img", "32MiB")
		img := filepath.Join(t.TempDir(), "src.raw")
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(32 << 20); err != nil {
			t.Fatal(err)
		}
		seed := time.Now().UnixNano()
		t.Logf("random data seed %d", seed)
		rng := rand.New(rand.NewSource(seed))
		buf := make([]byte, 1<<20)
		for _, off := range []int64{0, 5 << 20, 5<<20 + 1<<20, 17<<20 + 512, 31 << 20} {
			rng.Read(buf)
			if _, err := f.WriteAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		// Put old data where the image has zeros: convert -n must overwrite it.
		mustQemuIO(t, s.uri("img"), "write -P 0x5a 10M 2M", "write -P 0x5b 2M 1M")
		mustRunTimeout(t, time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, s.uri("img"))
		mustRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, s.uri("img"))
		// And compare does see a difference.
		mustQemuIO(t, s.uri("img"), "write -P 0x77 20M 512")
		if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, s.uri("img")); r.code != 1 {
			t.Errorf("qemu-img compare after changing the volume: %s (want exit 1)", r)
		}
	})
}
