package nbd

import (
	"encoding/binary"
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
// To flush is to seal the buffer into the send queue and send it, or leave
// it to the goroutine sending at that moment (sendLocked, below), which
// sends everything queued before it stops: nothing sealed waits without a
// sender.
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

// maxCopied is the largest payload copied into the reply buffer; a larger
// one (a big READ's data) goes to the socket from its own buffer.
const maxCopied = maxFastRead

// spareBufs bounds the empty reply buffers a connection keeps for reuse.
const spareBufs = 4

// replyBuf gathers small replies for one write to the connection. It is not
// safe for concurrent use: the connection guards it with wmu.
type replyBuf struct {
	buf []byte // cap(buf) is the size
}

func newReplyBuf() *replyBuf { return &replyBuf{buf: make([]byte, 0, replyBufSize)} }

// free is how many bytes fit before the buffer must be sealed.
func (b *replyBuf) free() int { return cap(b.buf) - len(b.buf) }

// reserve returns the next n free bytes (n <= free()) for the caller to fill
// and commit.
func (b *replyBuf) reserve(n int) []byte { return b.buf[len(b.buf) : len(b.buf)+n] }

// commit appends the first n bytes of the space reserve returned.
func (b *replyBuf) commit(n int) { b.buf = b.buf[:len(b.buf)+n] }

// segment is a piece of the reply stream waiting to be sent: a sealed
// buffer of small replies, or the data of one large READ, in a buffer that
// goes back to its pool once sent or in the device's memory (refs) that
// release lets go once sent; and the READ's cost, which goes back to the
// limiter then (none: -1).
type segment struct {
	small   *replyBuf
	data    *[]byte
	refs    [][]byte
	release func()
	cost    int64
}

// Sending. Replies are sealed into a queue of segments under wmu, and the
// goroutine that finds nobody sending becomes the sender: it takes the
// whole queue, writes it with one writev without holding wmu, and repeats
// until the queue is empty. A goroutine that seals while another sends
// leaves at once; the sender takes its segment on its next round. So a
// worker writing a 1 MiB reply no longer holds wmu while the socket takes
// it: the reader keeps answering small READs into the next buffer, and at
// queue depth 1 the goroutine that replied sends its own reply, with no
// handoff. (It did not speed up the VM boot mix, 1 MiB reads among small
// ones, as hoped: that mix waits on latency, not on wmu; see
// docs/performance.md.) A large READ's data in the device's memory goes
// out from there (refs), released once sent.

// sealLocked moves the small replies gathered in out to the queue and
// starts an empty buffer; under wmu.
func (c *conn) sealLocked() {
	if len(c.out.buf) == 0 {
		return
	}
	c.queue = append(c.queue, segment{small: c.out})
	c.queued += len(c.out.buf)
	if n := len(c.spare); n > 0 {
		c.out, c.spare = c.spare[n-1], c.spare[:n-1]
	} else {
		c.out = newReplyBuf()
	}
	c.unflushed.Store(false)
}

// sendLocked sends the queue unless another goroutine is sending it; under
// wmu, which it releases while it writes.
func (c *conn) sendLocked() {
	if c.sending || len(c.queue) == 0 {
		return
	}
	c.sending = true
	c.sendQueueLocked()
}

// sendQueueLocked sends the queue until it is empty, then ends sending;
// the caller set sending. Under wmu, which it releases while it writes.
func (c *conn) sendQueueLocked() {
	for {
		if len(c.queue) == 0 {
			// Replies that ended while the last batch was written
			// waited in out for this sender (flushLocked): one write
			// for all of them.
			c.sealLocked()
			if len(c.queue) == 0 {
				break
			}
		}
		batch := c.queue
		c.queue = c.sent[:0]
		werr := c.werr
		sent := c.queuedLen(batch)
		c.wmu.Unlock()
		if werr == nil {
			vec := c.vec[:0]
			for _, s := range batch {
				switch {
				case s.small != nil:
					vec = append(vec, s.small.buf)
				case s.data != nil:
					vec = append(vec, *s.data)
				default:
					vec = append(vec, s.refs...)
				}
			}
			c.vec = vec
			bufs := net.Buffers(vec) // WriteTo consumes its receiver
			_, werr = bufs.WriteTo(c.w)
			clear(vec)
		}
		for i := range batch {
			s := &batch[i]
			if s.small != nil {
				continue
			}
			if s.data != nil {
				putBuf(s.data)
			} else {
				s.release()
			}
			if s.cost >= 0 {
				c.lim.release(s.cost)
			}
		}
		c.wmu.Lock()
		c.queued -= sent
		c.sendDone.Broadcast() // replies may wait for the queue to shrink (endReply)
		if werr != nil && c.werr == nil {
			c.werr = werr
			c.nc.Close()
		}
		for i, s := range batch {
			if s.small != nil && len(c.spare) < spareBufs {
				s.small.buf = s.small.buf[:0]
				c.spare = append(c.spare, s.small)
			}
			batch[i] = segment{}
		}
		c.sent = batch
	}
	c.sending = false
	c.sendDone.Broadcast() // a long READ may wait to send (long.go)
}

// queuedLen is the bytes of batch, as counted in queued; under wmu.
func (c *conn) queuedLen(batch []segment) int {
	n := 0
	for _, s := range batch {
		switch {
		case s.small != nil:
			n += len(s.small.buf)
		case s.data != nil:
			n += len(*s.data)
		default:
			for _, r := range s.refs {
				n += len(r)
			}
		}
	}
	return n
}

// maxQueued bounds the reply bytes queued for a sender that the socket
// keeps waiting: past it, a reply waits (endReply) for the queue to
// shrink, as it waited for the socket before there was a queue. A client
// that sends requests and reads no replies cannot make the server hold
// more than this.
const maxQueued = 8 << 20

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

// holdReplies keeps the replies that follow from flushing themselves until
// releaseReplies, which flushes them together if nobody else will soon.
func (c *conn) holdReplies() { c.pending.Add(1) }

func (c *conn) releaseReplies() {
	c.wmu.Lock()
	c.endReply()
}

func (c *conn) endReply() {
	c.unflushed.Store(len(c.out.buf) > 0)
	if c.pending.Add(-1) == 0 && c.idle.Load() {
		c.flushLocked()
	}
	for c.queued > maxQueued && c.sending && c.werr == nil {
		c.sendDone.Wait()
	}
	c.wmu.Unlock()
}

// flushLocked sends the gathered replies (or leaves them to the goroutine
// sending now); under wmu. A write error closes the connection, and later
// replies are dropped.
func (c *conn) flushLocked() {
	if c.sending {
		// The sender takes out once its write returns: sealing it now
		// would cost a buffer (often a fresh one) for a few replies
		// and a write of its own.
		return
	}
	c.sealLocked()
	c.sendLocked()
}

// write appends a small reply part p (at most maxCopied bytes) to out;
// under wmu.
func (c *conn) write(p []byte) {
	if len(p) > c.out.free() {
		c.sealLocked()
	}
	c.out.buf = append(c.out.buf, p...)
}

// writeData queues a large READ's data after its header, handing its
// buffer or refs (and its cost in the limiter) to the sender, and sends;
// under wmu.
func (c *conn) writeData(s segment) {
	c.sealLocked()
	c.queue = append(c.queue, s)
	if s.data != nil {
		c.queued += len(*s.data)
	}
	for _, r := range s.refs {
		c.queued += len(r)
	}
	c.sendLocked()
}

// replyError sends an error reply: a structured error chunk when structured
// replies were negotiated (mandatory for READ), a simple reply otherwise.
func (c *conn) replyError(req *request, errno uint32, msg string) {
	if !c.structured {
		c.replySimple(req.handle, errno)
		return
	}
	c.beginReply()
	defer c.endReply()
	c.writeErrorChunk(req.handle, errno, msg)
}

// writeErrorChunk appends an error chunk that ends a structured reply;
// under wmu.
func (c *conn) writeErrorChunk(handle uint64, errno uint32, msg string) {
	msg = shortMessage(msg)
	putChunk(c.whdr[:], handle, replyFlagDone, replyTypeError, uint32(6+len(msg)))
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
