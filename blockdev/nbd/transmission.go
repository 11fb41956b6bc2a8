package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"

	"github.com/strata-storage/strata/blockdev"
)

// transmit is the connection's reader: it parses requests, serves READs the
// device has in memory itself (readInline) and hands every other valid
// request to a worker. It returns once the client disconnected (or the
// connection was stopped or broke) and every request in flight has replied.
// See replies.go for when the replies it and the workers queue are flushed.
func (c *conn) transmit() {
	c.out = newReplyBuf()
	c.sendDone.L = &c.wmu
	c.bw = nil   // the handshake's writer; replies go through c.out
	c.sock.c = c // reads that would block flush the replies first
	defer func() {
		c.readerIdle() // from here on, every reply flushes itself
		close(c.work)  // idle workers exit; busy ones finish their request
		c.running.Wait()
	}()
	for {
		if !c.readFull(c.hdr[:]) {
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
				if !c.discard(int(req.length)) {
					return
				}
				c.replyError(&req, errno, msg)
				continue
			}
			if c.isLong(req.length) {
				if !c.writeLong(&req) {
					return
				}
				continue
			}
			cost := bufCost(req.length)
			c.acquire(cost)
			buf := getBuf(req.length)
			if buf != nil && !c.readFull(*buf) {
				putBuf(buf)
				c.lim.release(cost)
				return
			}
			if c.batcher != nil && req.flags&cmdFlagFUA == 0 && batchable(&req) {
				if js := c.gatherWrites(job{req: req, buf: buf, cost: cost}); len(js) > 1 {
					c.runBatch(js)
					continue
				}
			}
			if req.flags&cmdFlagFUA == 0 && c.lim.alone() && (c.waiter == nil || !c.waiter.WritesWait()) && !c.handOff(&req) {
				// Nothing else in flight: a worker would only add a
				// goroutine handoff each way. At queue depth 1, and
				// also for pipelined writes that each find the last
				// one done: 4 KiB random writes went 14k -> 20-21k
				// IOPS at QD1 (fresh volume), 80k -> 98k at QD32.
				// Only writes: the engine's WRITE is a memory
				// operation (the journal tail, the index) that waits
				// at most for the journal's back-pressure, while a
				// READ may wait for a disk, and later requests must
				// not queue behind that; a FUA write waits for a
				// flush. The price: requests the client sends while
				// such a write waits for back-pressure are read after
				// it.
				c.running.Add(1)
				c.handle(req, buf, cost)
				continue
			}
			c.dispatch(job{req: req, buf: buf, cost: cost})
			continue
		}
		if errno != 0 {
			c.replyError(&req, errno, msg)
			continue
		}
		var cost int64
		if req.typ == cmdRead {
			if c.refs != nil && req.length >= minRefRead && req.length <= maxFastRead && c.readRefs(&req, -1) {
				continue
			}
			if c.fast != nil && req.length > 0 && req.length <= maxFastRead && c.readInline(&req) {
				continue
			}
			cost = bufCost(req.length)
			if c.isLong(req.length) {
				cost = bufCost(longChunk)
			}
		}
		c.acquire(cost)
		if req.typ == cmdRead && c.fast != nil && req.length > maxFastRead && !c.isLong(req.length) &&
			c.br.Buffered() == 0 && c.lim.alone() && c.readLoneInline(&req, cost) {
			continue
		}
		c.dispatch(job{req: req, cost: cost})
	}
}

// handOff says whether a WRITE that nothing else is in flight with goes
// to a worker all the same: a large one (minHandedWrite) with more
// requests behind it in the socket. The reader then reads those while a
// worker checksums and journals this one, where in the reader the client
// waited on a full socket meanwhile: 1 MiB writes at QD32 went from a
// median of 1.37 to 1.44 GB/s (fio's nbd engine, four alternated runs;
// docs/performance.md, Step 13). A client
// that waits for each reply (nothing behind it) keeps the reader's
// write, which saves the handoff each way.
func (c *conn) handOff(req *request) bool {
	return req.length >= minHandedWrite && (c.br.Buffered() > 0 || c.sock.queued())
}

// minHandedWrite is the smallest WRITE handOff gives a worker: below it
// the checksum and copy cost less than the handoff.
const minHandedWrite = 256 << 10

// readFull reads len(p) request bytes, logging why it failed.
func (c *conn) readFull(p []byte) bool {
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.logEnd("transmission", err)
		return false
	}
	return true
}

// discard skips n request bytes, as readFull reads them.
func (c *conn) discard(n int) bool {
	if _, err := c.br.Discard(n); err != nil {
		c.logEnd("transmission", err)
		return false
	}
	return true
}

// acquire takes a slot and cost bytes from the limiter, flushing the
// replies first when it has to wait.
func (c *conn) acquire(cost int64) {
	if c.lim.tryAcquire(cost) {
		return
	}
	c.readerIdle()
	c.lim.acquire(cost)
	c.readerBusy()
}

// job is a validated request on its way to a worker, or a batch of
// WRITEs (batch set; the other fields unused).
type job struct {
	req   request
	buf   *[]byte
	cost  int64
	batch []job
}

// Writes the client sent back to back go to the device together
// (blockdev.BatchWriter: one journal group, one index commit): at most
// this many, of whole 4 KiB blocks, each at most maxBatchWrite bytes.
const (
	maxBatchWrites = 32
	maxBatchWrite  = 256 << 10
)

// batchable says whether a WRITE may join a batch.
func batchable(r *request) bool {
	return r.length > 0 && r.length <= maxBatchWrite && r.off%4096 == 0 && r.length%4096 == 0
}

// gatherWrites returns first and the plain WRITEs that follow it, whole,
// in what the client has already sent (the read buffer): no read blocks.
// Each has its limiter slot and cost. A request that does not qualify is
// left for the reader.
func (c *conn) gatherWrites(first job) []job {
	js := []job{first}
	size := int(first.req.length)
	for len(js) < maxBatchWrites && c.br.Buffered() >= requestHeaderLen {
		p, err := c.br.Peek(requestHeaderLen)
		if err != nil {
			break
		}
		var h [requestHeaderLen]byte
		copy(h[:], p)
		req, err := parseRequest(&h)
		if err != nil || req.typ != cmdWrite || req.flags != 0 || !batchable(&req) ||
			c.br.Buffered() < requestHeaderLen+int(req.length) || size+int(req.length) > maxBatchWrites*maxBatchWrite/8 {
			break
		}
		if errno, _ := c.caps.check(&req, exportSize(c.exp)); errno != 0 {
			break
		}
		cost := bufCost(req.length)
		if !c.lim.tryAcquire(cost) {
			break
		}
		buf := getBuf(req.length)
		if _, err := c.br.Discard(requestHeaderLen); err != nil {
			putBuf(buf)
			c.lim.release(cost)
			break
		}
		if !c.readFull(*buf) { // buffered: cannot block, and cannot fail
			putBuf(buf)
			c.lim.release(cost)
			c.nc.Close() // the stream is out of step: end it
			break
		}
		js = append(js, job{req: req, buf: buf, cost: cost})
		size += int(req.length)
	}
	return js
}

// runBatch hands a batch of WRITEs to a worker, or runs it here when
// nothing else is in flight (as a lone WRITE runs).
func (c *conn) runBatch(js []job) {
	if c.lim.only(len(js)) && (c.waiter == nil || !c.waiter.WritesWait()) {
		c.running.Add(len(js))
		c.handleBatch(js)
		return
	}
	c.dispatch(job{batch: js})
}

// handleBatch writes a batch with one device call and replies to each of
// its requests.
func (c *conn) handleBatch(js []job) {
	defer func() {
		if r := recover(); r != nil {
			c.s.notePanic(c.log, r)
			c.nc.Close()
		}
		for _, j := range js {
			putBuf(j.buf)
			c.lim.release(j.cost)
			c.running.Done()
		}
	}()
	ws := make([]blockdev.BlockWrite, len(js))
	for i, j := range js {
		ws[i] = blockdev.BlockWrite{Off: int64(j.req.off), Data: *j.buf}
	}
	err := c.batcher.WriteBatch(ws)
	// The batch's replies go out with one write, not one each (they would
	// when the reader is idle, as it is while a mirrored volume's writes
	// wait for the secondary).
	c.holdReplies()
	defer c.releaseReplies()
	for i := range js {
		if err != nil {
			c.replyDeviceError(&js[i].req, err)
			continue
		}
		c.replySimple(js[i].req.handle, 0)
	}
}

// dispatch hands j to an idle worker, or starts one (up to the in-flight
// bound, which the limiter already enforces). Workers live as long as the
// connection, so their stacks, grown once by the storage engine's deep
// calls, are reused instead of grown again for every request. Only the
// reader goroutine calls dispatch.
func (c *conn) dispatch(j job) {
	c.running.Add(max(1, len(j.batch)))
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
	// Every worker is busy (one has released its limiter slot but not yet
	// come back for work): this may block.
	c.readerIdle()
	c.work <- j
	c.readerBusy()
}

func (c *conn) worker(j job) {
	for ok := true; ok; j, ok = <-c.work {
		if j.batch != nil {
			c.handleBatch(j.batch)
			continue
		}
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
		if cost >= 0 {
			c.lim.release(cost)
		}
		c.running.Done()
	}()
	off := int64(req.off) // check bounded it by the export size
	length := int64(req.length)
	var err error
	switch req.typ {
	case cmdRead:
		if c.isLong(req.length) {
			c.readLong(&req)
			return
		}
		if req.length > maxCopied && c.refs != nil && c.readRefs(&req, cost) || c.handleRead(&req, cost) {
			cost = -1 // released already, or by the sender with the data
		}
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

// readInline serves a READ in the reader goroutine when the device has the
// data in memory: it goes straight into the reply buffer, with no goroutine
// handoff, no pooled buffer and no copy. It returns false when the device
// declined; the request then goes to a worker.
func (c *conn) readInline(req *request) bool {
	ok, err := c.tryReadLocked(req)
	if err != nil {
		c.replyDeviceError(req, err)
		return true
	}
	return ok
}

// tryReadLocked is readInline's part under wmu: TryReadAt fills the space
// after the reply header, which is only committed once the data is there.
// Holding wmu meanwhile is fine: TryReadAt does not block.
func (c *conn) tryReadLocked(req *request) (bool, error) {
	c.beginReply()
	defer c.endReply()
	h := c.readHeaderLen()
	n := h + int(req.length)
	if c.out.free() < n {
		c.sealLocked()
		defer c.sendLocked() // before endReply
	}
	if c.werr != nil {
		return true, nil // the connection is closing; the reply would be dropped
	}
	p := c.out.reserve(n)
	ok, err := c.fast.TryReadAt(p[h:], int64(req.off))
	if err != nil || !ok {
		return ok, err
	}
	c.putReadHeader(p, req)
	c.out.commit(len(p))
	if len(c.out.buf) >= inlineFlush {
		c.flushLocked()
	}
	return true, nil
}

// inlineFlush: the reader sends what it answered inline once about eight
// 4 KiB READs' replies are buffered, not only when it would block. With
// the whole window of 32 in one write the client sat idle until the last
// was served, then the server until the next window arrived: the machine
// idled 26% of the time at QD32 (perf), 10% with this, and 4 KiB random
// reads went 132k -> 160k IOPS (fio nbd engine, QD32, cached).
const inlineFlush = 8 * (structuredHeaderLen + 8 + 4096)

// readLoneInline serves a large READ in the reader when nothing else is in
// flight and no further request has arrived (a client at queue depth 1
// waits for it anyway) and the device has the data in memory: no goroutine
// handoff each way (1 MiB sequential reads at QD1 went 1.8 -> 2.1 GB/s). A
// client that pipelines gets workers, which copy replies in parallel (in
// the reader, QD32 streams fell to one core's copying). It releases cost
// when it served the read.
func (c *conn) readLoneInline(req *request, cost int64) bool {
	if c.refs != nil && c.readRefs(req, cost) {
		return true
	}
	buf := getBuf(req.length)
	ok, err := c.fast.TryReadAt(*buf, int64(req.off))
	if err == nil && ok {
		if !c.replyRead(req, buf, cost) {
			putBuf(buf)
			c.lim.release(cost)
		}
		return true
	}
	putBuf(buf)
	if err != nil {
		c.replyDeviceError(req, err)
		c.lim.release(cost)
	}
	return err != nil
}

// replyRead sends a successful READ reply carrying *buf. A small payload is
// copied into the reply buffer; a large one is handed to the sender with
// its cost, which then returns both (reported true).
func (c *conn) replyRead(req *request, buf *[]byte, cost int64) bool {
	c.beginReply()
	defer c.endReply()
	c.putReadHeader(c.whdr[:], req)
	c.write(c.whdr[:c.readHeaderLen()])
	if len(*buf) <= maxCopied {
		c.write(*buf)
		return false
	}
	c.writeData(segment{data: buf, cost: cost})
	return true
}

// minRefRead is the smallest READ served from the device's memory without
// a copy: smaller ones are copied into the reply buffer, where they go out
// many to a write.
const minRefRead = 32 << 10

// readRefs serves a READ from the device's memory without a copy
// (blockdev.RefReader), if it holds the data: the reply's data goes to the
// socket from the device's slices, which, and cost, the sender releases
// once sent (cost -1: the read holds none, as the reader's inline reads).
// It does not block: the reader uses it too. It reports whether it
// replied.
func (c *conn) readRefs(req *request, cost int64) bool {
	bufs, release, ok, err := c.refs.ReadRefs(int64(req.off), int(req.length))
	switch {
	case err != nil:
		c.replyDeviceError(req, err)
		if cost >= 0 {
			c.lim.release(cost)
		}
		return true
	case !ok:
		return false
	}
	c.beginReply()
	defer c.endReply()
	c.putReadHeader(c.whdr[:], req)
	c.write(c.whdr[:c.readHeaderLen()])
	c.writeData(segment{refs: bufs, release: release, cost: cost})
	return true
}

// handleRead serves a READ on a worker; it reports whether it handed its
// buffer and cost to the sender (replyRead).
func (c *conn) handleRead(req *request, cost int64) bool {
	buf := getBuf(req.length)
	if buf == nil {
		c.beginReply()
		defer c.endReply()
		if !c.structured {
			putSimple(c.whdr[:], req.handle, 0)
			c.write(c.whdr[:simpleReplyLen])
			return false
		}
		putChunk(c.whdr[:], req.handle, replyFlagDone, replyTypeNone, 0)
		c.write(c.whdr[:structuredHeaderLen])
		return false
	}
	if _, err := c.exp.ReadAt(*buf, int64(req.off)); err != nil {
		putBuf(buf)
		c.replyDeviceError(req, err)
		return false
	}
	if c.replyRead(req, buf, cost) {
		return true
	}
	putBuf(buf)
	return false
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
	putChunk(c.whdr[:], req.handle, replyFlagDone, replyTypeBlockStatus, uint32(len(p)))
	c.write(c.whdr[:structuredHeaderLen])
	c.write(p)
}

// replyDeviceError answers a request whose device call failed, logging
// errors the client did not cause.
func (c *conn) replyDeviceError(req *request, err error) {
	if errors.Is(err, blockdev.ErrMoved) {
		// No answer: the connection ends once the requests in flight
		// have, and a reconnecting client resends this one where the
		// device is now.
		if c.moved.CompareAndSwap(false, true) {
			c.log.Info("nbd: the device moved to another host; closing the connection without answering, so the client resends", "err", err)
		}
		c.stop()
		return
	}
	errno, expected := errnoOf(err, req.typ == cmdWrite || req.typ == cmdWriteZeroes)
	level := slog.LevelError
	if expected {
		level = slog.LevelDebug
	}
	c.log.Log(context.Background(), level, "nbd: request failed", "cmd", cmdName(req.typ), "offset", req.off,
		"length", req.length, "handle", req.handle, "errno", errno, "err", err)
	c.replyError(req, errno, err.Error())
}
