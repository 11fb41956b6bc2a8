package main

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// A python3-libnbd writer: phase-1 writes, FLUSH, then phase-2 writes (some
// with FUA) and no flush; it prints READY and keeps the connection open
// until it is killed.
const kill9Writer = `
import json, sys, time, nbd
plan = json.load(open(sys.argv[1]))
blob = open(sys.argv[2], 'rb').read()
h = nbd.NBD()
h.connect_uri(sys.argv[3])
def do(phase):
    for w in plan:
        if w['phase'] == phase:
            flags = nbd.CMD_FLAG_FUA if w['fua'] else 0
            h.pwrite(blob[w['pos']:w['pos'] + w['len']], w['off'], flags)
do(1)
h.flush()
print('FLUSHED', flush=True)
do(2)
print('READY', flush=True)
time.sleep(3600)
`

// A reader: the whole export to a file.
const nbdReader = `
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
with open(sys.argv[2], 'wb') as f:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        f.write(h.pread(n, off))
        off += n
h.shutdown()
`

type plannedWrite struct {
	Off   int64 `json:"off"`
	Len   int   `json:"len"`
	Pos   int   `json:"pos"` // offset of the data in the blob
	FUA   bool  `json:"fua"`
	Phase int   `json:"phase"`
}

// TestE2EKill9 checks P1 end to end: writes acknowledged before a completed
// FLUSH, and FUA writes, survive kill -9 of the server; unflushed writes are
// each either there or not, never garbage; and the server replaces the stale
// socket a crash leaves behind.
func TestE2EKill9(t *testing.T) {
	needPython(t)
	s := startServer(t)
	const volSize = 16 << 20
	s.createVolume("crash", "16MiB")

	seed := time.Now().UnixNano()
	t.Logf("random data seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	var plan []plannedWrite
	var blob []byte
	add := func(phase int, off int64, n int, fua bool) {
		b := make([]byte, n)
		rng.Read(b)
		plan = append(plan, plannedWrite{Off: off, Len: n, Pos: len(blob), FUA: fua, Phase: phase})
		blob = append(blob, b...)
	}
	const bs = 4096
	// Phase 1 (then FLUSH): aligned 4 KiB blocks, a multi-block run,
	// 512-byte writes into fresh blocks and over phase-1 data.
	for b := int64(0); b < 200; b++ {
		add(1, b*bs, bs, false)
	}
	add(1, 300*bs, 16*bs, false)
	for i := int64(0); i < 100; i++ {
		add(1, (400+i)*bs+512*(i%8), 512, false)
	}
	for i := int64(0); i < 50; i++ {
		add(1, i*bs+512*((i+3)%8), 512, false)
	}
	add(1, 600*bs+1536, 8*bs, false) // 512-aligned, spans 9 blocks
	// Phase 2 (no flush): every block touched at most once in this phase,
	// so each block is either its phase-1 or its phase-2 content.
	for b := int64(100); b < 150; b++ {
		add(2, b*bs, bs, false) // overwrite flushed data
	}
	for i := int64(0); i < 30; i++ {
		add(2, (150+i)*bs+512*(i%8), 512, false) // partial overwrite of flushed data
	}
	for b := int64(1000); b < 1100; b++ {
		add(2, b*bs, bs, false) // fresh blocks
	}
	fuaStart := int64(2000)
	add(2, fuaStart*bs, 2*bs, true)           // FUA, aligned
	add(2, (fuaStart+10)*bs+1024, 1024, true) // FUA, unaligned
	add(2, (fuaStart+20)*bs, bs, true)        // FUA over nothing else pending
	for b := int64(2100); b < 2150; b++ {
		add(2, b*bs, bs, false) // more unflushed writes after the FUA ones
	}

	// The images the volume may hold: after phase 1 (old) and after phase 2 (new).
	old := make([]byte, volSize)
	for _, w := range plan {
		if w.Phase == 1 {
			copy(old[w.Off:], blob[w.Pos:w.Pos+w.Len])
		}
	}
	cur := bytes.Clone(old)
	fuaBlocks := map[int64]bool{}
	for _, w := range plan {
		if w.Phase == 2 {
			copy(cur[w.Off:], blob[w.Pos:w.Pos+w.Len])
			if w.FUA {
				for b := w.Off / bs; b <= (w.Off+int64(w.Len)-1)/bs; b++ {
					fuaBlocks[b] = true
				}
			}
		}
	}

	work := t.TempDir()
	planPath := filepath.Join(work, "plan.json")
	pj, _ := json.Marshal(plan)
	if err := os.WriteFile(planPath, pj, 0o644); err != nil {
		t.Fatal(err)
	}
	blobPath := filepath.Join(work, "blob")
	if err := os.WriteFile(blobPath, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	writer := writePy(t, work, "writer.py", kill9Writer)
	reader := writePy(t, work, "reader.py", nbdReader)

	// Volume operations done before the crash stay done: a deleted and
	// re-created volume starts empty, data cut by a forced shrink is gone.
	_, qerr := exec.LookPath("qemu-io")
	haveQemu := qerr == nil
	if haveQemu {
		s.createVolume("gone", "16MiB")
		mustQemuIO(t, s.uri("gone"), "write -P 0x44 0 1M")
		s.mustCLI("volume", "delete", "gone")
		s.createVolume("gone", "16MiB")
		s.createVolume("shr", "16MiB")
		mustQemuIO(t, s.uri("shr"), "write -P 0x45 12M 1M", "write -P 0x46 1M 1M")
		s.mustCLI("volume", "resize", "shr", "--size", "8MiB", "--force")
		s.mustCLI("volume", "resize", "shr", "--size", "16MiB")
	}

	w := startBG(t, python3, writer, planPath, blobPath, s.uri("crash"))
	if err := w.waitOutput("READY", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	// The connection is still open, phase-2 writes unflushed: crash.
	s.kill9()
	w.kill()
	for _, sock := range []string{s.sock(), filepath.Join(s.dir, "control.sock")} {
		st, err := os.Lstat(sock)
		if err != nil || st.Mode()&fs.ModeSocket == 0 {
			t.Errorf("after kill -9, %s: %v %v (want the stale socket left behind)", sock, st, err)
		}
	}
	s.start() // must replace the stale sockets

	readBack := func() []byte {
		t.Helper()
		out := filepath.Join(work, "read.img")
		mustRunTimeout(t, time.Minute, python3, reader, s.uri("crash"), out)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != volSize {
			t.Fatalf("read back %d bytes, want %d", len(got), volSize)
		}
		return got
	}
	check := func(got []byte) {
		t.Helper()
		var bad, newer int
		for b := int64(0); b < volSize/bs; b++ {
			g, o, n := got[b*bs:(b+1)*bs], old[b*bs:(b+1)*bs], cur[b*bs:(b+1)*bs]
			switch {
			case fuaBlocks[b]:
				if !bytes.Equal(g, n) {
					t.Errorf("block %d (FUA write): not the FUA data after kill -9 (first diff at byte %d)", b, firstDiff(g, n))
					bad++
				}
			case bytes.Equal(g, o):
			case bytes.Equal(g, n):
				newer++
			default:
				t.Errorf("block %d: neither the flushed nor the unflushed content (diff from flushed at byte %d)", b, firstDiff(g, o))
				bad++
			}
			if bad > 20 {
				t.Fatal("too many bad blocks")
			}
		}
		t.Logf("%d blocks hold unflushed (phase-2) writes", newer)
	}
	got := readBack()
	check(got)
	if haveQemu {
		vols := map[string]volJSON{}
		var vs []volJSON
		if err := json.Unmarshal([]byte(s.mustCLI("volume", "list", "--json")), &vs); err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			vols[v.Name] = v
		}
		if v := vols["gone"]; v.Name == "" || v.Written != 0 {
			t.Errorf("after kill -9: re-created volume gone is %+v, want present with written 0", v)
		}
		if v := vols["shr"]; v.Size != 16<<20 || v.Written != 1<<20 {
			t.Errorf("after kill -9: shrunk and regrown volume shr is %+v, want size 16 MiB, written 1 MiB", v)
		}
		mustQemuIO(t, s.uri("gone"), "read -P 0 0 1M")
		mustQemuIO(t, s.uri("shr"), "read -P 0 12M 1M", "read -P 0x46 1M 1M")
	}

	// What recovery found is stable: a clean restart reads the same.
	s.restart()
	if again := readBack(); !bytes.Equal(again, got) {
		t.Errorf("after a clean restart the volume changed (first diff at byte %d)", firstDiff(again, got))
	}

	// kill -9 in the middle of heavy writes (a torn journal tail): the
	// server comes back and the other volume is untouched.
	if _, err := exec.LookPath("fio"); err == nil {
		s.createVolume("busy", "64MiB")
		f := startBG(t, "fio", "--name=busy", "--ioengine=nbd", "--uri="+s.uri("busy"), "--rw=randwrite",
			"--bs=64k", "--iodepth=32", "--numjobs=2", "--size=32M", "--offset_increment=32M",
			"--time_based", "--runtime=60", "--fsync=8", "--directory="+work)
		time.Sleep(1500 * time.Millisecond)
		if f.exited() {
			t.Fatalf("fio stopped before the crash:\n%s", f.output())
		}
		s.kill9()
		f.kill()
		s.start()
		if again := readBack(); !bytes.Equal(again, got) {
			t.Errorf("after kill -9 under load on another volume, volume crash changed (first diff at byte %d)", firstDiff(again, got))
		}
		if v := s.volumes()["busy"]; v.Size != 64<<20 {
			t.Errorf("after kill -9 under load: volume busy is %+v", v)
		}
	}
}
