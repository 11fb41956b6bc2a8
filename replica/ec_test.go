package replica

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// copyShards copies shards, so that a test can damage one set and keep
// the other.
func copyShards(shards [][]byte) [][]byte {
	c := make([][]byte, len(shards))
	for i, s := range shards {
		c[i] = bytes.Clone(s)
	}
	return c
}

// subsets calls f with every set of exactly k of n indices.
func subsets(n, k int, f func([]int)) {
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == k {
			f(cur)
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
}

func TestECRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	codings := [][2]int{{1, 1}, {2, 1}, {3, 2}, {4, 2}, {6, 3}}
	sizes := []int{0, 1, 2, 3, 7, 4095, 4097, 65537, 1<<20 + 13}
	for _, km := range codings {
		c, err := newEC(km[0], km[1])
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range sizes {
			obj := randBytes(r, n)
			shards, err := c.Split(obj)
			if err != nil {
				t.Fatalf("%d+%d size %d: split: %v", km[0], km[1], n, err)
			}
			if len(shards) != km[0]+km[1] {
				t.Fatalf("%d+%d: %d shards", km[0], km[1], len(shards))
			}
			crc := crc32.Checksum(obj, castagnoli)
			got, bad, err := c.Join(copyShards(shards), int64(n), crc)
			if err != nil || !bytes.Equal(got, obj) {
				t.Fatalf("%d+%d size %d: join: %v (bad %v)", km[0], km[1], n, err, bad)
			}
			// Losing any M shards loses nothing.
			subsets(len(shards), km[1], func(lost []int) {
				s := copyShards(shards)
				for _, i := range lost {
					s[i] = nil
				}
				got, _, err := c.Join(s, int64(n), crc)
				if err != nil || !bytes.Equal(got, obj) {
					t.Fatalf("%d+%d size %d, lost %v: %v", km[0], km[1], n, lost, err)
				}
			})
			// Losing M+1 is a clear ErrCorrupt.
			s := copyShards(shards)
			for i := 0; i <= km[1]; i++ {
				s[i] = nil
			}
			if _, _, err := c.Join(s, int64(n), crc); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%d+%d size %d, lost %d shards: got %v, want ErrCorrupt", km[0], km[1], n, km[1]+1, err)
			}
		}
	}
}

func TestECLarge(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	obj := randBytes(r, 64<<20)
	crc := crc32.Checksum(obj, castagnoli)
	c, err := newEC(2, 1)
	if err != nil {
		t.Fatal(err)
	}
	shards, err := c.Split(obj)
	if err != nil {
		t.Fatal(err)
	}
	for lost := range shards {
		s := make([][]byte, len(shards))
		copy(s, shards)
		s[lost] = nil
		got, _, err := c.Join(s, int64(len(obj)), crc)
		if err != nil || !bytes.Equal(got, obj) {
			t.Fatalf("lost shard %d: %v", lost, err)
		}
	}
}

// TestECDamage: a shard that is damaged anywhere, truncated, from another
// object, or in the wrong place is not used, and is reported.
func TestECDamage(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	c, err := newEC(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	obj := randBytes(r, 100003)
	crc := crc32.Checksum(obj, castagnoli)
	shards, err := c.Split(obj)
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.Split(randBytes(r, 100003))
	if err != nil {
		t.Fatal(err)
	}
	damages := map[string]func(s [][]byte){
		"payload byte":  func(s [][]byte) { s[1][shardHeaderLen+500] ^= 1 },
		"header length": func(s [][]byte) { s[1][9] ^= 1 },
		"header crc":    func(s [][]byte) { s[1][17] ^= 0x80 },
		"magic":         func(s [][]byte) { s[1][0] = 'X' },
		"truncated":     func(s [][]byte) { s[1] = s[1][:len(s[1])-1] },
		"short":         func(s [][]byte) { s[1] = s[1][:10] },
		"other object":  func(s [][]byte) { s[1] = other[1] },
		"swapped":       func(s [][]byte) { s[1], s[2] = s[2], s[1] },
	}
	for name, damage := range damages {
		s := copyShards(shards)
		damage(s)
		got, bad, err := c.Join(s, int64(len(obj)), crc)
		if err != nil || !bytes.Equal(got, obj) {
			t.Fatalf("%s: %v", name, err)
		}
		if bad[1] == nil {
			t.Fatalf("%s: damaged shard not reported", name)
		}
		// With M shards already gone, the damaged one is one too many.
		s[3], s[4] = nil, nil
		if _, bad, err := c.Join(s, int64(len(obj)), crc); !errors.Is(err, ErrCorrupt) || bad[1] == nil {
			t.Fatalf("%s with 2 lost: got %v (bad %v), want ErrCorrupt naming shard 1", name, err, bad)
		}
	}
}

func TestECBadCoding(t *testing.T) {
	for _, km := range [][2]int{{0, 1}, {1, 0}, {200, 57}, {-1, 2}} {
		if _, err := newEC(km[0], km[1]); err == nil {
			t.Errorf("newEC(%d, %d) accepted", km[0], km[1])
		}
	}
}
