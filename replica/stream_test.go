package replica

import (
	"bytes"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// storedWriter's frames are ordinary zstd frames: the decoder reads
// back what went in, at every size around the 128 KiB block bound.
func TestStoredZstdFrame(t *testing.T) {
	_, dec := codecs()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 128<<10 - 1, 128 << 10, 128<<10 + 1, 1<<20 + 7} {
		in := make([]byte, n)
		for i := range in {
			in[i] = byte(rng.Uint32())
		}
		w := storedWriter{dst: []byte("prefix")}
		w.begin()
		for p := in; len(p) > 0; { // in uneven pieces
			k := min(len(p), 1+rng.IntN(300<<10))
			w.write(p[:k])
			p = p[k:]
		}
		frame := w.finish()
		if w.raw != n || w.crc != crc32.Checksum(in, castagnoli) {
			t.Fatalf("%d bytes: writer counted %d, crc %#x", n, w.raw, w.crc)
		}
		if string(frame[:6]) != "prefix" {
			t.Fatalf("%d bytes: the prefix was overwritten", n)
		}
		out, err := dec.DecodeAll(frame[6:], nil)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("%d bytes: decoded %d bytes, err %v", n, len(out), err)
		}
		if over := len(frame) - 6 - n; over > 14+3*(n/(128<<10)+1) {
			t.Fatalf("%d bytes: %d bytes of overhead", n, over)
		}
	}
}

// A batch of random data is stored (its frame barely larger than the raw
// batch), one of repetitive data compressed; both decode to the batch,
// also when encoded after other frames in a reused buffer.
func TestEncodeBatchCompressesOnlyWhatShrinks(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, 4<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	repetitive := bytes.Repeat([]byte("strata journal block "), (4<<20)/21)
	var buf []byte
	for _, tc := range []struct {
		name       string
		data       []byte
		compressed bool
	}{{"random", random, false}, {"repetitive", repetitive, true}, {"small", random[:1000], true}} {
		b := &Batch{From: 1, To: 2, Size: 8 << 20, Ops: []Op{
			{Kind: OpWrite, Seq: 2, Offset: 4096, Length: uint64(len(tc.data)), Data: tc.data},
			{Kind: OpPoint, Seq: 2},
		}}
		var (
			frame []byte
			raw   int
			err   error
		)
		buf, raw, err = AppendBatch(buf[:0], b)
		frame = buf
		if err != nil {
			t.Fatal(err)
		}
		stored := len(frame) - frameHeaderSize
		if tc.compressed && tc.name != "small" && stored > raw/2 {
			t.Errorf("%s: %d raw bytes stored in %d: not compressed", tc.name, raw, stored)
		}
		if !tc.compressed && (stored < raw || stored > raw+raw/1000+64) {
			t.Errorf("%s: %d raw bytes stored in %d: want stored as is", tc.name, raw, stored)
		}
		got, err := DecodeBatch(frame)
		if err != nil || !got.Equal(b) {
			t.Fatalf("%s: decoded %v, err %v", tc.name, got != nil, err)
		}
	}
}
