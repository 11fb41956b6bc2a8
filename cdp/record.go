package cdp

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// BlockSize is the unit of data in write records and in the block index.
const BlockSize = 4096

// RecordHeaderSize is the fixed size of a record header on disk.
const RecordHeaderSize = 64

// recordMagic starts every record ("SREC" little endian).
const recordMagic uint32 = 0x43455253

// MaxRecordData bounds one record's data. Larger writes are split by the
// caller; the bound keeps recovery's memory use small and lets it reject a
// garbage length before reading it.
const MaxRecordData = 32 << 20

// maxRecordMeta bounds a record's meta section (the checksum table of a
// maximal write is MaxRecordData/BlockSize*4 = 32 KiB).
const maxRecordMeta = 64 << 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC32C used for every checksum in the journal.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Kind says what a record does.
type Kind uint8

const (
	// KindWrite carries whole blocks of data at Offset (block aligned,
	// Length = len(Data)). Meta is the CRC32C of each block.
	KindWrite Kind = 1
	// KindZero makes [Offset, Offset+Length) read as zeros. With
	// FlagNoHole the range stays allocated, otherwise it becomes a hole.
	KindZero Kind = 2
	// KindTrim discards [Offset, Offset+Length): it becomes a hole.
	KindTrim Kind = 3
	// KindVolumeCreate creates volume Volume (its id is this record's
	// sequence number) named Meta with size Length.
	KindVolumeCreate Kind = 4
	// KindVolumeDelete deletes volume Volume.
	KindVolumeDelete Kind = 5
	// KindVolumeResize sets volume Volume's size to Length; on a shrink the
	// blocks past the new end become holes.
	KindVolumeResize Kind = 6
	// KindVolumeClone creates a volume (id = this record's sequence number)
	// of size Length whose content starts as volume Volume at sequence
	// Offset. Meta is the new volume's name.
	KindVolumeClone Kind = 7
	// KindVolumeRollback makes volume Volume's head the content it had at
	// sequence Offset (size Length). Nothing is destroyed: a new generation
	// starts whose base is that point.
	KindVolumeRollback Kind = 8
	// KindSnapshotCreate names the point this record's sequence number
	// marks in volume Volume. Meta: name length (u16), name, label.
	KindSnapshotCreate Kind = 9
	// KindSnapshotDelete removes the snapshot named Meta from volume Volume.
	KindSnapshotDelete Kind = 10
	// KindVolumeConfig sets a volume setting. Meta: "key=value".
	KindVolumeConfig Kind = 11
	// KindRelocate carries block versions that garbage collection copies
	// out of a mostly dead segment. They keep their identity: Meta holds,
	// per block, volume (u64), block number (u64), the sequence number of
	// the write that made it (u64) and its CRC32C (u32); Data the blocks.
	KindRelocate Kind = 12
)

// RelocateEntrySize is the size of one KindRelocate meta entry.
const RelocateEntrySize = 28

// MaxRelocateBlocks bounds a relocate record (its meta must fit).
const MaxRelocateBlocks = maxRecordMeta / RelocateEntrySize

func (k Kind) String() string {
	switch k {
	case KindWrite:
		return "write"
	case KindZero:
		return "zero"
	case KindTrim:
		return "trim"
	case KindVolumeCreate:
		return "volume-create"
	case KindVolumeDelete:
		return "volume-delete"
	case KindVolumeResize:
		return "volume-resize"
	case KindVolumeClone:
		return "volume-clone"
	case KindVolumeRollback:
		return "volume-rollback"
	case KindSnapshotCreate:
		return "snapshot-create"
	case KindSnapshotDelete:
		return "snapshot-delete"
	case KindVolumeConfig:
		return "volume-config"
	case KindRelocate:
		return "relocate"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k >= KindWrite && k <= KindRelocate }

// Record flags.
const (
	// FlagNoHole on a KindZero record: the zeroed range stays allocated.
	FlagNoHole uint8 = 1 << 0
	// FlagSnapScheduled on a KindSnapshotCreate record: a schedule took
	// the snapshot (its thinning may delete it), not a user.
	FlagSnapScheduled uint8 = 1 << 1
	// FlagSnapAppConsistent on a KindSnapshotCreate record: the snapshot
	// was taken while the application or guest was frozen.
	FlagSnapAppConsistent uint8 = 1 << 2
)

// Record is one entry of the journal. Append assigns Seq and Time.
//
// On disk (little endian), a 64-byte header:
//
//	0  magic   u32  "SREC"
//	4  crc     u32  CRC32C of bytes 8..64 and of Meta
//	8  kind    u8
//	9  flags   u8
//	10 (zero)  u16
//	12 metaLen u32
//	16 dataLen u32
//	20 synced  u32  segment offset known durable when this was appended
//	24 volume  u64
//	32 seq     u64
//	40 time    i64  unix nanoseconds, never decreasing along the log
//	48 offset  u64  bytes
//	56 length  u64  bytes
//
// then Meta, then Data. Data is covered by the per-block checksums in Meta,
// which the header checksum covers, so every byte is checked.
type Record struct {
	Kind   Kind
	Flags  uint8
	Volume uint64
	Seq    uint64
	Time   int64
	Offset uint64
	Length uint64
	Meta   []byte
	Data   []byte
	// Synced is set by Append: how far the record's segment was durable
	// when the record was written. Recovery uses it to tell a torn tail
	// (bad bytes past the last fsync) from corruption (bad bytes that an
	// fsync had covered).
	Synced uint32
}

// EncodedSize is the number of bytes the record takes in the journal.
func (r *Record) EncodedSize() int { return RecordHeaderSize + len(r.Meta) + len(r.Data) }

// BlockChecksums returns the checksum table of data (whole blocks) for a
// KindWrite record's Meta. Callers compute it outside the journal's lock.
func BlockChecksums(data []byte) []byte {
	n := len(data) / BlockSize
	meta := make([]byte, 4*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(meta[4*i:], Checksum(data[i*BlockSize:(i+1)*BlockSize]))
	}
	return meta
}

// SetBlockChecksum sets entry i of a checksum table laid out as a
// KindWrite record's.
func SetBlockChecksum(meta []byte, i int, sum uint32) {
	binary.LittleEndian.PutUint32(meta[4*i:], sum)
}

// BlockChecksum returns entry i of a KindWrite record's checksum table.
func BlockChecksum(meta []byte, i int) uint32 {
	return binary.LittleEndian.Uint32(meta[4*i:])
}

// RelocateEntry is one block of a KindRelocate record.
type RelocateEntry struct {
	Volume, Block, Seq uint64
	CRC                uint32
}

// AppendRelocateEntry appends e's encoding to meta.
func AppendRelocateEntry(meta []byte, e RelocateEntry) []byte {
	meta = binary.LittleEndian.AppendUint64(meta, e.Volume)
	meta = binary.LittleEndian.AppendUint64(meta, e.Block)
	meta = binary.LittleEndian.AppendUint64(meta, e.Seq)
	return binary.LittleEndian.AppendUint32(meta, e.CRC)
}

// RelocateEntryAt decodes entry i of a KindRelocate record's meta.
func RelocateEntryAt(meta []byte, i int) RelocateEntry {
	b := meta[i*RelocateEntrySize:]
	le := binary.LittleEndian
	return RelocateEntry{Volume: le.Uint64(b), Block: le.Uint64(b[8:]), Seq: le.Uint64(b[16:]), CRC: le.Uint32(b[24:])}
}

// blockCRC is the checksum of data block i of a record that carries blocks.
func (r *Record) blockCRC(i int) uint32 {
	if r.Kind == KindRelocate {
		return RelocateEntryAt(r.Meta, i).CRC
	}
	return BlockChecksum(r.Meta, i)
}

// validate checks the record's shape before it is written.
func (r *Record) validate() error {
	if !r.Kind.valid() {
		return fmt.Errorf("cdp: invalid record kind %d", r.Kind)
	}
	if len(r.Data) > MaxRecordData || len(r.Meta) > maxRecordMeta {
		return fmt.Errorf("cdp: record too large (meta %d, data %d bytes)", len(r.Meta), len(r.Data))
	}
	if r.Kind == KindWrite {
		if len(r.Data)%BlockSize != 0 || r.Offset%BlockSize != 0 || len(r.Data) == 0 {
			return fmt.Errorf("cdp: write record must hold whole blocks at a block offset (offset %d, %d bytes)", r.Offset, len(r.Data))
		}
		if len(r.Meta) != 4*(len(r.Data)/BlockSize) || r.Length != uint64(len(r.Data)) {
			return fmt.Errorf("cdp: write record checksum table or length does not match its data")
		}
	} else if r.Kind == KindRelocate {
		n := len(r.Data) / BlockSize
		if len(r.Data)%BlockSize != 0 || n == 0 || len(r.Meta) != n*RelocateEntrySize {
			return fmt.Errorf("cdp: relocate record must hold whole blocks and one entry per block")
		}
	} else if len(r.Data) != 0 {
		return fmt.Errorf("cdp: %s record carries no data", r.Kind)
	}
	return nil
}

// encodeHeader writes the header for r into b[:RecordHeaderSize], computing
// the header checksum over the header and r.Meta.
func encodeHeader(b []byte, r *Record) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], recordMagic)
	b[8] = byte(r.Kind)
	b[9] = r.Flags
	le.PutUint16(b[10:], 0)
	le.PutUint32(b[12:], uint32(len(r.Meta)))
	le.PutUint32(b[16:], uint32(len(r.Data)))
	le.PutUint32(b[20:], r.Synced)
	le.PutUint64(b[24:], r.Volume)
	le.PutUint64(b[32:], r.Seq)
	le.PutUint64(b[40:], uint64(r.Time))
	le.PutUint64(b[48:], r.Offset)
	le.PutUint64(b[56:], r.Length)
	crc := crc32.Update(Checksum(b[8:RecordHeaderSize]), castagnoli, r.Meta)
	le.PutUint32(b[4:], crc)
}

// AppendEncoded appends the encoding of r to dst.
func AppendEncoded(dst []byte, r *Record) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, RecordHeaderSize)...)
	dst = append(dst, r.Meta...)
	dst = append(dst, r.Data...)
	encodeHeader(dst[start:], r)
	return dst
}

// headerFields is a decoded header whose own checksum is not yet checked.
type headerFields struct {
	crc     uint32
	metaLen uint32
	dataLen uint32
	rec     Record
}

// decodeHeader parses b[:RecordHeaderSize]. It checks the magic and the
// lengths' plausibility, not the checksum (which also covers the meta).
func decodeHeader(b []byte) (headerFields, error) {
	var h headerFields
	if len(b) < RecordHeaderSize {
		return h, errShort
	}
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != recordMagic {
		return h, errBadMagic
	}
	h.crc = le.Uint32(b[4:])
	h.rec.Kind = Kind(b[8])
	h.rec.Flags = b[9]
	h.metaLen = le.Uint32(b[12:])
	h.dataLen = le.Uint32(b[16:])
	h.rec.Synced = le.Uint32(b[20:])
	h.rec.Volume = le.Uint64(b[24:])
	h.rec.Seq = le.Uint64(b[32:])
	h.rec.Time = int64(le.Uint64(b[40:]))
	h.rec.Offset = le.Uint64(b[48:])
	h.rec.Length = le.Uint64(b[56:])
	if h.metaLen > maxRecordMeta || h.dataLen > MaxRecordData || le.Uint16(b[10:]) != 0 {
		return h, errBadLength
	}
	return h, nil
}

// DecodeRecord decodes one record from the start of b and checks every
// checksum. It returns the record (Meta and Data alias b) and its encoded
// size. It never panics, whatever b holds.
func DecodeRecord(b []byte) (Record, int, error) {
	r, n, err := decodeFramed(b)
	if err != nil {
		return Record{}, 0, err
	}
	if bad := r.badBlocks(); len(bad) > 0 {
		return Record{}, 0, fmt.Errorf("%w: block %d of record %d", errBadChecksum, bad[0], r.Seq)
	}
	return r, n, nil
}

// badBlocks returns the data blocks of r whose checksum fails.
func (r *Record) badBlocks() []int {
	var bad []int
	if r.Kind == KindWrite || r.Kind == KindRelocate {
		for i := 0; i < len(r.Data)/BlockSize; i++ {
			if Checksum(r.Data[i*BlockSize:(i+1)*BlockSize]) != r.blockCRC(i) {
				bad = append(bad, i)
			}
		}
	}
	return bad
}

// decodeFramed decodes one record and checks its framing: the header and
// meta checksum and the record's shape, not its data blocks (each has its
// own checksum in the meta, which readers check).
func decodeFramed(b []byte) (Record, int, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return Record{}, 0, err
	}
	total := RecordHeaderSize + int(h.metaLen) + int(h.dataLen)
	if len(b) < total {
		return Record{}, 0, errShort
	}
	meta := b[RecordHeaderSize : RecordHeaderSize+int(h.metaLen)]
	if crc32.Update(Checksum(b[8:RecordHeaderSize]), castagnoli, meta) != h.crc {
		return Record{}, 0, errBadChecksum
	}
	r := h.rec
	r.Meta = meta
	r.Data = b[RecordHeaderSize+int(h.metaLen) : total]
	if err := r.validate(); err != nil {
		return Record{}, 0, fmt.Errorf("%w: %v", errBadRecord, err)
	}
	return r, total, nil
}
