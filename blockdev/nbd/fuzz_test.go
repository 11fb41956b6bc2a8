package nbd

import (
	"encoding/binary"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

func reqBytes(flags, typ uint16, handle, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func FuzzRequest(f *testing.F) {
	f.Add(reqBytes(0, cmdRead, 1, 0, 4096), uint8(0), uint64(1<<20), uint8(9), uint32(32<<20))
	f.Add(reqBytes(cmdFlagFUA, cmdWrite, 2, 4096, 512), uint8(0x3f), uint64(1<<20), uint8(9), uint32(1<<20))
	f.Add(reqBytes(cmdFlagNoHole|cmdFlagFastZero, cmdWriteZeroes, 3, 0, 0), uint8(0x04), uint64(0), uint8(0), uint32(512))
	f.Add(reqBytes(cmdFlagReqOne, cmdBlockStatus, 4, math.MaxUint64-10, 100), uint8(0x18), uint64(math.MaxUint64), uint8(12), uint32(4096))
	f.Add(reqBytes(cmdFlagDF, cmdRead, 5, 1, 1), uint8(0x30), uint64(4096), uint8(12), uint32(4096))
	f.Add(reqBytes(0, cmdFlush, 6, 0, 0), uint8(0x01), uint64(0), uint8(0), uint32(0))
	f.Add([]byte("garbage"), uint8(0), uint64(0), uint8(0), uint32(0))
	f.Fuzz(func(t *testing.T, in []byte, capBits uint8, size uint64, minShift uint8, maxBlock uint32) {
		var hdr [requestHeaderLen]byte
		copy(hdr[:], in)
		req, err := parseRequest(&hdr)
		if binary.BigEndian.Uint32(hdr[:4]) != magicRequest {
			if err == nil {
				t.Fatal("bad magic accepted")
			}
			return
		}
		if err != nil {
			t.Fatalf("good magic refused: %v", err)
		}
		if req.flags != binary.BigEndian.Uint16(hdr[4:]) || req.typ != binary.BigEndian.Uint16(hdr[6:]) ||
			req.handle != binary.BigEndian.Uint64(hdr[8:]) || req.off != binary.BigEndian.Uint64(hdr[16:]) ||
			req.length != binary.BigEndian.Uint32(hdr[24:]) {
			t.Fatalf("decoded %+v from % x", req, hdr)
		}
		caps := exportCaps{
			readOnly:    capBits&0x01 != 0,
			trim:        capBits&0x02 != 0,
			zero:        capBits&0x04 != 0,
			blockStatus: capBits&0x08 != 0,
			structured:  capBits&0x10 != 0,
			strictAlign: capBits&0x20 != 0,
			minBlock:    1 << (minShift % 17),
			maxBlock:    maxBlock,
		}
		errno, msg := caps.check(&req, size)
		if errno != 0 {
			allowed := []uint32{errnoPerm, errnoInval, errnoNoSpc}
			if !slices.Contains(allowed, errno) || msg == "" {
				t.Fatalf("errno %d %q", errno, msg)
			}
			return
		}
		// Accepted: every rule the spec sets must hold.
		known := []uint16{cmdRead, cmdWrite, cmdFlush, cmdTrim, cmdCache, cmdWriteZeroes, cmdBlockStatus}
		if !slices.Contains(known, req.typ) {
			t.Fatalf("accepted command %d", req.typ)
		}
		allowed := cmdFlagFUA
		switch req.typ {
		case cmdRead:
			if caps.structured {
				allowed |= cmdFlagDF
			}
		case cmdWriteZeroes:
			allowed |= cmdFlagNoHole | cmdFlagFastZero
		case cmdBlockStatus:
			allowed |= cmdFlagReqOne
		}
		if req.flags&^allowed != 0 {
			t.Fatalf("accepted flags %#x on %s", req.flags, cmdName(req.typ))
		}
		if req.typ == cmdFlush {
			if req.off != 0 || req.length != 0 {
				t.Fatal("accepted flush with offset or length")
			}
			return
		}
		end := req.off + uint64(req.length)
		if end < req.off || end > size {
			t.Fatalf("accepted range [%d,+%d) on size %d", req.off, req.length, size)
		}
		if (req.typ == cmdRead || req.typ == cmdWrite) && req.length > caps.maxBlock {
			t.Fatalf("accepted length %d > max %d", req.length, caps.maxBlock)
		}
		if caps.readOnly && (req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes) {
			t.Fatal("accepted a write on a read-only export")
		}
		if req.typ == cmdTrim && !caps.trim || req.typ == cmdWriteZeroes && !caps.zero ||
			req.typ == cmdBlockStatus && (!caps.blockStatus || req.length == 0) {
			t.Fatalf("accepted unsupported %s", cmdName(req.typ))
		}
		if caps.strictAlign && (req.off%uint64(caps.minBlock) != 0 || req.length%caps.minBlock != 0) {
			t.Fatal("accepted a misaligned request")
		}
	})
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// FuzzServeConn feeds arbitrary bytes as a whole client stream (handshake
// and transmission) to ServeConn: it must end, without a panic, with every
// export it opened closed.
func FuzzServeConn(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
	f.Add(cat(flags,
		optBytes(optStructuredReply, nil),
		optBytes(optSetMetaContext, metaPayload("vol", metaBaseAllocation)),
		optBytes(optGo, infoPayload("vol", infoBlockSize, infoName)),
		reqBytes(cmdFlagFUA, cmdWrite, 1, 512, 512), make([]byte, 512),
		reqBytes(cmdFlagDF, cmdRead, 2, 0, 4096),
		reqBytes(cmdFlagReqOne, cmdBlockStatus, 3, 0, 1<<20),
		reqBytes(0, cmdTrim, 4, 0, 4096),
		reqBytes(cmdFlagNoHole, cmdWriteZeroes, 5, 4096, 4096),
		reqBytes(0, cmdFlush, 6, 0, 0),
		reqBytes(0, cmdCache, 7, 0, 4096),
		reqBytes(0, cmdRead, 8, 1<<20, 4096),
		reqBytes(0, cmdDisc, 9, 0, 0)))
	f.Add(cat(flags,
		optBytes(optList, nil),
		optBytes(optInfo, infoPayload("other", infoDescription)),
		optBytes(optListMetaContext, metaPayload("vol")),
		optBytes(4242, []byte("x")),
		optBytes(optExportName, []byte("vol")),
		reqBytes(0, cmdWrite, 1, 0, 8), []byte("abcdefgh"),
		reqBytes(0, cmdRead, 2, 0, 8),
		reqBytes(0, 99, 3, 0, 8)))
	f.Add(cat(flags, optBytes(optAbort, nil)))
	f.Add(cat(flags, optBytes(optGo, infoPayload("vol")), reqBytes(0, cmdWrite, 1, 0, 1<<30)))
	f.Add([]byte{0, 0, 0, 4})
	f.Fuzz(func(t *testing.T, in []byte) { serveStream(t, in) })
}

// serveStream runs ServeConn on in and checks how it ended.
func serveStream(t *testing.T, in []byte) *memExporter {
	x := newMemExporter()
	x.add("vol", newMemDev(1<<20), "v")
	x.add("other", newMemDev(8192), "")
	s, err := NewServer(x, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	cli, srv := socketPair(t)
	done := make(chan struct{})
	go func() {
		s.ServeConn(srv)
		close(done)
	}()
	go io.Copy(io.Discard, cli)
	cli.SetWriteDeadline(time.Now().Add(5 * time.Second))
	cli.Write(in) // fails early if the server closes
	// Half-close: the server reads EOF but its replies still flow, so it
	// runs every request in the stream (net.Pipe cannot do this).
	cli.CloseWrite()
	defer cli.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn did not return after the client closed")
	}
	if n := s.panics.Load(); n != 0 {
		t.Fatalf("%d panics recovered", n)
	}
	if n := x.open.Load(); n != 0 {
		t.Fatalf("%d exports left open", n)
	}
	if n := x.doubleClose.Load(); n != 0 {
		t.Fatalf("%d exports closed twice", n)
	}
	return x
}

// socketPair returns two connected Unix stream sockets.
func socketPair(t *testing.T) (*net.UnixConn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0].(*net.UnixConn), conns[1]
}

// TestServeStreamSeed checks that the fuzz seeds reach the device, so the
// fuzzer starts from streams that get through the handshake.
func TestServeStreamSeed(t *testing.T) {
	flags := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
	x := serveStream(t, cat(flags,
		optBytes(optStructuredReply, nil),
		optBytes(optGo, infoPayload("vol", infoBlockSize)),
		reqBytes(cmdFlagFUA, cmdWrite, 1, 512, 512), make([]byte, 512),
		reqBytes(0, cmdDisc, 9, 0, 0)))
	if w := x.devs["vol"].writes.Load(); w != 1 {
		t.Fatalf("%d writes reached the device", w)
	}
}
