// Package replica owns replication: the stream of one volume's changes that
// a shipper sends to a target past the target's acknowledged sequence
// number, the receiver that applies it at a remote Strata site, the S3
// target with erasure coding, and restore.
//
// The stream is made of batches. A batch takes a replica from one source
// point (From) to a later one (To). An ordinary batch carries the source's
// journal records in order, each closed by an OpPoint, so the replica is
// crash-consistent at every record it has received. A diff batch (the first
// full copy, or the difference a rollback on the source makes) is
// consistent only once complete; receivers remember the point before it.
package replica

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Error classes.
var (
	// ErrCorrupt: a batch or object failed its checksum or does not parse.
	ErrCorrupt = errors.New("replica: corrupt data")
	// ErrAuth: the target refused the token.
	ErrAuth = errors.New("replica: authentication failed")
	// ErrRefused: the target refuses the stream (split brain, promoted
	// replica, volume in use, not a replica of this source).
	ErrRefused = errors.New("replica: refused")
	// ErrBusy: another replication of the same volume and target runs.
	ErrBusy = errors.New("replica: already running")
	// ErrNoSpace: the target is full.
	ErrNoSpace = errors.New("replica: out of space")
	// ErrNotFound: nothing was shipped for that volume (restore).
	ErrNotFound = errors.New("replica: not found")
)

// OpKind says what an Op does.
type OpKind uint8

const (
	// OpWrite writes Data at Offset (block aligned).
	OpWrite OpKind = 1
	// OpZero makes Length bytes at Offset read as zeros; NoHole keeps them
	// allocated.
	OpZero OpKind = 2
	// OpTrim discards Length bytes at Offset.
	OpTrim OpKind = 3
	// OpResize sets the volume's size to Length.
	OpResize OpKind = 4
	// OpSnapshot names the point the ops before it reach: Name, Label.
	OpSnapshot OpKind = 5
	// OpPoint closes source record Seq (written at Time): outside a diff
	// batch, the replica now reads as the source did at Seq.
	OpPoint OpKind = 6
)

func (k OpKind) String() string {
	switch k {
	case OpWrite:
		return "write"
	case OpZero:
		return "zero"
	case OpTrim:
		return "trim"
	case OpResize:
		return "resize"
	case OpSnapshot:
		return "snapshot"
	case OpPoint:
		return "point"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Op is one change.
type Op struct {
	Kind   OpKind
	Seq    uint64 // the source sequence number it comes from
	Time   int64  // the source record's time, Unix nanoseconds
	Offset uint64
	Length uint64
	NoHole bool
	Data   []byte
	Name   string
	Label  string
	// OpSnapshot: the snapshot was taken by a schedule (a replica's own
	// schedule thins such copies), and while the application was frozen.
	Scheduled, AppConsistent bool
}

// Batch takes a replica from source point From to source point To.
type Batch struct {
	From, To uint64
	// Diff: a resync by difference, consistent only at its end.
	Diff bool
	// Partial: a part of a diff that more parts follow; the target holds
	// From until the last part arrives.
	Partial bool
	// Size is the volume's size at To.
	Size int64
	// Time of point To (Unix nanoseconds).
	Time int64
	Ops  []Op
}

// DataBytes is the size of the data the batch carries.
func (b *Batch) DataBytes() int64 {
	var n int64
	for i := range b.Ops {
		n += int64(len(b.Ops[i].Data))
	}
	return n
}

// extentEnd is where the batch's block ops (writes, zeroes, trims) end:
// how far a diff's part reaches.
func (b *Batch) extentEnd() uint64 {
	var end uint64
	for i := range b.Ops {
		switch op := &b.Ops[i]; op.Kind {
		case OpWrite, OpZero, OpTrim:
			end = max(end, op.Offset+op.Length)
		}
	}
	return end
}

// VolumeID names a volume across sites: the pool's identity and the
// volume's id in it.
type VolumeID struct {
	Pool string `json:"pool"`
	Vol  uint64 `json:"vol"`
	Name string `json:"name"`
}

// Origin says the shipped volume was itself a replica of Origin.Source,
// holding Origin.Seq of it at the shipper's point Origin.Local when it was
// promoted: the last common point a failback starts from.
type Origin struct {
	Source VolumeID `json:"source"`
	Seq    uint64   `json:"seq"`
	Local  uint64   `json:"local"`
}

// Hello opens a stream: which volume comes, and where it goes.
type Hello struct {
	Source VolumeID `json:"source"`
	// Target is the volume name at the target.
	Target string  `json:"target"`
	Size   int64   `json:"size"`
	Origin *Origin `json:"origin,omitempty"`
}

// State is what a target holds of a volume.
type State struct {
	// Acked: the source point the target holds durably (0: nothing yet).
	Acked uint64 `json:"acked"`
	// AckedTime: when the source wrote point Acked (Unix nanoseconds; an
	// empty batch moves it to when it was shipped).
	AckedTime int64 `json:"acked_time,omitempty"`
	// DiffTo, DiffNext: an interrupted diff from Acked to DiffTo is
	// applied up to byte offset DiffNext; a stream may resume it there
	// (sending its parts from DiffNext on). Anything else sent first
	// undoes it.
	DiffTo   uint64 `json:"diff_to,omitempty"`
	DiffNext uint64 `json:"diff_next,omitempty"`
	// Message: what the target did on Open (a failback accepted), for the
	// user.
	Message string `json:"message,omitempty"`
}

// Counter is implemented by targets that count what they sent: the
// batches' encoded size before and after compression.
type Counter interface {
	Counters() (raw, stored int64)
}

// Target receives a volume's stream. Calls are not concurrent.
type Target interface {
	// Open announces the volume and returns what the target holds of it.
	Open(ctx context.Context, h Hello) (State, error)
	// Send ships one batch and returns once the target has made it
	// durable (or an error: then nothing of it counts as acknowledged).
	Send(ctx context.Context, b *Batch) error
	// Close releases the target.
	Close() error
	// String names the target for messages (no secrets).
	String() string
}

// Pipeliner is implemented by targets that take the next batch while
// earlier ones are still being applied. Submit sends b without waiting;
// Wait returns once the oldest batch not yet waited for is durable (or
// with the error that stopped the target), in the order submitted.
type Pipeliner interface {
	Submit(ctx context.Context, b *Batch) error
	Wait(ctx context.Context) error
}

// Batch encoding: a frame is
//
//	magic "SRB1" (4) | raw length (4) | stored length (4) | CRC32C of raw (4) | zstd(raw)
//
// and raw is the batch header followed by its ops:
//
//	from(8) to(8) time(8) size(8) flags(1) nops(4)
//	op: kind(1) seq(8) time(8) offset(8) length(8) flags(1) datalen(4) namelen(2) labellen(2) data name label
const (
	frameMagic      = "SRB1"
	frameHeaderSize = 16
	// MaxBatchRaw bounds a decoded batch, so a corrupt length cannot
	// make a receiver allocate without bound.
	MaxBatchRaw = 256 << 20
)

// opHeaderSize is the fixed part of an encoded op.
const opHeaderSize = 42

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	encOnce sync.Once
	enc     *zstd.Encoder
	dec     *zstd.Decoder
)

func codecs() (*zstd.Encoder, *zstd.Decoder) {
	encOnce.Do(func() {
		enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		dec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxBatchRaw))
	})
	return enc, dec
}

// appendRaw encodes b's header and ops.
func appendRaw(dst []byte, b *Batch) []byte {
	le := binary.LittleEndian
	dst = le.AppendUint64(dst, b.From)
	dst = le.AppendUint64(dst, b.To)
	dst = le.AppendUint64(dst, uint64(b.Time))
	dst = le.AppendUint64(dst, uint64(b.Size))
	var flags byte
	if b.Diff {
		flags |= 1
	}
	if b.Partial {
		flags |= 2
	}
	dst = append(dst, flags)
	dst = le.AppendUint32(dst, uint32(len(b.Ops)))
	for i := range b.Ops {
		op := &b.Ops[i]
		dst = append(dst, byte(op.Kind))
		dst = le.AppendUint64(dst, op.Seq)
		dst = le.AppendUint64(dst, uint64(op.Time))
		dst = le.AppendUint64(dst, op.Offset)
		dst = le.AppendUint64(dst, op.Length)
		var of byte
		if op.NoHole {
			of |= 1
		}
		if op.Scheduled {
			of |= 2
		}
		if op.AppConsistent {
			of |= 4
		}
		dst = append(dst, of)
		dst = le.AppendUint32(dst, uint32(len(op.Data)))
		dst = le.AppendUint16(dst, uint16(len(op.Name)))
		dst = le.AppendUint16(dst, uint16(len(op.Label)))
		dst = append(dst, op.Data...)
		dst = append(dst, op.Name...)
		dst = append(dst, op.Label...)
	}
	return dst
}

// EncodeBatch returns b as one checksummed, compressed frame, and the size
// of the batch before compression.
func EncodeBatch(b *Batch) (frame []byte, raw int, err error) {
	for i := range b.Ops {
		if len(b.Ops[i].Name) > 0xffff || len(b.Ops[i].Label) > 0xffff {
			return nil, 0, fmt.Errorf("replica: op %d: name or label longer than 64 KiB", i)
		}
	}
	e, _ := codecs()
	rb := appendRaw(make([]byte, 0, 64+b.DataBytes()+int64(len(b.Ops))*opHeaderSize), b)
	frame = make([]byte, frameHeaderSize, frameHeaderSize+e.MaxEncodedSize(len(rb)))
	frame = e.EncodeAll(rb, frame)
	copy(frame, frameMagic)
	binary.LittleEndian.PutUint32(frame[4:], uint32(len(rb)))
	binary.LittleEndian.PutUint32(frame[8:], uint32(len(frame)-frameHeaderSize))
	binary.LittleEndian.PutUint32(frame[12:], crc32.Checksum(rb, castagnoli))
	return frame, len(rb), nil
}

// FrameLen returns the length of the frame that starts with hdr (at least
// frameHeaderSize bytes), checking its header.
func FrameLen(hdr []byte) (int, error) {
	if len(hdr) < frameHeaderSize || string(hdr[:4]) != frameMagic {
		return 0, fmt.Errorf("%w: bad batch frame magic", ErrCorrupt)
	}
	raw := binary.LittleEndian.Uint32(hdr[4:])
	stored := binary.LittleEndian.Uint32(hdr[8:])
	if raw > MaxBatchRaw || stored > MaxBatchRaw+MaxBatchRaw/8 {
		return 0, fmt.Errorf("%w: batch frame of %d bytes (%d stored) is too large", ErrCorrupt, raw, stored)
	}
	return frameHeaderSize + int(stored), nil
}

// FrameHeaderSize is the size of a frame's fixed header.
const FrameHeaderSize = frameHeaderSize

// DecodeBatch parses one frame. Data slices point into a fresh buffer.
func DecodeBatch(frame []byte) (*Batch, error) {
	n, err := FrameLen(frame)
	if err != nil {
		return nil, err
	}
	if len(frame) != n {
		return nil, fmt.Errorf("%w: batch frame is %d bytes, header says %d", ErrCorrupt, len(frame), n)
	}
	rawLen := int(binary.LittleEndian.Uint32(frame[4:]))
	_, d := codecs()
	raw, err := d.DecodeAll(frame[frameHeaderSize:], make([]byte, 0, rawLen))
	if err != nil {
		return nil, fmt.Errorf("%w: decompress batch: %v", ErrCorrupt, err)
	}
	if len(raw) != rawLen || crc32.Checksum(raw, castagnoli) != binary.LittleEndian.Uint32(frame[12:]) {
		return nil, fmt.Errorf("%w: batch checksum mismatch", ErrCorrupt)
	}
	return decodeRaw(raw)
}

func decodeRaw(raw []byte) (*Batch, error) {
	le := binary.LittleEndian
	bad := func(what string) error { return fmt.Errorf("%w: batch %s", ErrCorrupt, what) }
	if len(raw) < 37 {
		return nil, bad("header is short")
	}
	b := &Batch{From: le.Uint64(raw), To: le.Uint64(raw[8:]), Time: int64(le.Uint64(raw[16:])), Size: int64(le.Uint64(raw[24:])), Diff: raw[32]&1 != 0, Partial: raw[32]&2 != 0}
	nops := le.Uint32(raw[33:])
	r := raw[37:]
	if uint64(nops) > uint64(len(r))/opHeaderSize {
		return nil, bad("op count is larger than the batch")
	}
	b.Ops = make([]Op, 0, nops)
	for i := uint32(0); i < nops; i++ {
		if len(r) < opHeaderSize {
			return nil, bad("op header is short")
		}
		op := Op{Kind: OpKind(r[0]), Seq: le.Uint64(r[1:]), Time: int64(le.Uint64(r[9:])), Offset: le.Uint64(r[17:]), Length: le.Uint64(r[25:]),
			NoHole: r[33]&1 != 0, Scheduled: r[33]&2 != 0, AppConsistent: r[33]&4 != 0}
		dl, nl, ll := int(le.Uint32(r[34:])), int(le.Uint16(r[38:])), int(le.Uint16(r[40:]))
		r = r[42:]
		if dl+nl+ll > len(r) {
			return nil, bad("op is longer than the batch")
		}
		if op.Kind < OpWrite || op.Kind > OpPoint {
			return nil, bad(fmt.Sprintf("has unknown op kind %d", op.Kind))
		}
		if dl > 0 {
			op.Data = r[:dl:dl]
		}
		op.Name = string(r[dl : dl+nl])
		op.Label = string(r[dl+nl : dl+nl+ll])
		r = r[dl+nl+ll:]
		b.Ops = append(b.Ops, op)
	}
	if len(r) != 0 {
		return nil, bad("has trailing bytes")
	}
	return b, nil
}

// Equal reports whether two batches are the same (tests and tools).
func (b *Batch) Equal(o *Batch) bool {
	if b.From != o.From || b.To != o.To || b.Diff != o.Diff || b.Partial != o.Partial || b.Size != o.Size || b.Time != o.Time || len(b.Ops) != len(o.Ops) {
		return false
	}
	for i := range b.Ops {
		x, y := &b.Ops[i], &o.Ops[i]
		if x.Kind != y.Kind || x.Seq != y.Seq || x.Time != y.Time || x.Offset != y.Offset || x.Length != y.Length ||
			x.NoHole != y.NoHole || x.Scheduled != y.Scheduled || x.AppConsistent != y.AppConsistent || !bytes.Equal(x.Data, y.Data) || x.Name != y.Name || x.Label != y.Label {
			return false
		}
	}
	return true
}
