package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
)

// goWithoutBlockSizes enters "vol" without asking for block sizes: the
// client made no promise about the maximum.
func goWithoutBlockSizes(t *testing.T, ts *testServer, structured bool) *client {
	t.Helper()
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	if structured {
		c.sendOpt(optStructuredReply, nil)
		if r := c.readOptReply(); r.typ != repAck {
			t.Fatalf("STRUCTURED_REPLY: reply %#x", r.typ)
		}
		c.simple = false
	}
	c.sendOpt(optGo, infoPayload("vol"))
	if _, typ := parseInfos(t, c.optReplies()); typ != repAck {
		t.Fatalf("GO: %#x", typ)
	}
	return c
}

// readLongReply reads a READ's whole reply: the data of every chunk, in
// order, checked to be contiguous; the number of chunks; and the errno of
// an error chunk or simple reply.
func readLongReply(t *testing.T, c *client, off uint64, length uint32) (data []byte, chunks int, errno uint32) {
	t.Helper()
	for {
		r := c.readReply()
		if r.handle != 7 {
			t.Fatalf("reply handle %d, want 7", r.handle)
		}
		chunks++
		if r.errno != 0 {
			return data, chunks, r.errno
		}
		if !r.structured {
			return r.data, 1, 0
		}
		if r.typ != replyTypeOffsetData {
			t.Fatalf("chunk type %d", r.typ)
		}
		if got := binary.BigEndian.Uint64(r.data); got != off+uint64(len(data)) {
			t.Fatalf("chunk at %d, want %d", got, off+uint64(len(data)))
		}
		data = append(data, r.data[8:]...)
		if r.flags&replyFlagDone != 0 {
			if len(data) != int(length) {
				t.Fatalf("DONE after %d bytes, want %d", len(data), length)
			}
			return data, chunks, 0
		}
	}
}

// A client that did not negotiate block sizes may send READs and WRITEs
// longer than the 32 MiB maximum (the spec's default maximum is the export
// size). They succeed, and are served in chunks: the device never sees a
// piece larger than longChunk, and the connection's byte budget holds.
func TestLongRequests(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		x := newMemExporter()
		dev := newMemDev(160 << 20)
		x.add("vol", dev, "")
		ts := startServer(t, x, Options{MaxBytesInFlight: 8 << 20})
		c := goWithoutBlockSizes(t, ts, structured)
		dev.fast = func(int64) (bool, error) { return true, nil } // every read through ReadAt
		for _, n := range []uint32{40 << 20, 64 << 20} {
			off := uint64(4096 + 512) // unaligned too
			want := pattern(int(n), byte(n>>20))
			writes := dev.writes.Load()
			if r := c.do(cmdFlagFUA, cmdWrite, off, n, want); r.errno != 0 {
				t.Fatalf("%d MiB write: %+v", n>>20, r)
			}
			if got, min := dev.writes.Load()-writes, int64(n/longChunk); got < min {
				t.Fatalf("%d MiB write reached the device in %d calls, want at least %d", n>>20, got, min)
			}
			c.sendReq(0, cmdRead, 7, off, n, nil)
			got, chunks, errno := readLongReply(t, c, off, n)
			if errno != 0 || !bytes.Equal(got, want) {
				t.Fatalf("%d MiB read: errno %d, %d bytes, equal %v", n>>20, errno, len(got), bytes.Equal(got, want))
			}
			if structured && chunks != int(n/longChunk) {
				t.Errorf("%d MiB read in %d chunks, want %d", n>>20, chunks, n/longChunk)
			}
		}
		if structured {
			// DF: the data in one chunk.
			c.sendReq(cmdFlagDF, cmdRead, 7, 0, 40<<20, nil)
			if _, chunks, errno := readLongReply(t, c, 0, 40<<20); errno != 0 || chunks != 1 {
				t.Fatalf("DF read: %d chunks, errno %d", chunks, errno)
			}
		}
		// The stream is still in step.
		if r := c.do(0, cmdRead, 0, 4096, nil); r.errno != 0 {
			t.Fatalf("read after long requests: %+v", r)
		}
	})
}

// The device sees each long request in pieces of at most longChunk.
func TestLongRequestPieces(t *testing.T) {
	x := newMemExporter()
	dev := newMemDev(64 << 20)
	x.add("vol", dev, "")
	dev.fast = func(int64) (bool, error) { return true, nil }
	ts := startServer(t, x, Options{})
	c := goWithoutBlockSizes(t, ts, true)
	if r := c.do(0, cmdWrite, 0, 48<<20, pattern(48<<20, 1)); r.errno != 0 {
		t.Fatalf("write: %+v", r)
	}
	c.sendReq(0, cmdRead, 7, 0, 48<<20, nil)
	if _, _, errno := readLongReply(t, c, 0, 48<<20); errno != 0 {
		t.Fatalf("read: errno %d", errno)
	}
	if l := dev.largest.Load(); l != longChunk {
		t.Fatalf("largest piece the device saw: %d, want %d", l, longChunk)
	}
}

// A device error in the middle of a long READ ends a structured reply with
// an error chunk, and the connection goes on; with simple replies, whose
// header has gone out, it closes the connection. An error on the first
// piece is an ordinary error reply.
func TestLongReadErrors(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		x := newMemExporter()
		dev := newMemDev(64 << 20)
		x.add("vol", dev, "")
		dev.fast = func(int64) (bool, error) { return true, nil }
		ts := startServer(t, x, Options{})
		c := goWithoutBlockSizes(t, ts, structured)
		var failAt atomic.Int64 // the socket is no happens-before edge for -race
		failAt.Store(-1)
		dev.hook = func(op string, off int64) error {
			if op == "read" && off == failAt.Load() {
				return errors.New("injected")
			}
			return nil
		}
		failAt.Store(0)
		c.sendReq(0, cmdRead, 7, 0, 40<<20, nil)
		if _, chunks, errno := readLongReply(t, c, 0, 40<<20); errno != errnoIO || chunks != 1 {
			t.Fatalf("error on the first piece: errno %d after %d replies", errno, chunks)
		}
		failAt.Store(2 * longChunk)
		c.sendReq(0, cmdRead, 7, 0, 40<<20, nil)
		if !structured {
			c.read(simpleReplyLen + 2*longChunk)
			c.expectClosed()
			return
		}
		data, chunks, errno := readLongReply(t, c, 0, 40<<20)
		if errno != errnoIO || len(data) != 2*longChunk || chunks != 3 {
			t.Fatalf("error on the third piece: errno %d, %d bytes in %d chunks", errno, len(data), chunks)
		}
		failAt.Store(-1)
		if r := c.do(0, cmdRead, 0, 4096, nil); r.errno != 0 {
			t.Fatalf("read after the error: %+v", r)
		}
	})
}

// Before a long READ writes its reply straight to the socket, everything
// gathered before it goes out: a reply may span a sealed segment and the
// buffer after it (its header fitted, its data did not), and a reply
// written directly must not land between the two.
func TestTakeSenderSendsWhatCameBefore(t *testing.T) {
	var rec recorder
	c := sendConn(&rec)
	c.wmu.Lock()
	c.write(pattern(replyBufSize-100, 1)) // fills the buffer but 100 bytes
	c.write([]byte("header"))             // fits
	c.write(pattern(maxCopied, 2))        // does not: the header ends a sealed segment
	if len(c.queue) != 1 || len(c.out.buf) == 0 {
		t.Fatalf("setup: %d segments queued, %d bytes gathered", len(c.queue), len(c.out.buf))
	}
	c.takeSenderLocked()
	if !c.sending || len(c.queue) != 0 || len(c.out.buf) != 0 {
		t.Fatalf("took the sender's role with %d segments queued and %d bytes gathered", len(c.queue), len(c.out.buf))
	}
	c.sending = false
	c.wmu.Unlock()
	want := append(append(pattern(replyBufSize-100, 1), "header"...), pattern(maxCopied, 2)...)
	if !bytes.Equal(rec.bytes(), want) {
		t.Fatal("what came before the long read did not go out whole and in order")
	}
}
