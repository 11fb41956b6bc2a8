package cow

import (
	"encoding/json"

	"fmt"
	"github.com/strata-storage/strata/cdp"
	"sort"
	"time"
)

// A volume's history is a list of generations. The first starts at the
// volume's create (or clone) record; every rollback starts another. A
// generation's own block versions are those written after it started; for
// any other block it shows its base: a point (volume, sequence) that is
// empty for a new volume, the source point for a clone, and the volume's own
// earlier point for a rollback. Nothing is ever overwritten, so every older
// point still reads as it did: a rollback destroys nothing and can itself be
// undone by rolling forward to a point after it.
type gen struct {
	Start   uint64 `json:"start"`
	BaseVol uint64 `json:"base_vol,omitempty"` // 0: no base (zeros)
	BaseSeq uint64 `json:"base_seq,omitempty"`
}

// sizeChange records the volume's size from a sequence number on.
type sizeChange struct {
	Seq  uint64 `json:"seq"`
	Size int64  `json:"size"`
}

// Snapshot is a named point of a volume.
type Snapshot struct {
	Name  string    `json:"name"`
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Label string    `json:"label,omitempty"`
	// Scheduled: a schedule took it, and its thinning may delete it;
	// snapshots taken by hand (Scheduled false) are never pruned.
	Scheduled bool `json:"scheduled,omitempty"`
	// AppConsistent: taken while the application or guest was frozen;
	// otherwise crash-consistent (what a power cut would have left).
	AppConsistent bool `json:"app_consistent,omitempty"`
}

// SnapshotOptions are what a snapshot records besides its name.
type SnapshotOptions struct {
	Label         string
	Scheduled     bool
	AppConsistent bool
}

func (o SnapshotOptions) flags() uint8 {
	var f uint8
	if o.Scheduled {
		f |= cdp.FlagSnapScheduled
	}
	if o.AppConsistent {
		f |= cdp.FlagSnapAppConsistent
	}
	return f
}

// volMeta is the part of a volume's metadata that changes rarely; it is
// stored as JSON under 'x' vol.
type volMeta struct {
	Gens      []gen        `json:"gens"`
	Sizes     []sizeChange `json:"sizes"`
	Snapshots []Snapshot   `json:"snapshots,omitempty"`
	// Retention overrides the pool's time retention for this volume (0: the
	// pool's).
	Retention time.Duration `json:"retention,omitempty"`
	// ReadOnly: the head is served read-only (writes get EPERM).
	ReadOnly bool `json:"read_only,omitempty"`
	// WrittenStale: the written counter is being recounted (after a clone or
	// rollback, which change a head in O(1) and leave the count to later).
	WrittenStale bool `json:"written_stale,omitempty"`
	// Floor: garbage collection may have removed what points older than
	// this showed; they no longer open (snapshots excepted).
	Floor uint64 `json:"floor,omitempty"`
	// Replica: the volume is (or was, if promoted) a replica.
	Replica *ReplicaState `json:"replica,omitempty"`
}

func metaKey(vol uint64) []byte { return volumeKey('x', vol) }

func (m *volMeta) encode() []byte {
	b, _ := json.Marshal(m)
	return b
}

func decodeMeta(vol uint64, b []byte) (volMeta, error) {
	var m volMeta
	if err := json.Unmarshal(b, &m); err != nil || len(m.Gens) == 0 {
		return volMeta{}, fmt.Errorf("cow: malformed lineage of volume %d", vol)
	}
	return m, nil
}

// genAt returns the generation that point seq belongs to.
func genAt(gens []gen, seq uint64) gen {
	i := sort.Search(len(gens), func(i int) bool { return gens[i].Start > seq })
	if i == 0 {
		return gens[0]
	}
	return gens[i-1]
}

// sizeAt returns the volume's size at point seq.
func (m *volMeta) sizeAt(seq uint64) int64 {
	i := sort.Search(len(m.Sizes), func(i int) bool { return m.Sizes[i].Seq > seq })
	if i == 0 {
		return m.Sizes[0].Size
	}
	return m.Sizes[i-1].Size
}

func (v *volState) loadGens() []gen { return *v.gens.Load() }

func (v *volState) setGens(g []gen) {
	c := append([]gen(nil), g...)
	v.gens.Store(&c)
}

// maxChain bounds how many bases a lookup follows (rollbacks and clones of
// clones); a longer chain means corrupt metadata.
const maxChain = 4096

// resolve calls fn, in block order, for every block in [first, last] of v
// that has content as of seq (Head for now): its own version in the
// generation seq falls in, or else what the generation's base shows,
// recursively. Blocks without content read as zeros and are not reported.
// fn returning false stops the walk.
func (p *Pool) resolve(r reader, v *volState, first, last, seq uint64, fn func(block uint64, e entry) bool) error {
	g := genAt(v.loadGens(), seq)
	if g.BaseVol == 0 {
		// One level: the common case, in order, no bookkeeping.
		return visit(r, v.id, first, last, seq, func(b uint64, e entry) bool {
			if e.seq <= g.Start {
				return true
			}
			return fn(b, e)
		})
	}
	type found struct {
		b uint64
		e entry
	}
	var out []found
	n := last - first + 1
	done := make([]uint64, (n+63)/64)
	left := n
	cur, s := v, seq
	for depth := 0; ; depth++ {
		if depth > maxChain {
			return fmt.Errorf("cow: volume %d: chain of bases longer than %d", v.id, maxChain)
		}
		cg := genAt(cur.loadGens(), s)
		err := visit(r, cur.id, first, last, s, func(b uint64, e entry) bool {
			i := b - first
			if e.seq <= cg.Start || done[i/64]&(1<<(i%64)) != 0 {
				return true
			}
			done[i/64] |= 1 << (i % 64)
			left--
			out = append(out, found{b, e})
			return true
		})
		if err != nil {
			return err
		}
		if cg.BaseVol == 0 || left == 0 {
			break
		}
		next := p.volumeAny(cg.BaseVol)
		if next == nil {
			return fmt.Errorf("cow: volume %d: base volume %d is missing", cur.id, cg.BaseVol)
		}
		cur, s = next, cg.BaseSeq
	}
	sort.Slice(out, func(a, b int) bool { return out[a].b < out[b].b })
	for _, f := range out {
		if !fn(f.b, f.e) {
			break
		}
	}
	return nil
}
