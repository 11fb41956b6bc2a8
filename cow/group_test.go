package cow

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/strata-storage/strata/cdp"
)

// TestGroupCommit: concurrent whole-block writes go through group commit
// (groups of several records form), each writer's newest data reads back,
// and the written count, which a group computes for blocks its earlier
// records wrote before the head map shows them, is exact, live and after
// recovery.
func TestGroupCommit(t *testing.T) {
	var groups, grouped atomic.Int64
	testHookGroup = func(n int) {
		groups.Add(1)
		if n > 1 {
			grouped.Add(int64(n))
		}
	}
	defer func() { testHookGroup = nil }()
	fs := vfs.NewMem()
	var logged bytes.Buffer
	var logMu sync.Mutex
	var p *Pool
	open := func() *Pool {
		p, err := Open(Options{Dir: "data", FS: fs, SegmentSize: 1 << 20, IndexMemTableSize: 256 << 10, CheckpointInterval: -1, CacheSize: 1 << 20,
			Logger: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	closed := func() {
		t.Helper()
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		logMu.Lock()
		defer logMu.Unlock()
		if strings.Contains(logged.String(), "could not be persisted") {
			// pebble reports a flush that wrote no table as an error.
			t.Errorf("a clean close did not persist the index: %s", logged.String())
		}
	}
	p = open()
	v := mustVol(t, p, "a", 8<<20)
	const writers, own, hot, rounds = 32, 8, 4, 40
	hotBase := uint64(writers * own)
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			buf := make([]byte, 2*bs)
			for i := 0; i < rounds; i++ {
				// Two blocks of its own (one record), then one hot block
				// every writer writes.
				b := uint64(g*own + (i*2)%own)
				for k := 0; k < 2; k++ {
					binary.LittleEndian.PutUint64(buf[k*bs:], uint64(g)<<32|uint64(i)<<8|uint64(k))
				}
				if _, err := v.WriteAt(buf, int64(b*bs)); err != nil {
					t.Error(err)
					return
				}
				if _, err := v.WriteAt(buf[:bs], int64((hotBase+uint64(i%hot))*bs)); err != nil {
					t.Error(err)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	if grouped.Load() == 0 {
		t.Fatalf("no group of more than one write formed in %d groups", groups.Load())
	}
	t.Logf("%d groups, %d writes in groups of more than one", groups.Load(), grouped.Load())
	check := func(when string) {
		t.Helper()
		info, err := p.VolumeInfo("a")
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(hotBase+hot) * bs; info.Written != want || info.Recounting {
			t.Errorf("%s: written %d bytes, want %d", when, info.Written, want)
		}
		got := make([]byte, bs)
		for g := 0; g < writers; g++ {
			for j := 0; j < own; j++ {
				b := uint64(g*own + j)
				// The last round that wrote block b: rounds are even/odd
				// pairs over own/2 slots.
				slot := j / 2
				last := -1
				for i := 0; i < rounds; i++ {
					if (i*2)%own == slot*2 {
						last = i
					}
				}
				want := make([]byte, bs)
				binary.LittleEndian.PutUint64(want, uint64(g)<<32|uint64(last)<<8|uint64(j%2))
				if _, err := v.ReadAt(got, int64(b*bs)); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: block %d holds %x, want %x", when, b, got[:8], want[:8])
				}
			}
		}
	}
	check("live")
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	v.Close()
	closed()
	p = open()
	waitRecount(t, p, "a")
	v, err := p.OpenVolume("a")
	if err != nil {
		t.Fatal(err)
	}
	check("after reopen")
	v.Close()
	closed()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// waitRecount waits for a background recount of name's written count.
func waitRecount(t *testing.T, p *Pool, name string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if info, err := p.VolumeInfo(name); err != nil || !info.Recounting {
			return
		}
	}
	t.Fatalf("%s: written count still recounting after 10 s", name)
}

// TestGroupCountsRepeatedBlocks: a group whose records write the same block
// twice counts it once (the head map shows neither before the commit), and
// a record for a deleted volume fails alone.
func TestGroupCountsRepeatedBlocks(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 1<<20)
	defer v.Close()
	gone := mustVol(t, p, "gone", 1<<20)
	gone.Close()
	if err := p.DeleteVolume("gone", false); err != nil {
		t.Fatal(err)
	}
	rec := func(h *Volume, block uint64, fill byte, blocks int) *groupWrite {
		data := bytes.Repeat([]byte{fill}, blocks*bs)
		return &groupWrite{v: h.v, r: cdp.Record{Kind: cdp.KindWrite, Volume: h.v.id, Offset: block * bs, Length: uint64(len(data)), Data: data, Meta: cdp.BlockChecksums(data)}}
	}
	ws := []*groupWrite{rec(v, 5, 1, 1), rec(v, 5, 2, 1), rec(gone, 0, 9, 1), rec(v, 4, 3, 3), rec(v, 6, 4, 1)}
	p.runGroup(ws)
	for i, w := range ws {
		if wantErr := i == 2; (w.err != nil) != wantErr {
			t.Fatalf("record %d: err %v, want an error: %v", i, w.err, wantErr)
		}
	}
	info, err := p.VolumeInfo("a")
	if err != nil {
		t.Fatal(err)
	}
	if info.Written != 3*bs {
		t.Fatalf("written %d bytes, want %d (blocks 4, 5, 6)", info.Written, 3*bs)
	}
	got := make([]byte, 3*bs)
	if _, err := v.ReadAt(got, 4*bs); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{3}, 2*bs), bytes.Repeat([]byte{4}, bs)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("blocks 4-6 read back wrong")
	}
}

// TestWriteBatch: a replica's batch of writes lands in order (a later
// write to a block wins), with unaligned and oversized writes among them,
// and the written count is exact.
func TestWriteBatch(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 32<<20)
	defer v.Close()
	var sizes []int
	testHookGroup = func(n int) { sizes = append(sizes, n) }
	defer func() { testHookGroup = nil }()
	fill := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	ws := []BlockWrite{
		{Off: 0, Data: fill(1, 2*bs)},
		{Off: bs, Data: fill(2, bs)},          // overwrites block 1 of the first
		{Off: 3*bs + 100, Data: fill(3, 200)}, // unaligned: WriteAt
		{Off: 16 * bs, Data: fill(4, 9<<20)},  // larger than a record: WriteAt
		{Off: 2 * bs, Data: fill(5, bs)},
		{Off: 2 * bs, Data: fill(6, bs)},
	}
	if err := v.WriteBatch(ws); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, v.Size())
	for _, w := range ws {
		copy(want[w.Off:], w.Data)
	}
	if got := readAll(t, v); !bytes.Equal(got, want) {
		t.Fatal("volume content differs from the writes applied in order")
	}
	info, _ := p.VolumeInfo("a")
	if blocks := int64(4 + (9<<20)/bs); info.Written != blocks*bs {
		t.Fatalf("written %d bytes, want %d", info.Written, blocks*bs)
	}
	if err := v.WriteBatch([]BlockWrite{{Off: v.Size(), Data: fill(7, bs)}}); err == nil {
		t.Fatal("a write past the end was taken")
	}
	if fmt.Sprint(sizes) != "[2 1 1 2]" {
		t.Fatalf("groups of %v records, want [2 1 1 2] (the large write goes through WriteAt as two records, the unaligned one outside groups)", sizes)
	}
}

// TestGroupPanicFreesQueue: a leader that panics (a bug) fails its group's
// writes and passes leadership on; later writes go through.
func TestGroupPanicFreesQueue(t *testing.T) {
	p := openPool(t, vfs.NewMem())
	defer p.Close()
	v := mustVol(t, p, "a", 1<<20)
	defer v.Close()
	var once atomic.Bool
	testHookGroup = func(int) {
		if once.CompareAndSwap(false, true) {
			panic("test: a bug in the write path")
		}
	}
	defer func() { testHookGroup = nil }()
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Error("the leader's panic was swallowed")
			}
		}()
		v.WriteAt(make([]byte, bs), 0)
	}()
	done := make(chan error, 1)
	go func() {
		_, err := v.WriteAt(bytes.Repeat([]byte{1}, bs), bs)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write after the panic hangs: the queue was left with a leader")
	}
}
