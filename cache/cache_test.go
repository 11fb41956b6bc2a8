package cache

import (
	"bytes"
	"runtime"
	"testing"
)

func TestGetPut(t *testing.T) {
	c, err := New(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := bytes.Repeat([]byte{7}, BlockSize)
	dst := make([]byte, BlockSize)
	if c.Get(1, 64, dst) {
		t.Fatal("hit on an empty cache")
	}
	c.Put(1, 64, b)
	c.Wait()
	if !c.Get(1, 64, dst) || !bytes.Equal(dst, b) {
		t.Fatal("miss or wrong data after put")
	}
	// Another location, even one that collides in the hash, is a miss.
	if c.Get(1, 64+BlockSize, dst) || c.Get(2, 64, dst) {
		t.Fatal("hit for another location")
	}
	// The cache keeps its own copy.
	b[0] = 9
	c.Get(1, 64, dst)
	if dst[0] != 7 {
		t.Fatal("cache shares the caller's buffer")
	}
	st := c.Stats()
	if !st.Enabled || st.Hits != 2 || st.Misses != 3 || st.MaxBytes != 1<<20 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDisabled(t *testing.T) {
	c, err := New(0)
	if err != nil || c != nil {
		t.Fatalf("New(0) = %v, %v; want a nil (disabled) cache", c, err)
	}
	c.Put(1, 2, make([]byte, BlockSize))
	if c.Get(1, 2, make([]byte, BlockSize)) {
		t.Fatal("a disabled cache hit")
	}
	if st := c.Stats(); st.Enabled {
		t.Fatal("disabled cache reports enabled")
	}
}

// The cache stays within its size whatever goes through it (P5).
func TestBounded(t *testing.T) {
	const size = 8 << 20
	c, _ := New(size)
	defer c.Close()
	b := make([]byte, BlockSize)
	for i := 0; i < 16*size/BlockSize; i++ { // 16x the size
		c.Put(uint64(i/1000), int64(i%1000)*BlockSize, b)
	}
	c.Wait()
	st := c.Stats()
	if st.Bytes > size {
		t.Fatalf("cache holds %d bytes, bound %d", st.Bytes, size)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc > 4*size {
		t.Fatalf("heap %d bytes after filling an %d-byte cache 16 times over", ms.HeapAlloc, size)
	}
	t.Logf("after 16x churn: %+v, heap %d MiB", st, ms.HeapAlloc>>20)
}
