// Package replica owns replication: the stream of one volume's changes that
// a shipper sends to a target past the target's acknowledged sequence
// number (once per run, Ship, or kept open, Follow: a synchronous mirror's
// stream), the receiver that applies it at a remote Strata site, the S3
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
	"net"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/strata-storage/strata/cdp"
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
	// ErrFenced: a mirror's stream comes from a primary whose epoch is
	// older than one the target knows: another host took over.
	ErrFenced = errors.New("replica: fenced")
	// ErrHandedOver: the target took over as the mirror's primary, as
	// the stream's hello asked (a planned switchover); no stream follows.
	ErrHandedOver = errors.New("replica: handed over")
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
	// Sums: when not nil, the CRC32C of each 4 KiB block of Data
	// (cdp.BlockChecksums), checked against it: sent in place of a
	// checksum over the data, and journaled as they are by a receiver.
	Sums  []byte
	Name  string
	Label string
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
	// NoSync: the target applies the batch and acknowledges it without
	// making it durable first (a mirror's writes between flushes); the
	// next batch without NoSync makes everything durable.
	NoSync bool
	// Size is the volume's size at To.
	Size int64
	// Time of point To (Unix nanoseconds).
	Time int64
	Ops  []Op

	buf *[]byte // DecodeBatch's buffer, which the ops' data point into
}

// decodeBufs recycles the buffers DecodeBatch decompresses into.
var decodeBufs sync.Pool

// Release gives back the buffer a decoded batch's data lives in, for the
// next DecodeBatch to reuse; b's ops' data must not be used afterwards.
// Batches not from DecodeBatch need no Release.
func (b *Batch) Release() {
	if b.buf != nil {
		decodeBufs.Put(b.buf)
		b.buf = nil
		b.Ops = nil
	}
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
	// Mirror marks the stream of a synchronous mirror (nil: replication).
	Mirror *Mirror `json:"mirror,omitempty"`
}

// Mirror is what a synchronous mirror's primary tells its secondary when
// it opens the stream. The target's receiver hands it to its CheckHello
// hook, which fences a primary whose epoch is older than one it knows.
type Mirror struct {
	// Group names the mirror (at the witness too); Epoch counts its
	// primaries: every promotion takes a higher one.
	Group string `json:"group"`
	Epoch uint64 `json:"epoch"`
	// Peer is where the secondary reaches the primary's replica listener
	// (strata://HOST:PORT), to ship back once promoted.
	Peer string `json:"peer,omitempty"`
	// Witness is the witness's HOST:PORT ("" without one).
	Witness string `json:"witness,omitempty"`
	// Self is where the primary reached the secondary (the URL it ships
	// to), which the secondary names itself with once it ships back.
	Self string `json:"self,omitempty"`
	// Handover asks the secondary to take over now (a planned
	// switchover; the primary has stopped I/O and the secondary holds
	// every write): it promotes itself with Epoch and the hello fails
	// with ErrHandedOver. Final (a migration) also ends the mirror there.
	Handover bool `json:"handover,omitempty"`
	Final    bool `json:"final,omitempty"`
	// Valid, when not 0: this primary restarted and its journal ended at
	// its point Valid; points after it that the secondary received from
	// before the restart were lost here (an unflushed tail), and the
	// sequence numbers may be used again. The secondary goes back to a
	// point at or before Valid first.
	Valid uint64 `json:"valid,omitempty"`
	// Points: when the shipper was itself the secondary, which of its
	// points read as which of the target's (newest last; see
	// Receiver.History), so that a target that lost part of its journal
	// can still find a common point (the target's LocalValid).
	Points []PointPair `json:"points,omitempty"`
}

// PointPair says that a replica's point Local ([1]) read as its source's
// point Source ([0]).
type PointPair [2]uint64

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
	// Pool is the target pool's identity (strata:// targets).
	Pool string `json:"pool,omitempty"`
	// Wire is the strata:// protocol version the target reads: 2 takes
	// uncompressed ("SRB2") batch frames; older targets leave it out and
	// get only "SRB1" frames.
	Wire int `json:"wire,omitempty"`
}

// Counter is implemented by targets that count what they sent: the
// batches' encoded size before and after compression.
type Counter interface {
	Counters() (raw, stored int64)
}

// Target receives a volume's stream. Calls are not concurrent. Send (and
// a Pipeliner's Submit) must not keep b, or its ops' data, once it
// returns: the shipper reuses the data buffers.
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
//
// A frame with magic "SRB2" (stored length = raw length) carries raw as
// is, without zstd: what a strata:// shipper sends a target that says it
// reads them (State.Wire >= 2) when the batch would not shrink. Its
// receiver decodes the ops in place, with no copy of the data.
const (
	frameMagic      = "SRB1"
	frameMagicRaw   = "SRB2"
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
		// No zstd checksum: the frame's CRC32C covers the raw batch.
		enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		dec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxBatchRaw))
	})
	return enc, dec
}

// appendRaw encodes b's header and ops.
func appendRaw(dst []byte, b *Batch) []byte {
	encodeRaw(b, false, func(p []byte, _ bool) { dst = append(dst, p...) })
	return dst
}

// encodeRaw passes b's encoding, header and ops, to put piece by piece:
// fixed fields in a scratch buffer, data, names and labels as they are;
// put hears whether a piece is a write's data. With sums (an "SRB2"
// frame), each write's data is followed by the CRC32C of each of its 4 KiB
// blocks (the last one possibly short): op.Sums, or computed.
func encodeRaw(b *Batch, sums bool, put func(p []byte, data bool)) {
	le := binary.LittleEndian
	var scratch [64]byte
	h := scratch[:0]
	h = le.AppendUint64(h, b.From)
	h = le.AppendUint64(h, b.To)
	h = le.AppendUint64(h, uint64(b.Time))
	h = le.AppendUint64(h, uint64(b.Size))
	var flags byte
	if b.Diff {
		flags |= 1
	}
	if b.Partial {
		flags |= 2
	}
	if b.NoSync {
		flags |= 4
	}
	h = append(h, flags)
	h = le.AppendUint32(h, uint32(len(b.Ops)))
	put(h, false)
	for i := range b.Ops {
		op := &b.Ops[i]
		h = scratch[:0]
		h = append(h, byte(op.Kind))
		h = le.AppendUint64(h, op.Seq)
		h = le.AppendUint64(h, uint64(op.Time))
		h = le.AppendUint64(h, op.Offset)
		h = le.AppendUint64(h, op.Length)
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
		h = append(h, of)
		h = le.AppendUint32(h, uint32(len(op.Data)))
		h = le.AppendUint16(h, uint16(len(op.Name)))
		h = le.AppendUint16(h, uint16(len(op.Label)))
		put(h, false)
		put(op.Data, op.Kind == OpWrite)
		if sums && op.Kind == OpWrite {
			if s := op.Sums; len(s) == sumsLen(len(op.Data)) {
				put(s, false)
			} else {
				put(appendSums(nil, op.Data), false)
			}
		}
		put([]byte(op.Name), false)
		put([]byte(op.Label), false)
	}
}

// sumsLen is the size of the block checksums of n bytes of data.
func sumsLen(n int) int { return 4 * ((n + cdp.BlockSize - 1) / cdp.BlockSize) }

// appendSums appends the CRC32C of each 4 KiB block of data (the last one
// possibly short), as cdp.BlockChecksums does for whole blocks.
func appendSums(dst, data []byte) []byte {
	for len(data) > 0 {
		n := min(len(data), cdp.BlockSize)
		dst = binary.LittleEndian.AppendUint32(dst, cdp.Checksum(data[:n]))
		data = data[n:]
	}
	return dst
}

// EncodeBatch returns b as one checksummed, compressed frame, and the size
// of the batch before compression.
func EncodeBatch(b *Batch) (frame []byte, raw int, err error) {
	return AppendBatch(nil, b)
}

// rawBufs recycles the buffers batches are encoded in before compression.
var rawBufs sync.Pool

// AppendBatch is EncodeBatch appending the frame to dst, whose space a
// caller that sends batch after batch can reuse.
func AppendBatch(dst []byte, b *Batch) (frame []byte, raw int, err error) {
	return appendBatch(dst, b, true)
}

// appendBatch is AppendBatch; without compress the frame is always stored
// (zstd raw blocks), which costs no compression CPU.
func appendBatch(dst []byte, b *Batch, compress bool) (frame []byte, raw int, err error) {
	if err := checkNames(b); err != nil {
		return nil, 0, err
	}
	e, _ := codecs()
	start := len(dst)
	dst = append(dst, make([]byte, frameHeaderSize)...)
	var sum uint32
	need := int(64 + b.DataBytes() + int64(len(b.Ops))*opHeaderSize)
	if !compress || incompressible(e, b) {
		// Encoded straight into the frame: one copy of the data.
		w := storedWriter{dst: slices.Grow(dst, need+3*(need/storedBlock+1)+16)}
		w.begin()
		encodeRaw(b, false, func(p []byte, _ bool) { w.write(p) })
		dst, raw, sum = w.finish(), w.raw, w.crc
	} else {
		var rb []byte
		if p, ok := rawBufs.Get().(*[]byte); ok && cap(*p) >= need {
			rb = (*p)[:0]
		} else {
			rb = make([]byte, 0, need)
		}
		rb = appendRaw(rb, b)
		defer rawBufs.Put(&rb)
		dst = slices.Grow(dst, e.MaxEncodedSize(len(rb)))
		dst = e.EncodeAll(rb, dst)
		raw, sum = len(rb), crc32.Checksum(rb, castagnoli)
	}
	frame = dst[start:]
	copy(frame, frameMagic)
	binary.LittleEndian.PutUint32(frame[4:], uint32(raw))
	binary.LittleEndian.PutUint32(frame[8:], uint32(len(frame)-frameHeaderSize))
	binary.LittleEndian.PutUint32(frame[12:], sum)
	return dst, raw, nil
}

// checkNames checks that b's names and labels fit their encoding.
func checkNames(b *Batch) error {
	for i := range b.Ops {
		if len(b.Ops[i].Name) > 0xffff || len(b.Ops[i].Label) > 0xffff {
			return fmt.Errorf("replica: op %d: name or label longer than 64 KiB", i)
		}
	}
	return nil
}

// compressSample is the size of each of the three pieces of a batch
// compressed to judge whether compressing the whole is worth it.
const compressSample = 64 << 10

// incompressible judges from three samples of b's data whether zstd
// would shrink it by less than 3%: then the batch is stored in its frame
// as is (zstd tried on incompressible data, typical of encrypted or
// already compressed disks, cost a quarter of a first copy's CPU for
// nothing). Batches with under four samples of data are compressed.
func incompressible(e *zstd.Encoder, b *Batch) bool {
	total := b.DataBytes()
	if total < 4*compressSample {
		return false
	}
	var scratch [compressSample + compressSample/8]byte
	in, out := 0, 0
	for _, at := range []int64{total / 4, total / 2, 3 * total / 4} {
		for i := range b.Ops {
			d := b.Ops[i].Data
			if at >= int64(len(d)) {
				at -= int64(len(d))
				continue
			}
			sample := d[at:min(int64(len(d)), at+compressSample)]
			in += len(sample)
			out += len(e.EncodeAll(sample, scratch[:0]))
			break
		}
	}
	return out*100 >= in*97
}

// storedWriter writes a raw batch as a zstd frame of raw (stored) blocks:
// what the encoder writes for incompressible data, at the cost of one
// copy. Any zstd decoder reads it, so a receiver needs nothing new. The
// frame header (RFC 8878, 3.1.1.1): an 8-byte content size, filled in at
// the end; a 128 KiB window, so blocks of up to 128 KiB; no dictionary, no
// checksum (the batch frame's CRC32C, which it computes on the way, covers
// the raw batch).
type storedWriter struct {
	dst   []byte
	fcs   int // where the content size goes
	block int // where the open block's header is
	raw   int
	crc   uint32
}

const storedBlock = 128 << 10

func (w *storedWriter) begin() {
	w.dst = binary.LittleEndian.AppendUint32(w.dst, 0xFD2FB528)
	w.dst = append(w.dst, 0xC0, 0x38) // descriptor: FCS of 8 bytes; window 2^(10+7)
	w.fcs = len(w.dst)
	w.dst = append(w.dst, make([]byte, 8)...)
	w.open()
}

func (w *storedWriter) open() {
	w.block = len(w.dst)
	w.dst = append(w.dst, 0, 0, 0)
}

// close fills in the open block's header.
func (w *storedWriter) close(last bool) {
	hdr := uint32(len(w.dst)-w.block-3) << 3 // block type 0: raw
	if last {
		hdr |= 1
	}
	w.dst[w.block], w.dst[w.block+1], w.dst[w.block+2] = byte(hdr), byte(hdr>>8), byte(hdr>>16)
}

func (w *storedWriter) write(p []byte) {
	w.crc = crc32.Update(w.crc, castagnoli, p)
	w.raw += len(p)
	for len(p) > 0 {
		room := storedBlock - (len(w.dst) - w.block - 3)
		if room == 0 {
			w.close(false)
			w.open()
			room = storedBlock
		}
		n := min(room, len(p))
		w.dst = append(w.dst, p[:n]...)
		p = p[n:]
	}
}

func (w *storedWriter) finish() []byte {
	w.close(true)
	binary.LittleEndian.PutUint64(w.dst[w.fcs:], uint64(w.raw))
	return w.dst
}

// FrameLen returns the length of the frame that starts with hdr (at least
// frameHeaderSize bytes), checking its header.
func FrameLen(hdr []byte) (int, error) {
	if len(hdr) < frameHeaderSize || (string(hdr[:4]) != frameMagic && string(hdr[:4]) != frameMagicRaw) {
		return 0, fmt.Errorf("%w: bad batch frame magic", ErrCorrupt)
	}
	raw := binary.LittleEndian.Uint32(hdr[4:])
	stored := binary.LittleEndian.Uint32(hdr[8:])
	if raw > MaxBatchRaw || stored > MaxBatchRaw+MaxBatchRaw/8 {
		return 0, fmt.Errorf("%w: batch frame of %d bytes (%d stored) is too large", ErrCorrupt, raw, stored)
	}
	if string(hdr[:4]) == frameMagicRaw && raw != stored {
		return 0, fmt.Errorf("%w: uncompressed batch frame of %d bytes says %d stored", ErrCorrupt, raw, stored)
	}
	return frameHeaderSize + int(stored), nil
}

// bigPiece: encoded pieces this large (write data) go to the connection
// from where they are; smaller ones are copied together first.
const bigPiece = 32 << 10

// rawFrame encodes b as an uncompressed ("SRB2") frame behind prefix (a
// message header), as pieces to write in order: the data of large writes
// as they are, everything else gathered in small (reused, returned). It
// returns the pieces, small, and the raw batch's length.
//
// The frame's checksum covers every byte but the writes' data, which the
// block checksums after each write's data cover: those of its journal
// record, already checked when it was read (op.Sums), so that the data is
// not checksummed again on the way, and its receiver checks each block
// once and journals it with them.
func rawFrame(prefix []byte, b *Batch, small []byte) (net.Buffers, []byte, int) {
	type mark struct {
		at  int
		big []byte
	}
	var marks []mark
	small = append(small[:0], prefix...)
	small = append(small, make([]byte, frameHeaderSize)...)
	head := len(small)
	sum := uint32(0)
	encodeRaw(b, true, func(p []byte, data bool) {
		if !data {
			sum = crc32.Update(sum, castagnoli, p)
		}
		if len(p) >= bigPiece {
			marks = append(marks, mark{len(small), p})
		} else {
			small = append(small, p...)
		}
	})
	// Slices of small are taken once it no longer grows.
	bufs := make(net.Buffers, 0, 2*len(marks)+1)
	prev, raw := 0, len(small)-head
	for _, m := range marks {
		if m.at > prev {
			bufs = append(bufs, small[prev:m.at])
		}
		bufs = append(bufs, m.big)
		prev = m.at
		raw += len(m.big)
	}
	if len(small) > prev {
		bufs = append(bufs, small[prev:])
	}
	h := small[len(prefix):head]
	copy(h, frameMagicRaw)
	binary.LittleEndian.PutUint32(h[4:], uint32(raw))
	binary.LittleEndian.PutUint32(h[8:], uint32(raw))
	binary.LittleEndian.PutUint32(h[12:], sum)
	return bufs, small, raw
}

// FrameHeaderSize is the size of a frame's fixed header.
const FrameHeaderSize = frameHeaderSize

// DecodeBatch parses one frame. Data slices point into a fresh buffer.
func DecodeBatch(frame []byte) (*Batch, error) {
	if err := checkFrame(frame); err != nil {
		return nil, err
	}
	rawLen := int(binary.LittleEndian.Uint32(frame[4:]))
	p := decodeBuf(rawLen)
	var raw []byte
	if string(frame[:4]) == frameMagicRaw {
		raw = append((*p)[:0], frame[frameHeaderSize:]...)
	} else {
		_, d := codecs()
		var err error
		raw, err = d.DecodeAll(frame[frameHeaderSize:], (*p)[:0])
		if err != nil {
			return nil, fmt.Errorf("%w: decompress batch: %v", ErrCorrupt, err)
		}
	}
	*p = raw
	return decodeChecked(frame, raw, p)
}

// checkFrame checks that frame is one whole frame.
func checkFrame(frame []byte) error {
	n, err := FrameLen(frame)
	if err != nil {
		return err
	}
	if len(frame) != n {
		return fmt.Errorf("%w: batch frame is %d bytes, header says %d", ErrCorrupt, len(frame), n)
	}
	return nil
}

// decodeBuf returns a recycled buffer of capacity at least n, for a batch
// to decode into (or a frame to be read into).
func decodeBuf(n int) *[]byte {
	p, ok := decodeBufs.Get().(*[]byte)
	if !ok || cap(*p) < n {
		b := make([]byte, 0, n)
		p = &b
	}
	return p
}

// decodeOwned is DecodeBatch for a frame in *p that the batch may keep:
// an uncompressed frame's ops point into it (the batch's Release gives it
// back to the pool); otherwise the caller keeps *p.
func decodeOwned(p *[]byte) (b *Batch, kept bool, err error) {
	frame := *p
	if len(frame) < 4 || string(frame[:4]) != frameMagicRaw {
		b, err = DecodeBatch(frame)
		return b, false, err
	}
	if err := checkFrame(frame); err != nil {
		return nil, false, err
	}
	b, err = decodeChecked(frame, frame[frameHeaderSize:], p)
	return b, err == nil, err
}

// decodeChecked checks raw (frame's batch) against the frame's length and
// checksum and decodes it; the batch keeps p (the buffer raw is in).
func decodeChecked(frame, raw []byte, p *[]byte) (*Batch, error) {
	rawLen := int(binary.LittleEndian.Uint32(frame[4:]))
	want := binary.LittleEndian.Uint32(frame[12:])
	bad := fmt.Errorf("%w: batch checksum mismatch", ErrCorrupt)
	if len(raw) != rawLen {
		return nil, bad
	}
	v2 := string(frame[:4]) == frameMagicRaw
	if !v2 && crc32.Checksum(raw, castagnoli) != want {
		return nil, bad
	}
	b, sum, err := decodeRaw(raw, v2)
	if err == nil && v2 && sum != want {
		err = bad
	}
	if err != nil {
		return nil, err
	}
	b.buf = p
	return b, nil
}

// decodeRaw decodes a raw batch. With v2 (an "SRB2" frame's) each write's
// data is followed by its block checksums, checked here and kept in
// op.Sums, and sum is the CRC32C of every byte but the writes' data.
func decodeRaw(raw []byte, v2 bool) (b *Batch, sum uint32, err error) {
	le := binary.LittleEndian
	bad := func(what string) error { return fmt.Errorf("%w: batch %s", ErrCorrupt, what) }
	if len(raw) < 37 {
		return nil, sum, bad("header is short")
	}
	if v2 {
		sum = crc32.Update(0, castagnoli, raw[:37])
	}
	b = &Batch{From: le.Uint64(raw), To: le.Uint64(raw[8:]), Time: int64(le.Uint64(raw[16:])), Size: int64(le.Uint64(raw[24:])), Diff: raw[32]&1 != 0, Partial: raw[32]&2 != 0, NoSync: raw[32]&4 != 0}
	nops := le.Uint32(raw[33:])
	r := raw[37:]
	if uint64(nops) > uint64(len(r))/opHeaderSize {
		return nil, sum, bad("op count is larger than the batch")
	}
	b.Ops = make([]Op, 0, nops)
	for i := uint32(0); i < nops; i++ {
		if len(r) < opHeaderSize {
			return nil, sum, bad("op header is short")
		}
		op := Op{Kind: OpKind(r[0]), Seq: le.Uint64(r[1:]), Time: int64(le.Uint64(r[9:])), Offset: le.Uint64(r[17:]), Length: le.Uint64(r[25:]),
			NoHole: r[33]&1 != 0, Scheduled: r[33]&2 != 0, AppConsistent: r[33]&4 != 0}
		dl, nl, ll := int(le.Uint32(r[34:])), int(le.Uint16(r[38:])), int(le.Uint16(r[40:]))
		if v2 {
			sum = crc32.Update(sum, castagnoli, r[:opHeaderSize])
		}
		r = r[42:]
		sl := 0
		if v2 && op.Kind == OpWrite {
			sl = sumsLen(dl)
		}
		if dl+sl+nl+ll > len(r) {
			return nil, sum, bad("op is longer than the batch")
		}
		if op.Kind < OpWrite || op.Kind > OpPoint {
			return nil, sum, bad(fmt.Sprintf("has unknown op kind %d", op.Kind))
		}
		if dl > 0 {
			op.Data = r[:dl:dl]
		}
		r = r[dl:]
		if sl > 0 {
			op.Sums = r[:sl:sl]
			sum = crc32.Update(sum, castagnoli, r[:sl+nl+ll])
			for k, d := 0, op.Data; len(d) > 0; k++ {
				n := min(len(d), cdp.BlockSize)
				if cdp.Checksum(d[:n]) != le.Uint32(op.Sums[4*k:]) {
					return nil, sum, fmt.Errorf("%w: batch checksum mismatch (block %d of a write at byte %d)", ErrCorrupt, k, op.Offset)
				}
				d = d[n:]
			}
		} else if v2 {
			sum = crc32.Update(sum, castagnoli, r[:nl+ll])
		}
		op.Name = string(r[sl : sl+nl])
		op.Label = string(r[sl+nl : sl+nl+ll])
		r = r[sl+nl+ll:]
		b.Ops = append(b.Ops, op)
	}
	if len(r) != 0 {
		return nil, sum, bad("has trailing bytes")
	}
	return b, sum, nil
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
