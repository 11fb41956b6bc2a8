package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/strata-storage/strata/cdp"
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

// An uncompressed frame written from pieces reads back as the batch, in
// place, and a flipped byte anywhere in it is caught.
func TestRawFrame(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	b := &Batch{From: 1, To: 3, Size: 8 << 20, Time: 7, Ops: []Op{
		{Kind: OpWrite, Seq: 2, Offset: 4096, Length: uint64(len(big)), Data: big},
		{Kind: OpPoint, Seq: 2},
		{Kind: OpWrite, Seq: 3, Offset: 0, Length: 4096, Data: big[:4096]},
		{Kind: OpSnapshot, Seq: 3, Name: "s", Label: "l", Scheduled: true},
		{Kind: OpPoint, Seq: 3},
	}}
	var small []byte
	for round := 0; round < 2; round++ { // small reused
		var bufs net.Buffers
		bufs, small, _ = rawFrame([]byte{msgBatch, 0, 0, 0, 0}, b, small)
		var msg bytes.Buffer
		if _, err := bufs.WriteTo(&msg); err != nil {
			t.Fatal(err)
		}
		frame := msg.Bytes()[5:]
		if string(frame[:4]) != frameMagicRaw {
			t.Fatalf("magic %q", frame[:4])
		}
		p := &frame
		got, kept, err := decodeOwned(p)
		if err != nil || !kept || !got.Equal(b) {
			t.Fatalf("round %d: decoded %v, kept %v, err %v", round, got != nil, kept, err)
		}
		if &got.Ops[0].Data[0] != &frame[frameHeaderSize+37+opHeaderSize] {
			t.Fatalf("round %d: the data was copied", round)
		}
		if got, err := DecodeBatch(frame); err != nil || !got.Equal(b) || !bytes.Equal(got.Ops[0].Sums, cdp.BlockChecksums(big)) {
			t.Fatalf("round %d: DecodeBatch: %v", round, err)
		}
		for _, at := range []int{frameHeaderSize, frameHeaderSize + 40, frameHeaderSize + 37 + opHeaderSize + 5000, len(frame) - 1} {
			bad := bytes.Clone(frame)
			bad[at] ^= 0x10
			if _, _, err := decodeOwned(&bad); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("byte %d flipped: err %v", at, err)
			}
		}
	}
	// Block checksums the shipper passes on (from its journal) travel in
	// place of the data's; a wrong one is caught by the receiver.
	b.Ops[0].Sums = cdp.BlockChecksums(big)
	b.Ops[0].Sums[8] ^= 1
	bufs, _, _ := rawFrame(nil, b, nil)
	var frame bytes.Buffer
	bufs.WriteTo(&frame)
	if _, err := DecodeBatch(frame.Bytes()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a wrong block checksum: err %v", err)
	}
}

// A target that does not say it reads uncompressed frames (an older
// server: no "wire" in its state) gets "SRB1" frames; one that does gets
// "SRB2" for a batch that would not shrink.
func TestRemoteFrameVersion(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	b := &Batch{From: 0, To: 1, Size: 1 << 20, Ops: []Op{{Kind: OpWrite, Seq: 1, Length: 1 << 20, Data: data}, {Kind: OpPoint, Seq: 1}}}
	for _, tc := range []struct {
		state string
		magic string
	}{{`{"acked":0}`, frameMagic}, {`{"acked":0,"wire":2}`, frameMagicRaw}} {
		client, server := net.Pipe()
		r := NewRemote(RemoteOptions{Addr: "pipe", Dial: func(context.Context, string, string) (net.Conn, error) { return client, nil }})
		got := make(chan string, 1)
		go func() {
			defer server.Close()
			if _, _, err := readMsg(server); err != nil { // the hello
				got <- err.Error()
				return
			}
			writeMsg(server, msgState, []byte(tc.state))
			typ, frame, err := readMsg(server)
			if err != nil || typ != msgBatch {
				got <- fmt.Sprint(typ, err)
				return
			}
			if back, err := DecodeBatch(frame); err != nil || !back.Equal(b) {
				got <- fmt.Sprint("decode: ", err)
				return
			}
			got <- string(frame[:4])
		}()
		if _, err := r.Open(context.Background(), Hello{Target: "v"}); err != nil {
			t.Fatal(err)
		}
		if err := r.Submit(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		if m := <-got; m != tc.magic {
			t.Errorf("state %s: got %q, want frames %q", tc.state, m, tc.magic)
		}
		r.Close()
	}
}

// Op buffers come in power-of-two classes from 4 KiB to maxOpData, so a
// recycled buffer fits any later op of its class.
func TestOpBufClasses(t *testing.T) {
	for _, c := range []struct {
		n       uint64
		class   int
		capWant int
	}{
		{100, 0, 100}, // below the smallest class: not recycled
		{4096, 0, 4096},
		{4097, 1, 8192},
		{64 << 10, 4, 64 << 10},
		{maxOpData, opBufClasses - 1, maxOpData},
		{maxOpData + 1, -1, maxOpData + 1},
	} {
		if k := opBufClass(c.n); k != c.class {
			t.Errorf("opBufClass(%d) = %d, want %d", c.n, k, c.class)
		}
		b := getOpBuf(c.n)
		if uint64(len(b)) != c.n || cap(b) != c.capWant {
			t.Errorf("getOpBuf(%d): len %d cap %d, want cap %d", c.n, len(b), cap(b), c.capWant)
		}
	}
	if minOpBuf<<(opBufClasses-1) != maxOpData {
		t.Fatalf("the largest class holds %d bytes, not maxOpData", minOpBuf<<(opBufClasses-1))
	}
}

// A sent batch is kept for the next one with its op slice's room and
// nothing else: no op, data, name or flag of the batch sent stays in it
// (the next batch would carry them). A decoded batch (its data lives in a
// receive buffer) and one with room for a first copy's ops are not kept.
func TestRecycledBatches(t *testing.T) {
	b := newBatch(7, 1<<20)
	if b.From != 7 || b.Size != 1<<20 || b.To != 0 || len(b.Ops) != 0 {
		t.Fatalf("new batch %+v", b)
	}
	b.To, b.Time, b.NoSync, b.Diff = 9, 123, true, true
	for i := 0; i < 40; i++ {
		b.Ops = append(b.Ops, Op{Kind: OpWrite, Seq: uint64(i), Offset: 4096, Length: 4096, Data: make([]byte, 4096), Sums: make([]byte, 4), Name: "n", Label: "l"})
	}
	room := cap(b.Ops)
	recycleBatch(b)
	if b.From != 0 || b.To != 0 || b.Time != 0 || b.Size != 0 || b.NoSync || b.Diff || b.Partial || len(b.Ops) != 0 {
		t.Fatalf("recycled batch still holds %+v", b)
	}
	if cap(b.Ops) != room {
		t.Fatalf("recycled batch has room for %d ops, had %d", cap(b.Ops), room)
	}
	for i, op := range b.Ops[:room] {
		if op.Data != nil || op.Sums != nil || op.Name != "" || op.Label != "" || op.Seq != 0 {
			t.Fatalf("op %d of the recycled slice still holds %+v", i, op)
		}
	}
	recycleBatch(nil) // nothing

	big := &Batch{Ops: make([]Op, 0, maxRecycledOps+1)}
	big.Ops = append(big.Ops, Op{Kind: OpPoint, Seq: 3})
	recycleBatch(big)
	if len(big.Ops) != 1 {
		t.Fatal("a batch with room for more than maxRecycledOps ops was recycled")
	}
	bufs, _, _ := rawFrame([]byte{msgBatch, 0, 0, 0, 0}, &Batch{From: 1, To: 2, Ops: []Op{{Kind: OpWrite, Seq: 2, Length: 4096, Data: make([]byte, 4096)}}}, nil)
	var msg bytes.Buffer
	if _, err := bufs.WriteTo(&msg); err != nil {
		t.Fatal(err)
	}
	frame := msg.Bytes()[5:]
	dec, kept, err := decodeOwned(&frame)
	if err != nil || !kept {
		t.Fatalf("decoded: kept %v, err %v", kept, err)
	}
	recycleBatch(dec)
	if dec.To != 2 || len(dec.Ops) != 1 {
		t.Fatal("a decoded batch was recycled: its data lives in a receive buffer")
	}
}
