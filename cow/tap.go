package cow

import (
	"bytes"
	"context"
	"sync"

	"github.com/strata-storage/strata/cdp"
)

// A Tap hands a volume's changes to the one reader that follows them (a
// synchronous mirror's stream) from memory, as they are applied, instead
// of that reader finding them again in the journal: reading each record
// back (listing the segments, reading and checking the header, copying
// the data out of the tail, checking it again) was about 15% of a mirror
// primary's CPU with 4 KiB writes.
//
// The tap holds every change of the volume applied after its start point,
// in order, a write with a copy of its data, up to a memory limit. Its
// ChangesInto serves a range from memory when the tap holds all of it, and
// reads the journal otherwise (the reader was behind the start point, or
// the tap overflowed because the reader fell behind); after an overflow
// the tap starts again from the pool's point then. What a reader gets is
// the same either way (TestTapMatchesJournal).
//
// Changes are added under the pool's write lock as each record is
// applied, before the pool's point moves past it, so a range that ends at
// AppliedSeq is complete in the tap once that point is read.
type Tap struct {
	p     *Pool
	v     *volState
	alloc func(n int) []byte
	limit int

	mu struct {
		sync.Mutex
		from    uint64   // the tap holds every change after this point
		changes []Change // after from, in order
		bytes   int      // data bytes in changes
		broken  bool     // a change was left out: the journal must serve
		served  int      // ranges served from memory (Served)
	}
}

// DefaultTapBytes is a tap's memory limit for write data when OpenTap is
// given none: a mirror in sync drains its tap at every batch, so this is
// only reached by a stream that fell behind.
const DefaultTapBytes = 16 << 20

// OpenTap starts a tap on volume vol at the pool's current point. Write
// data is copied into buffers from alloc, which the reader may keep (as
// with ChangesInto). limit bounds the data held (<= 0: DefaultTapBytes).
// A volume has at most one tap: OpenTap returns nil, and no error, when
// it already has one. Close the tap when done with it.
func (p *Pool) OpenTap(vol string, alloc func(n int) []byte, limit int) (*Tap, error) {
	if limit <= 0 {
		limit = DefaultTapBytes
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	v := p.lookup(vol)
	if v == nil {
		return nil, notFound(vol)
	}
	if v.tap != nil {
		return nil, nil
	}
	t := &Tap{p: p, v: v, alloc: alloc, limit: limit}
	t.mu.from = p.wmu.applied
	v.tap = t
	return t, nil
}

// Close detaches the tap from its volume and drops what it holds.
func (t *Tap) Close() {
	t.p.wmu.Lock()
	if t.v.tap == t {
		t.v.tap = nil
	}
	t.p.wmu.Unlock()
	t.mu.Lock()
	t.mu.changes, t.mu.bytes, t.mu.broken = nil, 0, true
	t.mu.Unlock()
}

// addLocked adds the change that record r, of the tap's volume, makes;
// wmu is held.
func (t *Tap) addLocked(r *cdp.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.broken {
		return
	}
	c, report, err := changeOf(r, t.v.name)
	if err != nil {
		// A delete (or a snapshot name the journal path would refuse
		// too): the journal tells the reader.
		t.breakLocked()
		return
	}
	if !report {
		return
	}
	if r.Kind == cdp.KindWrite {
		if t.mu.bytes+len(r.Data) > t.limit {
			t.breakLocked()
			return
		}
		c.Data = t.alloc(len(r.Data))
		copy(c.Data, r.Data)
		c.Sums = bytes.Clone(r.Meta)
		t.mu.bytes += len(r.Data)
	}
	t.mu.changes = append(t.mu.changes, c)
}

// breakLocked drops what the tap holds: from now on the journal serves.
// t.mu is held.
func (t *Tap) breakLocked() {
	clear(t.mu.changes)
	t.mu.changes, t.mu.bytes, t.mu.broken = t.mu.changes[:0], 0, true
}

// take removes the changes up to upto and returns those after after, if
// the tap holds every change in (after, upto].
func (t *Tap) take(after, upto uint64) ([]Change, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.broken || t.mu.from > after || t.v.gone.Load() {
		return nil, false
	}
	n, skip := 0, 0
	for n < len(t.mu.changes) && t.mu.changes[n].Seq <= upto {
		if t.mu.changes[n].Seq <= after {
			skip++
		}
		t.mu.bytes -= len(t.mu.changes[n].Data)
		n++
	}
	out := make([]Change, n-skip)
	copy(out, t.mu.changes[skip:n])
	rest := copy(t.mu.changes, t.mu.changes[n:])
	clear(t.mu.changes[rest:])
	t.mu.changes = t.mu.changes[:rest]
	t.mu.from = max(t.mu.from, upto)
	t.mu.served++
	return out, true
}

// restart makes a broken tap start again at the pool's point.
func (t *Tap) restart() {
	t.p.wmu.Lock()
	defer t.p.wmu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.broken && t.v.tap == t && !t.v.gone.Load() {
		t.mu.from, t.mu.broken = t.p.wmu.applied, false
	}
}

// ChangesInto is Pool.ChangesInto for the tap's volume: from the tap's
// memory when it holds every change in (after, upto], from the journal
// otherwise. The cursor only serves journal reads: a range served from
// memory resets it.
func (t *Tap) ChangesInto(ctx context.Context, after, upto uint64, cur *Cursor, fn func(c *Change) error) error {
	if upto <= after {
		return nil
	}
	if cs, ok := t.take(after, upto); ok {
		if cur != nil {
			*cur = Cursor{}
		}
		for i := range cs {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(&cs[i]); err != nil {
				return err
			}
		}
		return nil
	}
	t.mu.Lock()
	broken := t.mu.broken
	t.mu.Unlock()
	if broken {
		t.restart()
	}
	return t.p.ChangesInto(ctx, t.v.name, after, upto, cur, t.alloc, fn)
}

// Served says how many ranges the tap served from memory (the others
// came from the journal).
func (t *Tap) Served() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.served
}
