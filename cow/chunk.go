package cow

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/cockroachdb/pebble/v2"
	"github.com/strata-storage/strata/cdp"
)

// Chunk keys. A write record indexes every whole, aligned run of
// chunkBlocks blocks it carries with one key instead of one per block (a
// 1 MiB write: 16 keys, not 256), and only its unaligned edges block by
// block:
//
//	'c' vol(8) chunk(8) ^seq(8) -> entryData(1) segment(uvarint) offset(uvarint) crc(4 LE) x chunkBlocks
//
// where offset is the byte offset of the chunk's first block in the segment
// (the others follow it: a record's data is contiguous). The version of
// block B at point S is the newer of B's newest 'b' version at or before S
// and its chunk's newest 'c' version at or before S; at equal sequence
// numbers the 'b' key wins (it is the same version, moved: a relocation
// splits a chunk key into block keys). Holes and zeros stay block keys.
const (
	prefixChunk = 'c'
	chunkShift  = 4
	chunkBlocks = 1 << chunkShift
	chunkMask   = chunkBlocks - 1
)

// indexKey encodes a 'b' or 'c' key: prefix, volume, unit (block or
// chunk), ^seq.
func indexKey(dst []byte, prefix byte, vol, unit, seq uint64) []byte {
	dst = append(dst[:0], prefix)
	dst = binary.BigEndian.AppendUint64(dst, vol)
	dst = binary.BigEndian.AppendUint64(dst, unit)
	return binary.BigEndian.AppendUint64(dst, ^seq)
}

func decodeIndexKey(prefix byte, k []byte) (vol, unit, seq uint64, ok bool) {
	if len(k) != blockKeyLen || k[0] != prefix {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint64(k[9:]), ^binary.BigEndian.Uint64(k[17:]), true
}

func chunkKey(dst []byte, vol, chunk, seq uint64) []byte {
	return indexKey(dst, prefixChunk, vol, chunk, seq)
}

// chunkEntry is one 'c' value: chunkBlocks blocks of one write, in a row.
type chunkEntry struct {
	seq  uint64
	seg  uint64
	off  int64 // the chunk's first block
	crcs [chunkBlocks]uint32
}

// block is the version of the chunk's i-th block.
func (c *chunkEntry) block(i uint64) entry {
	return entry{kind: entryData, seq: c.seq, seg: c.seg, off: c.off + int64(i)*cdp.BlockSize, crc: c.crcs[i]}
}

func (c *chunkEntry) encode(dst []byte) []byte {
	dst = append(dst[:0], byte(entryData))
	dst = binary.AppendUvarint(dst, c.seg)
	dst = binary.AppendUvarint(dst, uint64(c.off))
	for _, crc := range c.crcs {
		dst = binary.LittleEndian.AppendUint32(dst, crc)
	}
	return dst
}

func decodeChunkEntry(v []byte, seq uint64) (chunkEntry, error) {
	c := chunkEntry{seq: seq}
	if len(v) == 0 || entryKind(v[0]) != entryData {
		return c, errBadEntry
	}
	v = v[1:]
	seg, n := binary.Uvarint(v)
	if n <= 0 {
		return c, errBadEntry
	}
	v = v[n:]
	off, n := binary.Uvarint(v)
	if n <= 0 || len(v[n:]) != 4*chunkBlocks || off > math.MaxInt64 {
		return c, errBadEntry
	}
	v = v[n:]
	c.seg, c.off = seg, int64(off)
	for i := range c.crcs {
		c.crcs[i] = binary.LittleEndian.Uint32(v[4*i:])
	}
	return c, nil
}

// setWrite indexes the n blocks of write record r starting at block first:
// whole aligned chunks as chunk keys, the edges as block keys.
func (a *apply) setWrite(vol, first, n uint64, r *cdp.Record, loc cdp.Location) error {
	dataOff := loc.DataOffset(len(r.Meta))
	end := first + n
	for b := first; b < end; {
		i := b - first
		if b&chunkMask == 0 && end-b >= chunkBlocks {
			c := chunkEntry{seq: r.Seq, seg: loc.Segment, off: dataOff + int64(i)*cdp.BlockSize}
			for k := range c.crcs {
				c.crcs[k] = cdp.BlockChecksum(r.Meta, int(i)+k)
			}
			a.key = chunkKey(a.key, vol, b>>chunkShift, r.Seq)
			a.val = c.encode(a.val)
			if err := a.b.Set(a.key, a.val, nil); err != nil {
				return err
			}
			b += chunkBlocks
			continue
		}
		e := entry{kind: entryData, seq: r.Seq, seg: loc.Segment, off: dataOff + int64(i)*cdp.BlockSize, crc: cdp.BlockChecksum(r.Meta, int(i))}
		if err := a.set(vol, b, e); err != nil {
			return err
		}
		b++
	}
	return nil
}

// cursor walks the 'b' or 'c' keys of one volume over units [first, last]
// and yields each unit's newest version at or before seq.
type cursor struct {
	it       *pebble.Iterator
	prefix   byte
	vol      uint64
	last     uint64
	seq      uint64
	seek     []byte
	valid    bool
	unit     uint64 // the unit last yielded
	advance  bool   // move past unit before the next yield
	finished bool
}

func newCursor(r reader, prefix byte, vol, first, last, seq uint64) (*cursor, error) {
	lower := indexKey(nil, prefix, vol, first, Head)
	upper := indexKey(nil, prefix, vol, last+1, Head)
	if last == math.MaxUint64 {
		upper = volumeKey(prefix, vol+1)
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, fmt.Errorf("cow: index iterator: %w", err)
	}
	c := &cursor{it: it, prefix: prefix, vol: vol, last: last, seq: seq}
	c.seek = indexKey(nil, prefix, vol, first, seq)
	c.valid = it.SeekGE(c.seek)
	return c, nil
}

func (c *cursor) close() { c.it.Close() }

// next returns the next unit that has a version at or before the cursor's
// sequence, that version's sequence and its raw value (valid until the
// next call).
func (c *cursor) next() (unit, seq uint64, val []byte, ok bool, err error) {
	if c.advance {
		c.advance = false
		if c.unit >= c.last {
			c.finished = true
		} else {
			// Most units have one version: try the next key before seeking.
			c.valid = c.it.Next()
			if c.valid {
				if _, u, _, ok := decodeIndexKey(c.prefix, c.it.Key()); ok && u == c.unit {
					c.valid = c.it.SeekGE(indexKey(c.seek, c.prefix, c.vol, c.unit+1, c.seq))
				}
			}
		}
	}
	for c.valid && !c.finished {
		_, u, vseq, kok := decodeIndexKey(c.prefix, c.it.Key())
		if !kok {
			return 0, 0, nil, false, fmt.Errorf("%w: key %x", errBadEntry, c.it.Key())
		}
		if vseq > c.seq {
			// A version newer than asked: seek to this unit's first
			// version at or before seq.
			c.valid = c.it.SeekGE(indexKey(c.seek, c.prefix, c.vol, u, c.seq))
			continue
		}
		c.unit, c.advance = u, true
		return u, vseq, c.it.Value(), true, nil
	}
	return 0, 0, nil, false, c.it.Error()
}

// visit calls fn, in block order, for each block in [first, last] of vol
// that has a version at or before seq (Head for the newest), with that
// version: the newer of the block's own and its chunk's. Blocks with no
// such version are skipped: they read as zeros. fn returning false stops
// the walk. Cost is proportional to the versions present in the range, not
// to its size.
func visit(r reader, vol, first, last, seq uint64, fn func(block uint64, e entry) bool) error {
	bc, err := newCursor(r, prefixBlock, vol, first, last, seq)
	if err != nil {
		return err
	}
	defer bc.close()
	cc, err := newCursor(r, prefixChunk, vol, first>>chunkShift, last>>chunkShift, seq)
	if err != nil {
		return err
	}
	defer cc.close()
	var be entry
	bu, bs, bv, bok, err := bc.next()
	decodeB := func() error {
		if !bok {
			return err
		}
		var derr error
		if be, derr = decodeEntry(bv, bs); derr != nil {
			return fmt.Errorf("%w (volume %d block %d)", derr, vol, bu)
		}
		return nil
	}
	if err := decodeB(); err != nil {
		return err
	}
	nextB := func() error {
		bu, bs, bv, bok, err = bc.next()
		return decodeB()
	}
	for {
		cu, cs, cv, cok, err := cc.next()
		if err != nil {
			return err
		}
		lo, hi := uint64(math.MaxUint64), uint64(math.MaxUint64)
		if cok {
			lo, hi = max(cu<<chunkShift, first), min(cu<<chunkShift|chunkMask, last)
		}
		// Block versions before the chunk (or all that are left).
		for bok && bu < lo {
			if !fn(bu, be) {
				return nil
			}
			if err := nextB(); err != nil {
				return err
			}
		}
		if !cok {
			return nil
		}
		ce, derr := decodeChunkEntry(cv, cs)
		if derr != nil {
			return fmt.Errorf("%w (volume %d chunk %d)", derr, vol, cu)
		}
		for b := lo; ; b++ {
			e := ce.block(b & chunkMask)
			if bok && bu == b {
				if bs >= cs {
					e = be
				}
				if err := nextB(); err != nil {
					return err
				}
			}
			if !fn(b, e) {
				return nil
			}
			if b == hi {
				break
			}
		}
	}
}

// getter is what exact lookups run on: the DB or a snapshot.
type getter interface {
	Get(key []byte) ([]byte, io.Closer, error)
}

// getVersion returns version seq of (vol, block), from its block key or
// its chunk's key; ok is false when the index holds no such version.
func getVersion(r getter, vol, block, seq uint64) (e entry, ok bool, err error) {
	val, closer, err := r.Get(blockKey(nil, vol, block, seq))
	if err == nil {
		e, err = decodeEntry(val, seq)
		closer.Close()
		return e, err == nil, err
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return entry{}, false, err
	}
	val, closer, err = r.Get(chunkKey(nil, vol, block>>chunkShift, seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return entry{}, false, nil
	}
	if err != nil {
		return entry{}, false, err
	}
	ce, err := decodeChunkEntry(val, seq)
	closer.Close()
	if err != nil {
		return entry{}, false, err
	}
	return ce.block(block & chunkMask), true, nil
}

// blockVersions calls fn with every version of (vol, block), newest first,
// until fn returns false.
func blockVersions(r reader, vol, block uint64, fn func(e entry) bool) error {
	var err error
	scan := func(prefix byte, unit uint64) (*pebble.Iterator, bool) {
		it, ierr := r.NewIter(&pebble.IterOptions{LowerBound: indexKey(nil, prefix, vol, unit, Head), UpperBound: indexKey(nil, prefix, vol, unit, 0)})
		if ierr != nil {
			err = fmt.Errorf("cow: index iterator: %w", ierr)
			return nil, false
		}
		return it, it.First()
	}
	bi, bok := scan(prefixBlock, block)
	if bi == nil {
		return err
	}
	defer bi.Close()
	ci, cok := scan(prefixChunk, block>>chunkShift)
	if ci == nil {
		return err
	}
	defer ci.Close()
	for bok || cok {
		var bs, cs uint64
		if bok {
			_, _, bs, _ = decodeIndexKey(prefixBlock, bi.Key())
		}
		if cok {
			_, _, cs, _ = decodeIndexKey(prefixChunk, ci.Key())
		}
		var e entry
		var derr error
		switch {
		case bok && (!cok || bs >= cs):
			e, derr = decodeEntry(bi.Value(), bs)
			if cok && cs == bs {
				cok = ci.Next() // the same version, moved
			}
			bok = bi.Next()
		default:
			var ce chunkEntry
			ce, derr = decodeChunkEntry(ci.Value(), cs)
			e = ce.block(block & chunkMask)
			cok = ci.Next()
		}
		if derr != nil {
			return fmt.Errorf("%w (volume %d block %d)", derr, vol, block)
		}
		if !fn(e) {
			return nil
		}
	}
	return errors.Join(bi.Error(), ci.Error())
}

// versionScan is what scanVersions calls back.
type versionScan struct {
	// version is called for every block version, per block newest first,
	// with the sequence number of the block's next newer version (Head if
	// none). It returns whether the version is dead.
	version func(vol, block uint64, e entry, next uint64) (dead bool, err error)
	// dropBlock, if set, is called with the key of each dead block key.
	dropBlock func(key []byte) error
	// chunkDone, if set, is called for each chunk key once its blocks were
	// seen, with the mask of its blocks that are dead or moved (a block key
	// of the same sequence holds them).
	chunkDone func(key []byte, ce *chunkEntry, gone uint32) error
}

type scannedChunk struct {
	key  []byte
	ce   chunkEntry
	gone uint32
}

type scannedBlock struct {
	key []byte
	e   entry
}

// scanVersions walks every block version of volumes [fromVol, toVol) in the
// index (on snapshot r), in block order, per block newest first.
func scanVersions(r reader, fromVol, toVol uint64, s versionScan) error {
	open := func(prefix byte) (*pebble.Iterator, error) {
		upper := volumeKey(prefix, toVol)
		if toVol == 0 {
			upper = []byte{prefix + 1}
		}
		return r.NewIter(&pebble.IterOptions{LowerBound: volumeKey(prefix, fromVol), UpperBound: upper})
	}
	bi, err := open(prefixBlock)
	if err != nil {
		return err
	}
	defer bi.Close()
	ci, err := open(prefixChunk)
	if err != nil {
		return err
	}
	defer ci.Close()
	bok, cok := bi.First(), ci.First()
	var chunks []scannedChunk
	var blocks []scannedBlock
	var keyBuf []byte
	// takeBlock collects the block keys of (vol, block) at bi.
	takeBlock := func(vol, block uint64) error {
		blocks = blocks[:0]
		keyBuf = keyBuf[:0]
		for bok {
			v, b, seq, kok := decodeIndexKey(prefixBlock, bi.Key())
			if !kok {
				return fmt.Errorf("%w: key %x", errBadEntry, bi.Key())
			}
			if v != vol || b != block {
				break
			}
			e, err := decodeEntry(bi.Value(), seq)
			if err != nil {
				return fmt.Errorf("%w (volume %d block %d)", err, vol, block)
			}
			keyBuf = append(keyBuf, bi.Key()...)
			blocks = append(blocks, scannedBlock{key: keyBuf[len(keyBuf)-blockKeyLen:], e: e})
			bok = bi.Next()
		}
		return nil
	}
	emitBlock := func(vol, block uint64, e entry, next uint64, key []byte) error {
		dead, err := s.version(vol, block, e, next)
		if err != nil || !dead || key == nil || s.dropBlock == nil {
			return err
		}
		return s.dropBlock(key)
	}
	for bok || cok {
		var bv, bb, cv, cc uint64
		if bok {
			var kok bool
			if bv, bb, _, kok = decodeIndexKey(prefixBlock, bi.Key()); !kok {
				return fmt.Errorf("%w: key %x", errBadEntry, bi.Key())
			}
		}
		if cok {
			var kok bool
			if cv, cc, _, kok = decodeIndexKey(prefixChunk, ci.Key()); !kok {
				return fmt.Errorf("%w: key %x", errBadEntry, ci.Key())
			}
		}
		if !cok || bok && (bv < cv || bv == cv && bb>>chunkShift < cc) {
			// A block of a chunk without chunk keys.
			if err := takeBlock(bv, bb); err != nil {
				return err
			}
			next := uint64(Head)
			for _, sb := range blocks {
				if err := emitBlock(bv, bb, sb.e, next, sb.key); err != nil {
					return err
				}
				next = sb.e.seq
			}
			continue
		}
		// Chunk (cv, cc): its versions, then its blocks one by one.
		chunks = chunks[:0]
		for cok {
			v, c, seq, kok := decodeIndexKey(prefixChunk, ci.Key())
			if !kok {
				return fmt.Errorf("%w: key %x", errBadEntry, ci.Key())
			}
			if v != cv || c != cc {
				break
			}
			ce, err := decodeChunkEntry(ci.Value(), seq)
			if err != nil {
				return fmt.Errorf("%w (volume %d chunk %d)", err, v, c)
			}
			chunks = append(chunks, scannedChunk{key: append([]byte(nil), ci.Key()...), ce: ce})
			cok = ci.Next()
		}
		for i := uint64(0); i < chunkBlocks; i++ {
			block := cc<<chunkShift | i
			blocks = blocks[:0]
			if bok {
				if v, b, _, _ := decodeIndexKey(prefixBlock, bi.Key()); v == cv && b == block {
					if err := takeBlock(cv, block); err != nil {
						return err
					}
				}
			}
			next := uint64(Head)
			k := 0
			for m := range chunks {
				sc := &chunks[m]
				for ; k < len(blocks) && blocks[k].e.seq > sc.ce.seq; k++ {
					if err := emitBlock(cv, block, blocks[k].e, next, blocks[k].key); err != nil {
						return err
					}
					next = blocks[k].e.seq
				}
				if k < len(blocks) && blocks[k].e.seq == sc.ce.seq {
					sc.gone |= 1 << i // moved: the block key is the version
					continue
				}
				dead, err := s.version(cv, block, sc.ce.block(i), next)
				if err != nil {
					return err
				}
				if dead {
					sc.gone |= 1 << i
				}
				next = sc.ce.seq
			}
			for ; k < len(blocks); k++ {
				if err := emitBlock(cv, block, blocks[k].e, next, blocks[k].key); err != nil {
					return err
				}
				next = blocks[k].e.seq
			}
		}
		if s.chunkDone != nil {
			for m := range chunks {
				if err := s.chunkDone(chunks[m].key, &chunks[m].ce, chunks[m].gone); err != nil {
					return err
				}
			}
		}
	}
	return errors.Join(bi.Error(), ci.Error())
}

// allChunkBlocks is the gone mask of a chunk none of whose blocks is needed.
const allChunkBlocks = 1<<chunkBlocks - 1

// splitChunk writes block keys for the blocks of chunk key ck (entry ce)
// that are not in gone, and deletes the chunk key, in batch b.
func splitChunk(b *pebble.Batch, ck []byte, ce *chunkEntry, gone uint32) error {
	vol, chunk, _, ok := decodeIndexKey(prefixChunk, ck)
	if !ok {
		return fmt.Errorf("%w: key %x", errBadEntry, ck)
	}
	var key, val []byte
	for i := uint64(0); i < chunkBlocks; i++ {
		if gone&(1<<i) != 0 {
			continue
		}
		key = blockKey(key, vol, chunk<<chunkShift|i, ce.seq)
		e := ce.block(i)
		val = e.encode(val)
		if err := b.Set(key, val, nil); err != nil {
			return err
		}
	}
	return b.Delete(ck, nil)
}

// sameValue reports whether key still holds val in db.
func sameValue(db getter, key, val []byte) bool {
	cur, closer, err := db.Get(key)
	if err != nil {
		return false
	}
	defer closer.Close()
	return bytes.Equal(cur, val)
}
