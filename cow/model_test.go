package cow

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// mvol is the model of one volume: its head and every retained point.
type mvol struct {
	head  []byte
	h     *Volume
	snaps map[string][]byte
	notes []mnote // points noted by sequence number or time
}

type mnote struct {
	spec    string
	content []byte
}

// TestModelCDP drives random writes, trims, zeroes, flushes, snapshots,
// rollbacks, clones, deletes, garbage collection passes, reopens and clock
// jumps past the retention window, and after every step reads every retained
// point of every volume and compares it with the model. Replay a failure
// with STRATA_SEED=<seed>.
func TestModelCDP(t *testing.T) {
	seed := rand.Uint64()
	if s := os.Getenv("STRATA_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (replay with STRATA_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	fs := vfs.NewMem()
	clk := newFakeClock()
	const size = 48 * 4096 // three index chunks (chunk.go)
	open := func() *Pool { return openClockPool(t, fs, clk, time.Hour) }
	p := open()
	defer func() { p.Close() }()
	vols := map[string]*mvol{}
	names := func() []string {
		var out []string
		for n := range vols {
			out = append(out, n)
		}
		sortStrings(out)
		return out
	}
	newVol := func(name string, content []byte) {
		h, err := p.OpenVolume(name)
		if err != nil {
			t.Fatal(err)
		}
		vols[name] = &mvol{head: content, h: h, snaps: map[string][]byte{}}
	}
	if _, err := p.CreateVolume("v0", size); err != nil {
		t.Fatal(err)
	}
	newVol("v0", make([]byte, size))
	nextName := 1
	// pickPoint returns a retained point of m: a snapshot or a note.
	pickPoint := func(m *mvol) (string, []byte, bool) {
		var specs []string
		var contents [][]byte
		for n, c := range m.snaps {
			specs, contents = append(specs, n), append(contents, c)
		}
		for _, n := range m.notes {
			specs, contents = append(specs, n.spec), append(contents, n.content)
		}
		if len(specs) == 0 {
			return "", nil, false
		}
		// Map iteration is random: sort for reproducibility.
		idx := make([]int, len(specs))
		for i := range idx {
			idx[i] = i
		}
		sortByKey(idx, specs)
		i := idx[rng.IntN(len(idx))]
		return specs[i], contents[i], true
	}
	for step := 0; step < 400; step++ {
		ns := names()
		name := ns[rng.IntN(len(ns))]
		m := vols[name]
		var op string
		switch r := rng.IntN(100); {
		case r < 40:
			op = "write"
			off := rng.IntN(size)
			n := 1 + rng.IntN(min(size-off, 20000))
			if rng.IntN(3) == 0 {
				// Large, often chunk aligned: chunk keys, split by
				// later small writes, relocations and GC.
				if rng.IntN(2) == 0 {
					off = rng.IntN(size/(chunkBlocks*4096)) * chunkBlocks * 4096
				}
				n = 1 + rng.IntN(size-off)
			}
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(rng.IntN(255) + 1)
			}
			if _, err := m.h.WriteAt(data, int64(off)); err != nil {
				t.Fatalf("step %d write: %v", step, err)
			}
			copy(m.head[off:], data)
		case r < 46:
			op = "trim"
			off := rng.IntN(size/4096) * 4096
			n := (1 + rng.IntN(4)) * 4096
			n = min(n, size-off)
			if err := m.h.Trim(int64(off), int64(n)); err != nil {
				t.Fatal(err)
			}
			clear(m.head[off : off+n])
		case r < 50:
			op = "zero"
			off := rng.IntN(size)
			n := 1 + rng.IntN(size-off)
			if err := m.h.WriteZeroes(int64(off), int64(n), rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
			clear(m.head[off : off+n])
		case r < 53:
			op = "flush"
			if err := m.h.Flush(); err != nil {
				t.Fatal(err)
			}
		case r < 61:
			op = "snapshot"
			sn := fmt.Sprintf("s%d", step)
			if _, err := p.CreateSnapshot(name, sn, ""); err != nil {
				t.Fatal(err)
			}
			m.snaps[sn] = bytes.Clone(m.head)
		case r < 64:
			op = "snapshot-delete"
			for sn := range m.snaps {
				if err := p.DeleteSnapshot(name, sn); err != nil {
					t.Fatal(err)
				}
				delete(m.snaps, sn)
				break
			}
		case r < 70:
			op = "note"
			if rng.IntN(2) == 0 {
				p.wmu.Lock()
				spec := "seq:" + strconv.FormatUint(p.wmu.applied, 10)
				p.wmu.Unlock()
				m.notes = append(m.notes, mnote{spec, bytes.Clone(m.head)})
			} else {
				m.notes = append(m.notes, mnote{clk.Now().Format(time.RFC3339Nano), bytes.Clone(m.head)})
			}
			if len(m.notes) > 4 {
				m.notes = m.notes[1:]
			}
		case r < 76:
			op = "rollback"
			spec, content, ok := pickPoint(m)
			if !ok {
				continue
			}
			op += " to " + spec
			if _, err := p.Rollback(name, spec, true); err != nil {
				t.Fatalf("step %d rollback %s to %s: %v", step, name, spec, err)
			}
			m.head = bytes.Clone(content)
		case r < 81:
			op = "clone"
			if len(vols) >= 5 {
				continue
			}
			spec, content, ok := pickPoint(m)
			if !ok {
				continue
			}
			nn := fmt.Sprintf("v%d", nextName)
			nextName++
			op += " " + name + "@" + spec + " -> " + nn
			if _, err := p.Clone(name, spec, nn); err != nil {
				t.Fatalf("step %d clone: %v", step, err)
			}
			newVol(nn, bytes.Clone(content))
		case r < 84:
			op = "delete"
			if len(vols) == 1 {
				continue
			}
			m.h.Close()
			if err := p.DeleteVolume(name, false); err != nil {
				t.Fatal(err)
			}
			delete(vols, name)
		case r < 93:
			op = "gc"
			if _, err := p.GC(context.Background()); err != nil {
				t.Fatalf("step %d gc: %v", step, err)
			}
		case r < 96:
			op = "reopen"
			for _, mv := range vols {
				mv.h.Close()
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			p = open()
			for n, mv := range vols {
				h, err := p.OpenVolume(n)
				if err != nil {
					t.Fatalf("step %d: %s lost on reopen: %v", step, n, err)
				}
				mv.h = h
			}
		default:
			op = "time passes"
			clk.Advance(2 * time.Hour)
			for _, mv := range vols {
				mv.notes = nil // outside the window now
			}
		}
		verifyModel(t, p, vols, fmt.Sprintf("step %d (%s on %s, seed %d)", step, op, name, seed))
	}
}

func verifyModel(t *testing.T, p *Pool, vols map[string]*mvol, when string) {
	t.Helper()
	for name, m := range vols {
		if got := mustRead(t, m.h, 0, int64(len(m.head))); !bytes.Equal(got, m.head) {
			t.Fatalf("%s: head of %s differs from the model at byte %d", when, name, firstDiff(got, m.head))
		}
		check := func(spec string, want []byte) {
			h, err := p.OpenVolumeAt(name, spec)
			if err != nil {
				t.Fatalf("%s: %s@%s: %v; segments %+v", when, name, spec, err, p.j.Load().Segments())
			}
			defer h.Close()
			if got := mustRead(t, h, 0, int64(len(want))); !bytes.Equal(got, want) {
				t.Fatalf("%s: %s@%s differs from the model at byte %d", when, name, spec, firstDiff(got, want))
			}
		}
		for sn, want := range m.snaps {
			check(sn, want)
		}
		for _, n := range m.notes {
			check(n.spec, n.content)
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func sortByKey(idx []int, keys []string) {
	for i := 1; i < len(idx); i++ {
		for j := i; j > 0 && keys[idx[j]] < keys[idx[j-1]]; j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
}
