package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testLogger logs to the test output at debug level when -v is given.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// testServer is a Server listening on a Unix socket.
type testServer struct {
	*Server
	sock string
	x    *memExporter
	errc chan error
}

func startServer(t testing.TB, x *memExporter, opts Options) *testServer {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	// Unix socket paths are short-limited; t.TempDir can be too long.
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(x, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: srv, sock: sock, x: x, errc: make(chan error, 1)}
	go func() { ts.errc <- ts.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ts.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-ts.errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
		os.RemoveAll(dir)
		if n := ts.panics.Load(); n != 0 {
			t.Errorf("server recovered %d panics", n)
		}
		if n := x.open.Load(); n != 0 {
			t.Errorf("%d exports left open", n)
		}
		if n := x.doubleClose.Load(); n != 0 {
			t.Errorf("%d exports closed twice", n)
		}
	})
	return ts
}

func (ts *testServer) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + ts.sock
}

// client is a minimal NBD client for protocol tests.
type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader

	mu       sync.Mutex
	readLens map[uint64]uint32 // simple-reply READ lengths by handle
	simple   bool              // structured replies not negotiated
}

func dial(t testing.TB, ts *testServer) *client {
	t.Helper()
	nc, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, nc: nc, br: bufio.NewReader(nc), readLens: map[uint64]uint32{}, simple: true}
}

func (c *client) write(p []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(p); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// expectClosed asserts that the server closes the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c.br)
	// A server closing with unread input makes the kernel send a reset.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Fatalf("want the server to close the connection, got %v after %d bytes", err, n)
	}
}

// greet reads the server greeting and sends client flags.
func (c *client) greet(cflags uint32) uint16 {
	c.t.Helper()
	b := c.read(18)
	if binary.BigEndian.Uint64(b) != magicNBD || binary.BigEndian.Uint64(b[8:]) != magicOption {
		c.t.Fatalf("bad greeting % x", b)
	}
	c.write(binary.BigEndian.AppendUint32(nil, cflags))
	return binary.BigEndian.Uint16(b[16:])
}

func (c *client) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	h := c.read(20)
	if binary.BigEndian.Uint64(h) != magicOptionReply {
		c.t.Fatalf("bad option reply magic % x", h)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = c.read(int(binary.BigEndian.Uint32(h[16:])))
	return r
}

// optReplies reads replies up to and including the final one (ACK or error).
func (c *client) optReplies() []optReply {
	c.t.Helper()
	var out []optReply
	for {
		r := c.readOptReply()
		out = append(out, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

func infoPayload(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaPayload(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// exportInfo is what INFO/GO reported.
type exportInfo struct {
	size                 uint64
	flags                uint16
	name, desc           string
	min, pref, max       uint32
	hasName, hasDesc, bs bool
}

func parseInfos(t testing.TB, rs []optReply) (exportInfo, uint32) {
	t.Helper()
	var ei exportInfo
	for _, r := range rs {
		switch r.typ {
		case repInfo:
			switch binary.BigEndian.Uint16(r.data) {
			case infoExport:
				if len(r.data) != 12 {
					t.Fatalf("INFO_EXPORT length %d", len(r.data))
				}
				ei.size = binary.BigEndian.Uint64(r.data[2:])
				ei.flags = binary.BigEndian.Uint16(r.data[10:])
			case infoName:
				ei.name, ei.hasName = string(r.data[2:]), true
			case infoDescription:
				ei.desc, ei.hasDesc = string(r.data[2:]), true
			case infoBlockSize:
				if len(r.data) != 14 {
					t.Fatalf("INFO_BLOCK_SIZE length %d", len(r.data))
				}
				ei.bs = true
				ei.min = binary.BigEndian.Uint32(r.data[2:])
				ei.pref = binary.BigEndian.Uint32(r.data[6:])
				ei.max = binary.BigEndian.Uint32(r.data[10:])
			}
		case repAck:
		default:
			return ei, r.typ
		}
	}
	return ei, repAck
}

// negotiate greets with NO_ZEROES, optionally negotiates structured replies
// and base:allocation, then GOes to name requesting block sizes.
func (c *client) negotiate(name string, structured, meta bool) exportInfo {
	c.t.Helper()
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	return c.goTo(name, structured, meta)
}

// goTo is negotiate after the greeting.
func (c *client) goTo(name string, structured, meta bool) exportInfo {
	c.t.Helper()
	if structured {
		c.sendOpt(optStructuredReply, nil)
		if r := c.readOptReply(); r.typ != repAck {
			c.t.Fatalf("STRUCTURED_REPLY: reply %#x", r.typ)
		}
		c.simple = false
	}
	if meta {
		c.sendOpt(optSetMetaContext, metaPayload(name, metaBaseAllocation))
		rs := c.optReplies()
		if len(rs) != 2 || rs[0].typ != repMetaContext {
			c.t.Fatalf("SET_META_CONTEXT: %+v", rs)
		}
	}
	c.sendOpt(optGo, infoPayload(name, infoBlockSize))
	ei, typ := parseInfos(c.t, c.optReplies())
	if typ != repAck {
		c.t.Fatalf("GO %q: reply %#x", name, typ)
	}
	return ei
}

func (c *client) sendReq(flags, typ uint16, handle, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(b, magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	if typ == cmdRead {
		c.mu.Lock()
		c.readLens[handle] = length
		c.mu.Unlock()
	}
	c.write(append(b, payload...))
}

// reply is one simple reply or one structured chunk.
type reply struct {
	structured bool
	handle     uint64
	errno      uint32
	flags, typ uint16
	data       []byte // READ data (simple), or the chunk payload
	msg        string
}

func (c *client) readReply() reply {
	c.t.Helper()
	m := c.read(4)
	switch binary.BigEndian.Uint32(m) {
	case magicSimpleReply:
		h := c.read(12)
		r := reply{errno: binary.BigEndian.Uint32(h), handle: binary.BigEndian.Uint64(h[4:])}
		c.mu.Lock()
		n, isRead := c.readLens[r.handle]
		delete(c.readLens, r.handle)
		c.mu.Unlock()
		if isRead && r.errno == 0 {
			r.data = c.read(int(n))
		}
		return r
	case magicStructuredReply:
		h := c.read(16)
		r := reply{
			structured: true,
			flags:      binary.BigEndian.Uint16(h),
			typ:        binary.BigEndian.Uint16(h[2:]),
			handle:     binary.BigEndian.Uint64(h[4:]),
		}
		r.data = c.read(int(binary.BigEndian.Uint32(h[12:])))
		if r.typ&(1<<15) != 0 {
			if len(r.data) < 6 {
				c.t.Fatalf("short error chunk")
			}
			r.errno = binary.BigEndian.Uint32(r.data)
			ml := int(binary.BigEndian.Uint16(r.data[4:]))
			if 6+ml > len(r.data) {
				c.t.Fatalf("error message length %d past chunk %d", ml, len(r.data))
			}
			r.msg = string(r.data[6 : 6+ml])
		}
		c.mu.Lock()
		delete(c.readLens, r.handle)
		c.mu.Unlock()
		return r
	}
	c.t.Fatalf("bad reply magic % x", m)
	return reply{}
}

// do sends one request and returns its reply.
func (c *client) do(flags, typ uint16, off uint64, length uint32, payload []byte) reply {
	c.t.Helper()
	c.sendReq(flags, typ, 7, off, length, payload)
	r := c.readReply()
	if r.handle != 7 {
		c.t.Fatalf("reply handle %d, want 7", r.handle)
	}
	if r.structured && r.flags&replyFlagDone == 0 {
		c.t.Fatalf("chunk without DONE")
	}
	return r
}

// readData returns the data of a successful READ reply.
func readData(t testing.TB, r reply) []byte {
	t.Helper()
	if r.errno != 0 {
		t.Fatalf("read failed: errno %d %q", r.errno, r.msg)
	}
	if !r.structured {
		return r.data
	}
	switch r.typ {
	case replyTypeOffsetData:
		return r.data[8:]
	case replyTypeNone:
		return nil
	}
	t.Fatalf("unexpected chunk type %d", r.typ)
	return nil
}
