package cow

import (
	"math/rand/v2"
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
