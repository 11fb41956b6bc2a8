package cow

import (
	"bytes"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/blockdev"
)

// TestFullDisk: on a filesystem that fills up, writes fail with ErrNoSpace
// (nothing else breaks), the pool closes (pebble's index flush fails and
// would be retried forever), and after the disk grows every flushed write
// reads back and writes work again.
func TestFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	defer exec.Command("umount", dir).Run()
	opts := Options{Dir: dir + "/pool", FS: vfs.Default, SegmentSize: 2 << 20, IndexMemTableSize: 4 << 20, CheckpointInterval: -1, GCInterval: -1}
	p, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVol(t, p, "a", 64<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]byte, 64<<20)
	buf := make([]byte, 64<<10)
	var full error
	off := int64(0)
	for ; off < int64(len(want)); off += int64(len(buf)) {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := v.WriteAt(buf, off); err != nil {
			full = err
			break
		}
		if err := v.Flush(); err != nil {
			full = err
			break
		}
		copy(want[off:], buf)
	}
	if !errors.Is(full, blockdev.ErrNoSpace) {
		t.Fatalf("filling the disk: got %v after %d MiB, want ErrNoSpace", full, off>>20)
	}
	t.Logf("full after %d MiB: %v", off>>20, full)
	if free, err := p.FreeBytes(); err != nil || free > 1<<20 {
		t.Fatalf("free space: %d, %v", free, err)
	}
	v.Close()
	if err := p.Close(); err != nil {
		t.Logf("close on a full disk: %v", err)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=128m", dir).CombinedOutput(); err != nil {
		t.Fatalf("grow the tmpfs: %v: %s", err, out)
	}
	p, v = reopen(t, opts, "a")
	defer p.Close()
	defer v.Close()
	if got := readAll(t, v); !bytes.Equal(got[:off], want[:off]) {
		t.Fatal("flushed writes differ after reopening")
	}
	if _, err := v.WriteAt(buf, off); err != nil {
		t.Fatalf("write after the disk grew: %v", err)
	}
}

// sstFullFS fails the creation of index tables while full is set: the
// index cannot flush, the journal still works.
type sstFullFS struct {
	vfs.FS
	full *atomic.Bool
}

func (f sstFullFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	if f.full.Load() && strings.HasSuffix(name, ".sst") {
		return nil, syscall.ENOSPC
	}
	return f.FS.Create(name, c)
}

// TestCloseWhileIndexFlushFails: the index's memtables have grown to full
// size and a flush keeps failing (no room for tables): Close must still
// return (pebble's AsyncFlush would wait forever behind the failing
// flush), and the next open re-indexes every record from the journal.
func TestCloseWhileIndexFlushFails(t *testing.T) {
	var full atomic.Bool
	opts := Options{Dir: "data", FS: sstFullFS{vfs.NewMem(), &full}, SegmentSize: 8 << 20, IndexMemTableSize: 4 << 20,
		CheckpointInterval: -1, GCInterval: -1, CacheSize: 1 << 20}
	p, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVol(t, p, "a", 1<<30)
	// Allocated zeros give every block an index version: 256Ki entries a
	// pass, which grows the memtables to full size.
	zero := func() {
		t.Helper()
		if err := v.WriteZeroes(0, 1<<30, true); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		zero()
	}
	if _, err := v.WriteAt(bytes.Repeat([]byte{0xab}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	// Persist everything first, so the queue of memtables is known: empty.
	if err := p.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	// Every block holds allocated zeros now: a quarter of the volume made
	// holes, then zeros again, gives 64Ki new versions (about 3 MiB of
	// memtable) a pass. After the first pass a flush is asked for: it
	// fails, and the memtables grow to nearly the stop-writes threshold,
	// never past it (writes would stall).
	for i := 0; i < 2; i++ {
		if err := v.WriteZeroes(0, 256<<20, i%2 == 1); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if _, err := p.db.AsyncFlush(); err != nil {
				t.Fatal(err)
			}
			for k := 0; k < 500 && p.indexFlushFails.Load() == 0; k++ {
				time.Sleep(10 * time.Millisecond)
			}
			if p.indexFlushFails.Load() == 0 {
				t.Fatal("the index never tried to flush")
			}
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.Close()
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		t.Logf("close with a failing index flush: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("Close hangs while the index cannot flush")
	}
	full.Store(false)
	p, v = reopen(t, opts, "a")
	defer p.Close()
	defer v.Close()
	b := make([]byte, 4096)
	if _, err := v.ReadAt(b, 0); err != nil || !bytes.Equal(b, make([]byte, 4096)) {
		t.Fatalf("block 0 after reopening: %v, first byte %#x; want the zeros written last", err, b[0])
	}
}

// reopen opens the pool again and its volume vol.
func reopen(t *testing.T, opts Options, vol string) (*Pool, *Volume) {
	t.Helper()
	p, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	v, err := p.OpenVolume(vol)
	if err != nil {
		p.Close()
		t.Fatal(err)
	}
	return p, v
}

// TestPebbleLoggerRateLimit: a repeating index error is logged once per
// 10 s, and does not hide a different one.
func TestPebbleLoggerRateLimit(t *testing.T) {
	var buf bytes.Buffer
	l := &pebbleLogger{l: slog.New(slog.NewTextHandler(&buf, nil))}
	for i := 0; i < 100; i++ {
		l.Errorf("background error: %d", i)
	}
	l.Errorf("another error")
	out := buf.String()
	if n := strings.Count(out, "background error"); n != 1 || !strings.Contains(out, "another error") {
		t.Fatalf("logged:\n%s", out)
	}
}
