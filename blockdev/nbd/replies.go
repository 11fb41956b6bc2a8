package nbd

import (
	"encoding/binary"
	"io"
	"net"
)

// Reply batching. A write(2) per reply cost a quarter of the CPU of 4 KiB
// reads at queue depth 32, so replies gather in one buffer (replyBuf, under
// wmu) and go out together. Who flushes, and when:
//
//   - The reader goroutine does not flush while the request bytes it has
//     buffered cover the next header or payload: it will soon, with more
//     replies. Before any call that may block (reading the socket, waiting
//     in the limiter, handing a job to a busy worker pool) it marks itself
//     idle and flushes (readerIdle); after the call it marks itself busy
//     again.
//   - A reply that ends while the reader is idle flushes, unless another
//     reply is waiting for wmu (pending > 0): that one, queued behind, will.
//
// No reply stays in the buffer while nobody is going to flush it. Each reply
// sets unflushed before it looks at idle; the reader sets idle before it
// looks at unflushed (all sequentially consistent atomics). So either the
// reader sees the reply and flushes it, or the reply sees the reader idle
// and flushes itself, or leaves that to the next reply queued behind it,
// and so on to the last, which sees pending == 0. If the reader woke up in
// between, it flushes again before it can block again. Holding a reply while
// the reader waits for the client would deadlock a client that waits for
// that reply.
//
// A READ reply still goes out only after its data was read: the reader's
// inline reads put data into the buffer before the header is committed, and
// workers write a reply only once the device call returned.

// replyBufSize holds the replies of 32 pipelined 4 KiB READs: a client at
// queue depth 32 can get a whole window's replies in one write.
const replyBufSize = 32 * (structuredHeaderLen + 8 + 4096)

// maxFastRead bounds the READs the reader serves inline with TryReadAt.
const maxFastRead = 64 << 10

// Such a READ's reply fits in an empty reply buffer (else this does not
// compile).
var _ [replyBufSize - structuredHeaderLen - 8 - maxFastRead]struct{}

// replyBuf gathers replies for one write to the connection. It is not safe
// for concurrent use: the connection guards it with wmu.
type replyBuf struct {
	w   io.Writer
	buf []byte // replies not yet written; cap(buf) is the size
	vec net.Buffers
	iov [2][]byte // backing array of vec, so writev does not allocate
}

func newReplyBuf(w io.Writer) *replyBuf {
	return &replyBuf{w: w, buf: make([]byte, 0, replyBufSize)}
}

// flush writes out the buffered replies.
func (b *replyBuf) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// free is how many bytes fit before the buffer must be flushed.
func (b *replyBuf) free() int { return cap(b.buf) - len(b.buf) }

// reserve returns the next n free bytes (n <= free()) for the caller to fill
// and commit.
func (b *replyBuf) reserve(n int) []byte { return b.buf[len(b.buf) : len(b.buf)+n] }

// commit appends the first n bytes of the space reserve returned.
func (b *replyBuf) commit(n int) { b.buf = b.buf[:len(b.buf)+n] }

// write appends p. A p larger than the buffer is not copied: it goes out at
// once with what is buffered, in one writev.
func (b *replyBuf) write(p []byte) error {
	if len(p) <= b.free() {
		b.buf = append(b.buf, p...)
		return nil
	}
	if len(p) < cap(b.buf) {
		if err := b.flush(); err != nil {
			return err
		}
		b.buf = append(b.buf, p...)
		return nil
	}
	if len(b.buf) == 0 {
		_, err := b.w.Write(p)
		return err
	}
	b.vec = append(b.iov[:0], b.buf, p)
	_, err := b.vec.WriteTo(b.w)
	b.buf = b.buf[:0]
	return err
}

// readerIdle is called by the reader before a call that may block: from now
// on replies flush themselves, and what is buffered goes out now.
func (c *conn) readerIdle() {
	c.idle.Store(true)
	if !c.unflushed.Load() {
		return // not taking wmu spares a worker that holds it a futex wake
	}
	c.wmu.Lock()
	c.flushLocked()
	c.wmu.Unlock()
}

// readerBusy is called by the reader after a call that may have blocked: it
// flushes again before it next may block, so replies need not.
func (c *conn) readerBusy() { c.idle.Store(false) }

// beginReply takes wmu for one reply; endReply releases it and flushes if
// nobody else will soon (see above). Both the reader and the workers reply
// this way.
func (c *conn) beginReply() {
	c.pending.Add(1)
	c.wmu.Lock()
}

func (c *conn) endReply() {
	c.unflushed.Store(len(c.out.buf) > 0)
	if c.pending.Add(-1) == 0 && c.idle.Load() {
		c.flushLocked()
	}
	c.wmu.Unlock()
}

// flushLocked writes out the buffered replies; under wmu. A write error
// closes the connection, and later replies are dropped.
func (c *conn) flushLocked() {
	if c.werr == nil {
		if c.werr = c.out.flush(); c.werr != nil {
			c.nc.Close()
		}
	}
	c.unflushed.Store(false)
}

// write appends p to the replies; under wmu.
func (c *conn) write(p []byte) {
	if c.werr != nil || len(p) == 0 {
		return
	}
	if c.werr = c.out.write(p); c.werr != nil {
		c.nc.Close()
	}
}

// replyError sends an error reply: a structured error chunk when structured
// replies were negotiated (mandatory for READ), a simple reply otherwise.
func (c *conn) replyError(req *request, errno uint32, msg string) {
	if !c.structured {
		c.replySimple(req.handle, errno)
		return
	}
	msg = shortMessage(msg)
	c.beginReply()
	defer c.endReply()
	putChunk(c.whdr[:], req.handle, replyFlagDone, replyTypeError, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(c.whdr[structuredHeaderLen:], errno)
	binary.BigEndian.PutUint16(c.whdr[structuredHeaderLen+4:], uint16(len(msg)))
	c.write(c.whdr[:structuredHeaderLen+6])
	c.write([]byte(msg))
}

// replySimple sends a simple reply without payload. With structured replies
// negotiated the spec still allows it for every command but READ.
func (c *conn) replySimple(handle uint64, errno uint32) {
	c.beginReply()
	defer c.endReply()
	putSimple(c.whdr[:], handle, errno)
	c.write(c.whdr[:simpleReplyLen])
}

// readHeaderLen is the length of a successful READ reply's header (before
// the data) on this connection.
func (c *conn) readHeaderLen() int {
	if c.structured {
		return structuredHeaderLen + 8
	}
	return simpleReplyLen
}

// putReadHeader puts into b the header of a successful READ reply carrying
// req.length > 0 bytes; it is readHeaderLen bytes long.
func (c *conn) putReadHeader(b []byte, req *request) {
	if !c.structured {
		putSimple(b, req.handle, 0)
		return
	}
	// One chunk carries all the data, so DF is honoured.
	putChunk(b, req.handle, replyFlagDone, replyTypeOffsetData, 8+req.length)
	binary.BigEndian.PutUint64(b[structuredHeaderLen:], req.off)
}

func putSimple(b []byte, handle uint64, errno uint32) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

func putChunk(b []byte, handle uint64, flags, typ uint16, length uint32) {
	binary.BigEndian.PutUint32(b[0:4], magicStructuredReply)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], handle)
	binary.BigEndian.PutUint32(b[16:20], length)
}
