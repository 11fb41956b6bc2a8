package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"

	"github.com/strata-storage/strata/blockdev"
)

// transmit is the connection's reader: it parses requests and starts one
// goroutine per valid request. It returns once the client disconnected (or
// the connection was stopped or broke) and every request in flight has
// replied.
func (c *conn) transmit() {
	defer func() {
		close(c.work) // idle workers exit; busy ones finish their request
		c.running.Wait()
		c.wmu.Lock()
		if c.werr == nil {
			c.werr = c.bw.Flush()
		}
		c.wmu.Unlock()
	}()
	for {
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			c.logEnd("transmission", err)
			return
		}
		req, err := parseRequest(&c.hdr)
		if err != nil {
			c.log.Warn("nbd: bad request magic; closing")
			c.nc.Close()
			return
		}
		if req.typ == cmdDisc {
			c.log.Debug("nbd: client disconnected")
			return
		}
		errno, msg := c.caps.check(&req, exportSize(c.exp))
		if req.typ == cmdWrite {
			if errno != 0 {
				// Keep the stream in sync: the payload follows regardless.
				if _, err := c.br.Discard(int(req.length)); err != nil {
					c.logEnd("transmission", err)
					return
				}
				c.replyError(&req, errno, msg)
				continue
			}
			cost := bufCost(req.length)
			c.lim.acquire(cost)
			buf := getBuf(req.length)
			if buf != nil {
				if _, err := io.ReadFull(c.br, *buf); err != nil {
					putBuf(buf)
					c.lim.release(cost)
					c.logEnd("transmission", err)
					return
				}
			}
			c.dispatch(job{req, buf, cost})
			continue
		}
		if errno != 0 {
			c.replyError(&req, errno, msg)
			continue
		}
		var cost int64
		if req.typ == cmdRead {
			cost = bufCost(req.length)
		}
		c.lim.acquire(cost)
		c.dispatch(job{req, nil, cost})
	}
}

// job is a validated request on its way to a worker.
type job struct {
	req  request
	buf  *[]byte
	cost int64
}

// dispatch hands j to an idle worker, or starts one (up to the in-flight
// bound, which the limiter already enforces). Workers live as long as the
// connection, so their stacks, grown once by the storage engine's deep
// calls, are reused instead of grown again for every request. Only the
// reader goroutine calls dispatch.
func (c *conn) dispatch(j job) {
	c.running.Add(1)
	select {
	case c.work <- j:
		return
	default:
	}
	if c.workers < c.s.opts.MaxRequestsInFlight {
		c.workers++
		go c.worker(j)
		return
	}
	c.work <- j
}

func (c *conn) worker(j job) {
	for ok := true; ok; j, ok = <-c.work {
		c.handle(j.req, j.buf, j.cost)
	}
}

// handle runs one validated request and sends its reply. buf holds a WRITE
// payload.
func (c *conn) handle(req request, buf *[]byte, cost int64) {
	defer func() {
		if r := recover(); r != nil {
			c.s.notePanic(c.log, r)
			c.nc.Close()
		}
		putBuf(buf)
		c.lim.release(cost)
		c.running.Done()
	}()
	off := int64(req.off) // check bounded it by the export size
	length := int64(req.length)
	var err error
	switch req.typ {
	case cmdRead:
		c.handleRead(&req)
		return
	case cmdBlockStatus:
		c.handleBlockStatus(&req)
		return
	case cmdWrite:
		if buf != nil {
			_, err = c.exp.WriteAt(*buf, off)
		}
	case cmdFlush:
		err = c.exp.Flush()
	case cmdTrim:
		if length > 0 {
			err = c.trimmer.Trim(off, length)
		}
	case cmdWriteZeroes:
		// FAST_ZERO needs nothing: a Zeroer is always fast.
		if length > 0 {
			err = c.zeroer.WriteZeroes(off, length, req.flags&cmdFlagNoHole != 0)
		}
	case cmdCache:
		// Advisory; the range was checked.
	}
	if err == nil && req.flags&cmdFlagFUA != 0 && req.typ != cmdFlush && req.typ != cmdCache {
		err = c.exp.Flush()
	}
	if err != nil {
		c.replyDeviceError(&req, err)
		return
	}
	c.replySimple(req.handle, 0)
}

func (c *conn) handleRead(req *request) {
	buf := getBuf(req.length)
	defer putBuf(buf)
	var data []byte
	if buf != nil {
		data = *buf
		if _, err := c.exp.ReadAt(data, int64(req.off)); err != nil {
			c.replyDeviceError(req, err)
			return
		}
	}
	c.beginReply()
	defer c.endReply()
	if !c.structured {
		c.putSimple(req.handle, 0)
		c.write(c.whdr[:simpleReplyLen])
		c.write(data)
		return
	}
	if len(data) == 0 {
		c.putChunk(req.handle, replyFlagDone, replyTypeNone, 0)
		c.write(c.whdr[:structuredHeaderLen])
		return
	}
	c.putChunk(req.handle, replyFlagDone, replyTypeOffsetData, uint32(8+len(data)))
	binary.BigEndian.PutUint64(c.whdr[structuredHeaderLen:], req.off)
	c.write(c.whdr[:structuredHeaderLen+8])
	c.write(data)
}

func (c *conn) handleBlockStatus(req *request) {
	var exts []blockdev.Extent
	if c.blockStatus != nil {
		var err error
		exts, err = c.blockStatus.BlockStatus(int64(req.off), int64(req.length))
		if err != nil {
			c.replyDeviceError(req, err)
			return
		}
	} else {
		// Status 0 (allocated, contents unknown) is always a safe answer.
		exts = []blockdev.Extent{{Length: int64(req.length)}}
	}
	limit := maxDescriptors
	if req.flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	buf := getBuf(4 + 8*maxDescriptors)
	defer putBuf(buf)
	p := (*buf)[:4]
	binary.BigEndian.PutUint32(p, metaContextID)
	var covered uint64
	var lastFlags uint32
	n := 0
extents:
	for _, e := range exts {
		if e.Length <= 0 || covered >= uint64(req.length) {
			break
		}
		l := min(uint64(e.Length), uint64(req.length)-covered)
		flags := e.Flags & (stateHole | stateZero)
		switch {
		case n > 0 && flags == lastFlags:
			// Merge runs with equal status; the sum stays <= req.length.
			last := p[len(p)-8:]
			binary.BigEndian.PutUint32(last, binary.BigEndian.Uint32(last)+uint32(l))
		case n == limit:
			break extents
		default:
			p = binary.BigEndian.AppendUint32(p, uint32(l))
			p = binary.BigEndian.AppendUint32(p, flags)
			lastFlags = flags
			n++
		}
		covered += l
	}
	if n == 0 {
		c.log.Error("nbd: device returned no extents", "offset", req.off, "length", req.length)
		c.replyError(req, errnoIO, "no block status")
		return
	}
	c.beginReply()
	defer c.endReply()
	c.putChunk(req.handle, replyFlagDone, replyTypeBlockStatus, uint32(len(p)))
	c.write(c.whdr[:structuredHeaderLen])
	c.write(p)
}

// replyDeviceError answers a request whose device call failed, logging
// errors the client did not cause.
func (c *conn) replyDeviceError(req *request, err error) {
	errno, expected := errnoOf(err, req.typ == cmdWrite || req.typ == cmdWriteZeroes)
	level := slog.LevelError
	if expected {
		level = slog.LevelDebug
	}
	c.log.Log(context.Background(), level, "nbd: request failed", "cmd", cmdName(req.typ), "offset", req.off,
		"length", req.length, "handle", req.handle, "errno", errno, "err", err)
	c.replyError(req, errno, err.Error())
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
	c.putChunk(req.handle, replyFlagDone, replyTypeError, uint32(6+len(msg)))
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
	c.putSimple(handle, errno)
	c.write(c.whdr[:simpleReplyLen])
}

func (c *conn) beginReply() {
	c.pending.Add(1)
	c.wmu.Lock()
}

func (c *conn) endReply() {
	if c.pending.Add(-1) == 0 && c.werr == nil {
		c.werr = c.bw.Flush()
		if c.werr != nil {
			c.nc.Close()
		}
	}
	c.wmu.Unlock()
}

// write appends to the reply stream; under wmu. After a failure the
// connection is closed and further replies are dropped.
func (c *conn) write(p []byte) {
	if c.werr != nil || len(p) == 0 {
		return
	}
	if _, c.werr = c.bw.Write(p); c.werr != nil {
		c.nc.Close()
	}
}

func (c *conn) putSimple(handle uint64, errno uint32) {
	binary.BigEndian.PutUint32(c.whdr[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(c.whdr[4:8], errno)
	binary.BigEndian.PutUint64(c.whdr[8:16], handle)
}

func (c *conn) putChunk(handle uint64, flags, typ uint16, length uint32) {
	binary.BigEndian.PutUint32(c.whdr[0:4], magicStructuredReply)
	binary.BigEndian.PutUint16(c.whdr[4:6], flags)
	binary.BigEndian.PutUint16(c.whdr[6:8], typ)
	binary.BigEndian.PutUint64(c.whdr[8:16], handle)
	binary.BigEndian.PutUint32(c.whdr[16:20], length)
}
