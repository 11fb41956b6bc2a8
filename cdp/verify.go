package cdp

import (
	"context"
	"errors"
	"fmt"
)

// BadBlock is a data block of a journal record whose bytes no longer match
// their checksum.
type BadBlock struct {
	Segment uint64 `json:"segment"` // the record's segment
	Offset  int64  `json:"offset"`  // the block's byte offset in the segment
	Seq     uint64 `json:"seq"`     // the record's sequence number
	Kind    string `json:"kind"`    // the record's kind: write or relocate
	// Volume, Block and Version name the block version the block holds:
	// for a write, the record's volume, its block number and the record's
	// sequence number; for a relocate, the entry's.
	Volume  uint64 `json:"volume"`
	Block   uint64 `json:"block"`
	Version uint64 `json:"version"`
	CRC     uint32 `json:"crc"` // what the block's checksum should be
}

// BadRecord is a record whose framing (header or meta checksum, shape) is
// damaged: Verify cannot find the records after it in its segment.
type BadRecord struct {
	Segment uint64 `json:"segment"`
	Offset  int64  `json:"offset"`
	Reason  string `json:"reason"`
}

// VerifyStats counts what Verify read.
type VerifyStats struct {
	Segments int
	Records  int64
	Bytes    int64
}

// Verify reads every record of every segment, checks its framing and the
// checksum of every data block, and calls bad for each damaged block and
// badRec for each record whose framing fails (the rest of that segment is
// then skipped: its record boundaries are unknown). pace is called after
// each record with the bytes just read; an error from it (a cancelled
// context) stops Verify. Segments that garbage collection removes while
// Verify runs are skipped. Safe to run while the journal is in use.
func (j *Journal) Verify(ctx context.Context, pace func(n int64) error, bad func(BadBlock), badRec func(BadRecord)) (VerifyStats, error) {
	var st VerifyStats
	hdr := make([]byte, RecordHeaderSize)
	var buf []byte
	for _, si := range j.Segments() {
		st.Segments++
		off := int64(segmentHeaderSize)
		for off+RecordHeaderSize <= si.Size {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			rec, n, err := j.readAt(si.ID, off, hdr, &buf)
			if err != nil {
				if j.gone(si.ID) {
					break
				}
				var fe *framingError
				if errors.As(err, &fe) {
					badRec(BadRecord{Segment: si.ID, Offset: off, Reason: fe.err.Error()})
					break
				}
				return st, err
			}
			st.Records++
			st.Bytes += int64(n)
			dataOff := off + RecordHeaderSize + int64(len(rec.Meta))
			for _, i := range rec.badBlocks() {
				b := BadBlock{Segment: si.ID, Offset: dataOff + int64(i)*BlockSize, Seq: rec.Seq, Kind: rec.Kind.String(),
					Volume: rec.Volume, Block: rec.Offset/BlockSize + uint64(i), Version: rec.Seq, CRC: rec.blockCRC(i)}
				if rec.Kind == KindRelocate {
					e := RelocateEntryAt(rec.Meta, i)
					b.Volume, b.Block, b.Version = e.Volume, e.Block, e.Seq
				}
				bad(b)
			}
			if err := pace(int64(n)); err != nil {
				return st, err
			}
			off += int64(n)
		}
	}
	return st, nil
}

// framingError: the bytes at a record's place are not a whole record.
type framingError struct{ err error }

func (e *framingError) Error() string { return e.err.Error() }

// readAt reads and decodes the record at off of segment seg, checking its
// framing, not its data blocks.
func (j *Journal) readAt(seg uint64, off int64, hdr []byte, buf *[]byte) (Record, int, error) {
	if err := j.ReadAt(seg, off, hdr); err != nil {
		return Record{}, 0, err
	}
	h, err := decodeHeader(hdr)
	if err != nil {
		return Record{}, 0, &framingError{err}
	}
	total := RecordHeaderSize + int(h.metaLen) + int(h.dataLen)
	if cap(*buf) < total {
		*buf = make([]byte, total)
	}
	b := (*buf)[:total]
	if err := j.ReadAt(seg, off, b); err != nil {
		return Record{}, 0, err
	}
	rec, n, err := decodeFramed(b)
	if err != nil {
		return Record{}, 0, &framingError{fmt.Errorf("record at offset %d: %w", off, err)}
	}
	return rec, n, nil
}

// gone reports whether segment id is no longer in the journal.
func (j *Journal) gone(id uint64) bool {
	j.segMu.RLock()
	defer j.segMu.RUnlock()
	return j.segs[id] == nil
}
