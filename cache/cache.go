// Package cache owns the read cache: journal blocks in memory, keyed by
// where they are in the journal. A journal location never changes meaning
// (records are never rewritten; garbage collection copies blocks to new
// locations and deletes old segments), so a cached block is never stale and
// nothing is ever invalidated. Memory is bounded by the configured size
// (P5), whatever the volumes' sizes.
package cache

import (
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
)

// BlockSize is the unit cached.
const BlockSize = 4096

// entryOverhead approximates the memory an entry costs beyond its data
// (ristretto's bookkeeping, the entry struct), so the bound holds.
const entryOverhead = 128

// Cache holds journal blocks. A nil *Cache is a disabled cache: Get misses,
// Put does nothing. Safe for concurrent use.
type Cache struct {
	c      *ristretto.Cache[uint64, *entry]
	max    int64
	hits   atomic.Uint64
	misses atomic.Uint64
}

// blockPool recycles entries that never entered the cache.
var blockPool sync.Pool

type entry struct {
	seg  uint64
	off  int64
	data []byte
}

// New returns a cache of at most size bytes, or nil (disabled) for 0.
func New(size int64) (*Cache, error) {
	if size <= 0 {
		return nil, nil
	}
	items := max(size/BlockSize, 16)
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		NumCounters: items * 10, // ristretto's advice: 10x the items
		MaxCost:     size,
		// Gets are counted for the admission policy in batches of this
		// many; each full batch wakes ristretto's policy goroutine. At
		// ristretto's suggested 64 those wakeups cost 4 KiB random reads
		// served from memory 6-17% (fio QD32, 2 cores: 147-157k against
		// 162-172k IOPS at 1024).
		BufferItems:        1024,
		Metrics:            true,
		IgnoreInternalCost: false,
		// A rejected entry never was visible to a reader: its buffer can be
		// reused. (An evicted one may still be being copied by a Get.)
		OnReject: func(it *ristretto.Item[*entry]) {
			if it.Value != nil {
				blockPool.Put(it.Value)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	return &Cache{c: c, max: size}, nil
}

func key(seg uint64, off int64) uint64 {
	// A mix of both; the entry keeps the location, so a collision is a
	// miss, never wrong data.
	k := seg*0x9E3779B97F4A7C15 ^ uint64(off)*0xBF58476D1CE4E5B9
	return k ^ k>>31
}

// Get copies the block at (seg, off) into dst (BlockSize bytes) if cached.
func (c *Cache) Get(seg uint64, off int64, dst []byte) bool {
	if c == nil {
		return false
	}
	e, ok := c.c.Get(key(seg, off))
	if !ok || e.seg != seg || e.off != off {
		c.misses.Add(1)
		return false
	}
	copy(dst, e.data)
	c.hits.Add(1)
	return true
}

// Put caches a copy of the block at (seg, off). The block must have been
// checked against its checksum: the cache trusts it from then on.
func (c *Cache) Put(seg uint64, off int64, block []byte) {
	if c == nil {
		return
	}
	e, _ := blockPool.Get().(*entry)
	if e == nil {
		e = &entry{data: make([]byte, BlockSize)}
	}
	e.seg, e.off = seg, off
	copy(e.data, block)
	if !c.c.Set(key(seg, off), e, BlockSize+entryOverhead) {
		blockPool.Put(e) // dropped at once: nobody saw it
	}
}

// Stats describe the cache.
type Stats struct {
	Enabled   bool    `json:"enabled"`
	MaxBytes  int64   `json:"max_bytes"`
	Bytes     int64   `json:"bytes"`
	Hits      uint64  `json:"hits"`
	Misses    uint64  `json:"misses"`
	HitRatio  float64 `json:"hit_ratio"`
	Evictions uint64  `json:"evictions"`
	Dropped   uint64  `json:"dropped"` // sets ristretto dropped under contention
	// Recent writes kept in the journal's memory (package cdp's tail),
	// the other part of the read cache; Bytes, Hits and HitRatio count
	// them too.
	RecentBytes int64  `json:"recent_bytes"`
	RecentHits  uint64 `json:"recent_hits"`
}

// AddRecent folds the journal's memory of recent writes into s: max is
// the whole read cache's size.
func (s *Stats) AddRecent(max, bytes int64, hits uint64) {
	s.Enabled = s.Enabled || max > 0
	s.MaxBytes = max
	s.RecentBytes, s.RecentHits = bytes, hits
	s.Bytes += bytes
	s.Hits += hits
	s.HitRatio = 0
	if s.Hits+s.Misses > 0 {
		s.HitRatio = float64(s.Hits) / float64(s.Hits+s.Misses)
	}
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	m := c.c.Metrics
	h, mi := c.hits.Load(), c.misses.Load()
	st := Stats{Enabled: true, MaxBytes: c.max, Hits: h, Misses: mi,
		Bytes: int64(m.CostAdded() - m.CostEvicted()), Evictions: m.KeysEvicted(), Dropped: m.SetsDropped() + m.SetsRejected()}
	if h+mi > 0 {
		st.HitRatio = float64(h) / float64(h+mi)
	}
	return st
}

// Close releases the cache.
func (c *Cache) Close() {
	if c != nil {
		c.c.Close()
	}
}

// Wait blocks until buffered Puts are applied (for tests).
func (c *Cache) Wait() {
	if c != nil {
		c.c.Wait()
	}
}
