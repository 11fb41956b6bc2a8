package nbd

import (
	"encoding/binary"
	"errors"
	"math"
	"net"
)

// Requests longer than the maximum block size. A client that asked for
// block sizes (NBD_INFO_BLOCK_SIZE in NBD_OPT_GO) promised to stay within
// the maximum we sent; one that did not may, by the spec, send READs and
// WRITEs up to the export's size. Such a request is served in chunks of
// longChunk bytes, so it never sits in memory whole and holds only one
// chunk of the connection's MaxBytesInFlight.

// longChunk is the piece of a long request read or written at a time.
const longChunk = 4 << 20

// isLong reports whether a READ or WRITE of n bytes is served in chunks.
func (c *conn) isLong(n uint32) bool { return n > c.s.opts.MaxBlockSize }

// writeLong serves a long WRITE in the reader, which has to read its
// payload anyway: each chunk is read from the socket and written to the
// device before the next is read. After a device error the rest of the
// payload is read and dropped, to keep the stream in step, and the reply
// carries the error (the chunks before it may have been written, as with
// any failed WRITE). It returns false when the connection broke.
func (c *conn) writeLong(req *request) bool {
	cost := bufCost(longChunk)
	c.acquire(cost)
	buf := getBuf(longChunk)
	defer func() {
		putBuf(buf)
		c.lim.release(cost)
	}()
	var err error
	for done := uint32(0); done < req.length; {
		p := (*buf)[:min(longChunk, req.length-done)]
		if !c.readFull(p) {
			return false
		}
		if err == nil {
			_, err = c.exp.WriteAt(p, int64(req.off)+int64(done))
		}
		done += uint32(len(p))
	}
	if err == nil && req.flags&cmdFlagFUA != 0 {
		err = c.exp.Flush()
	}
	if err != nil {
		c.replyDeviceError(req, err)
	} else {
		c.replySimple(req.handle, 0)
	}
	return true
}

// errStreamBroken closes a connection whose long READ failed after a
// simple reply's header had gone out: the client cannot be told any other
// way.
var errStreamBroken = errors.New("nbd: read failed in the middle of a long reply")

// readLong serves a long READ on a worker. The first chunk is read before
// anything is sent, so a device error there is an ordinary error reply.
// Then this goroutine takes the sender's role (sendLocked) for the whole
// reply and writes it straight to the socket, chunk after chunk, so that no
// other reply lands inside it; other replies queue meanwhile and go out
// after it. With structured replies each chunk is its own OFFSET_DATA
// chunk (DONE on the last), and a later device error ends the reply with
// an error chunk; with NBD_CMD_FLAG_DF the data goes as one chunk. With
// simple replies a later error can only close the connection.
func (c *conn) readLong(req *request) {
	df := c.structured && req.flags&cmdFlagDF != 0
	if df && uint64(req.length)+8 > math.MaxUint32 {
		c.replyError(req, errnoOverflow, "read too long for one chunk")
		return
	}
	buf := getBuf(longChunk)
	defer putBuf(buf)
	off := int64(req.off)
	p := (*buf)[:min(longChunk, req.length)]
	if _, err := c.exp.ReadAt(p, off); err != nil {
		c.replyDeviceError(req, err)
		return
	}
	c.beginReply()
	defer c.endReply()
	c.takeSenderLocked()
	ended := false
	defer func() {
		if !ended { // a panic below: let others send again (handle recovers)
			c.sending = false
			c.sendDone.Broadcast()
		}
	}()
	werr, rerr := c.streamLong(req, df, buf, p)
	c.sending = false
	c.sendDone.Broadcast()
	ended = true
	c.finishLong(req, df, werr, rerr)
	c.sendLocked() // what queued meanwhile
}

// takeSenderLocked makes this goroutine the sender with nothing queued
// before it: it waits for the current sender, sends what is queued and
// gathered (replies may span a sealed segment and the buffer after it: a
// reply written straight to the socket must not land between the two),
// and returns holding the role, under wmu.
func (c *conn) takeSenderLocked() {
	for {
		for c.sending {
			c.sendDone.Wait()
		}
		c.sealLocked()
		c.sending = true
		if len(c.queue) == 0 {
			return
		}
		c.sendQueueLocked()
	}
}

// streamLong writes a long READ's reply straight to the socket, without
// wmu (taken again before it returns, also on a panic): the header, the
// first piece p (already read) and the rest, piece by piece. It returns
// the first socket error and the device error that cut the reply short.
func (c *conn) streamLong(req *request, df bool, buf *[]byte, p []byte) (werr, rerr error) {
	werr = c.werr
	c.wmu.Unlock()
	defer c.wmu.Lock()
	off := int64(req.off)
	var hdr [structuredHeaderLen + 8]byte
	write := func(h, data []byte) {
		if werr == nil {
			bufs := net.Buffers{h, data}
			_, werr = bufs.WriteTo(c.w)
		}
	}
	switch {
	case !c.structured:
		putSimple(hdr[:], req.handle, 0)
		write(hdr[:simpleReplyLen], nil)
	case df:
		c.putReadHeader(hdr[:], req)
		write(hdr[:], nil)
	}
	for done := uint32(0); ; {
		if c.structured && !df {
			flags := uint16(0)
			if done+uint32(len(p)) == req.length {
				flags = replyFlagDone
			}
			putChunk(hdr[:], req.handle, flags, replyTypeOffsetData, 8+uint32(len(p)))
			binary.BigEndian.PutUint64(hdr[structuredHeaderLen:], req.off+uint64(done))
			write(hdr[:], p)
		} else {
			write(nil, p)
		}
		done += uint32(len(p))
		if done == req.length || werr != nil {
			break
		}
		p = (*buf)[:min(longChunk, req.length-done)]
		if _, rerr = c.exp.ReadAt(p, off+int64(done)); rerr != nil {
			break
		}
	}
	return werr, rerr
}

// finishLong, under wmu again, ends a long READ's reply cut short by a
// device error, and records a socket error.
func (c *conn) finishLong(req *request, df bool, werr, rerr error) {
	if werr == nil && rerr != nil {
		if c.structured && !df {
			// Not DONE yet: an error chunk ends the reply.
			errno, _ := errnoOf(rerr, false)
			c.log.Error("nbd: long read failed", "offset", req.off, "length", req.length, "err", rerr)
			c.writeErrorChunk(req.handle, errno, rerr.Error())
		} else {
			c.log.Error("nbd: long read failed after its reply began; closing", "offset", req.off, "length", req.length, "err", rerr)
			werr = errStreamBroken
		}
	}
	if werr != nil && c.werr == nil {
		c.werr = werr
		c.nc.Close()
	}
}
