package cow

import "sync"

// locCache remembers where the head's newest version of a block is, so hot
// small reads skip the index (an iterator and a seek through the LSM). An
// entry carries the stamps current before its lookup: the volume's change
// counter and the pool's relocation counter. It is used only while both are
// unchanged; writers bump the counters after their index commit, so a
// reader that sees the new stamp also sees the new index. Writes to a
// volume therefore retire all of its entries at once: this serves read-mostly
// volumes, which is where lookups dominate. Bounded: entries are evicted at
// random when a shard is full.
type locCache struct {
	shards   [64]locShard
	perShard int
}

type locShard struct {
	mu sync.Mutex
	m  map[locKey]locEntry
}

type locKey struct{ vol, block uint64 }

type locEntry struct {
	e              entry
	changes, moves uint64
}

func newLocCache(entries int) *locCache {
	if entries <= 0 {
		return nil
	}
	c := &locCache{perShard: max(entries/64, 16)}
	for i := range c.shards {
		c.shards[i].m = make(map[locKey]locEntry)
	}
	return c
}

func (c *locCache) shard(k locKey) *locShard {
	h := k.vol*0x9E3779B97F4A7C15 ^ k.block*0xBF58476D1CE4E5B9
	return &c.shards[(h^h>>29)%uint64(len(c.shards))]
}

func (c *locCache) get(k locKey, changes, moves uint64) (entry, bool) {
	if c == nil {
		return entry{}, false
	}
	s := c.shard(k)
	s.mu.Lock()
	le, ok := s.m[k]
	s.mu.Unlock()
	if !ok || le.changes != changes || le.moves != moves {
		return entry{}, false
	}
	return le.e, true
}

func (c *locCache) put(k locKey, e entry, changes, moves uint64) {
	if c == nil {
		return
	}
	s := c.shard(k)
	s.mu.Lock()
	if len(s.m) >= c.perShard {
		for old := range s.m { // random eviction
			delete(s.m, old)
			break
		}
	}
	s.m[k] = locEntry{e: e, changes: changes, moves: moves}
	s.mu.Unlock()
}

// stamps returns the counters a lookup of v's head must carry.
func (p *Pool) stamps(v *volState) (uint64, uint64) {
	return v.changes.Load(), p.moves.Load()
}
