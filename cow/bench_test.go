package cow

import (
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func benchPool(b *testing.B, size int64) (*Pool, *Volume) {
	dir := b.TempDir()
	p, err := Open(Options{Dir: dir, FS: vfs.Default, CheckpointInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p, mustVol(b, p, "bench", size)
}

// BenchmarkWriteSeq1M: sequential 1 MiB writes (overwriting after the first pass).
func BenchmarkWriteSeq1M(b *testing.B) {
	const size = 256 << 20
	_, v := benchPool(b, size)
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.WriteAt(buf, int64(i)%(size>>20)<<20); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteRand4K(b *testing.B) {
	const size = 256 << 20
	_, v := benchPool(b, size)
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.WriteAt(buf, rand.Int64N(size/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadSeq1M(b *testing.B) {
	const size = 64 << 20
	_, v := benchPool(b, size)
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += 1 << 20 {
		v.WriteAt(buf, off)
	}
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.ReadAt(buf, int64(i)%(size>>20)<<20); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadRand4K(b *testing.B) {
	const size = 64 << 20
	_, v := benchPool(b, size)
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += 1 << 20 {
		v.WriteAt(buf, off)
	}
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := v.ReadAt(buf[:4096], rand.Int64N(size/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

// benchWritten returns a pool with one volume holding written bytes of data,
// shared across sub-benchmarks of the same size.
func benchWritten(b *testing.B, written int64) (*Pool, *Volume) {
	p, v := benchPool(b, max(written, 64<<20))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < written; off += int64(len(buf)) {
		buf[0]++
		if _, err := v.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	// Write the fill back now: its writeback would slow the fsyncs measured.
	if err := v.Flush(); err != nil {
		b.Fatal(err)
	}
	syscall.Sync()
	return p, v
}

var writtenSizes = []struct {
	name string
	n    int64
}{{"written=4MiB", 4 << 20}, {"written=4GiB", 4 << 30}}

// benchO1 runs op on a volume with 4 MiB and with 4 GiB written: P2 says
// the two must take about the same time. setup runs once per size.
func benchO1(b *testing.B, setup func(p *Pool, v *Volume), op func(p *Pool, i int) error) {
	for _, w := range writtenSizes {
		b.Run(w.name, func(b *testing.B) {
			if testing.Short() && w.n > 1<<30 {
				b.Skip("-short")
			}
			p, v := benchWritten(b, w.n)
			if setup != nil {
				setup(p, v)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := op(p, i); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSnapshotCreate: O(1) in data written (P2).
func BenchmarkSnapshotCreate(b *testing.B) {
	benchO1(b, nil, func(p *Pool, i int) error {
		_, err := p.CreateSnapshot("bench", "s"+strconv.Itoa(i), "")
		return err
	})
}

// BenchmarkClone: O(1) in data written (P2).
func BenchmarkClone(b *testing.B) {
	benchO1(b, nil, func(p *Pool, i int) error {
		_, err := p.Clone("bench", "seq:"+strconv.FormatUint(p.wmu.applied, 10), "c"+strconv.Itoa(i))
		return err
	})
}

// BenchmarkRollback: O(1) in data written (P2).
func BenchmarkRollback(b *testing.B) {
	benchO1(b, func(p *Pool, v *Volume) {
		v.Close()
		if _, err := p.CreateSnapshot("bench", "base", ""); err != nil {
			b.Fatal(err)
		}
	}, func(p *Pool, i int) error {
		_, err := p.Rollback("bench", "base", false)
		return err
	})
}

// BenchmarkWriteRand4KSnapshots: random 4 KiB writes with 0 and with 10
// snapshots taken during the run (goal: within 10%).
func BenchmarkWriteRand4KSnapshots(b *testing.B) {
	for _, snaps := range []int{0, 10} {
		b.Run("snapshots="+strconv.Itoa(snaps), func(b *testing.B) {
			const size = 256 << 20
			p, v := benchPool(b, size)
			buf := make([]byte, 4096)
			every := b.N/(snaps+1) + 1
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if snaps > 0 && i%every == every-1 {
					if _, err := p.CreateSnapshot("bench", "s"+strconv.Itoa(i), ""); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := v.WriteAt(buf, rand.Int64N(size/4096)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
