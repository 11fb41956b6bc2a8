package nbd

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
)

// sockConn is the socket as the connection's reader goroutine reads it
// (directly, or under TLS). In transmission, a read that would block first
// flushes the replies and marks the reader idle (readerIdle, replies.go),
// and marks it busy again once it returns. Writes, deadlines and Close go
// straight to the socket.
//
// Whether a read would block is asked of the socket with a non-blocking
// read, not judged by the reader's buffer running dry: clients such as
// libnbd (fio's nbd engine) send each request with its own write, so the
// buffer runs dry after almost every request while the next ones already
// wait in the socket. Going idle at each of those reads made the reader
// flush what workers had queued at almost every refill, taking wmu from
// them: BenchmarkWrite/qd32 cost 3.6 syscalls and 0.4 context switches per
// request that way, 2.8 and 0.2 with the probe (as before reply batching).
// The price is one read that finds nothing before the reader sleeps, paid
// only when there are replies to hold back. A client that waits for each
// reply before it sends the next request (queue depth 1) makes every probe
// find nothing: after probeMisses such probes in a row the reader stops
// probing for the next probeSkip reads, which saves one read(2) of five
// per request at queue depth 1.
type sockConn struct {
	net.Conn
	c   *conn           // nil until transmission starts
	raw syscall.RawConn // nil: no non-blocking reads, every read may block

	// misses counts probes in a row that found nothing; skip, the reads
	// left that go to sleep without a probe. Only the reader uses them.
	misses, skip int

	// tryRead's arguments and results for rawRead, a method value made
	// once: a closure would be allocated for every read.
	p      []byte
	n      int
	err    error
	readFn func(fd uintptr) bool
}

// sendBuffer is the send buffer asked for on Unix sockets (the kernel caps
// it at net.core.wmem_max).
const sendBuffer = 4 << 20

// probeMisses probes in a row that find nothing stop probing for the next
// probeSkip reads.
const (
	probeMisses = 8
	probeSkip   = 64
)

// errWouldBlock: the socket holds nothing to read now.
var errWouldBlock = errors.New("nbd: read would block")

func newSockConn(nc net.Conn) *sockConn {
	s := &sockConn{Conn: nc}
	if uc, ok := nc.(*net.UnixConn); ok {
		// A 1 MiB read reply fits the socket at once instead of going out in
		// 208 KiB pieces, each a wait for the client to drain the last.
		_ = uc.SetWriteBuffer(sendBuffer)
	}
	if sc, ok := nc.(syscall.Conn); ok && canReadNonblock {
		if raw, err := sc.SyscallConn(); err == nil {
			s.raw = raw
			s.readFn = s.rawRead
		}
	}
	return s
}

func (s *sockConn) Read(p []byte) (int, error) {
	if s.c == nil || len(p) == 0 {
		return s.Conn.Read(p)
	}
	// With no replies to hold back, sleeping at once saves the probe.
	if s.raw != nil && s.c.unflushed.Load() {
		if n, err := s.probe(p); err != errWouldBlock {
			return n, err
		}
	}
	s.c.readerIdle()
	defer s.c.readerBusy()
	return s.Conn.Read(p)
}

// probe is tryRead unless recent probes found nothing (see sockConn); it
// returns errWouldBlock when it did not read.
func (s *sockConn) probe(p []byte) (int, error) {
	if s.skip > 0 {
		s.skip--
		return 0, errWouldBlock
	}
	n, err := s.tryRead(p)
	if err != errWouldBlock {
		s.misses = 0
		return n, err
	}
	if s.misses++; s.misses >= probeMisses {
		s.misses, s.skip = 0, probeSkip
	}
	return 0, errWouldBlock
}

// tryRead reads what the socket holds without waiting for more; it returns
// errWouldBlock when that is nothing.
func (s *sockConn) tryRead(p []byte) (int, error) {
	s.p = p
	err := s.raw.Read(s.readFn) // fails on a closed socket or a passed deadline
	s.p = nil
	switch {
	case err != nil:
		return 0, err
	case errors.Is(s.err, syscall.EAGAIN) || errors.Is(s.err, syscall.EINTR):
		return 0, errWouldBlock
	case s.err != nil:
		return 0, os.NewSyscallError("read", s.err)
	case s.n == 0:
		return 0, io.EOF
	}
	return s.n, nil
}

// queued says whether the socket holds bytes the reader has not read yet:
// the client sent more requests behind the one just read. False when that
// cannot be told (TLS, or not Linux).
func (s *sockConn) queued() bool {
	if s.raw == nil {
		return false
	}
	n := 0
	if err := s.raw.Control(func(fd uintptr) { n = queuedBytes(fd) }); err != nil {
		return false
	}
	return n > 0
}

// rawRead is the callback of raw.Read: one read(2) on the non-blocking
// socket, and done whatever it found.
func (s *sockConn) rawRead(fd uintptr) bool {
	s.n, s.err = readNonblock(fd, s.p)
	return true
}
