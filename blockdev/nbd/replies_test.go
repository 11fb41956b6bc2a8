package nbd

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strata-storage/strata/blockdev"
)

// countingConn counts the server's writes to one connection. It keeps the
// socket's SyscallConn, so the reader still probes it (sock.go).
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func (c countingConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{nc, l.writes}, nil
}

// dialCounting connects to ts through a second listener whose connections
// count the server's writes.
func dialCounting(t testing.TB, ts *testServer) (*client, *atomic.Int64) {
	t.Helper()
	sock := filepath.Join(filepath.Dir(ts.sock), "counting")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	writes := new(atomic.Int64)
	go ts.Serve(countingListener{l, writes}) // Shutdown closes l
	tc := *ts
	tc.sock = sock
	return dial(t, &tc), writes
}

// rq is one request of a pipelined batch.
type rq struct {
	flags, typ  uint16
	handle, off uint64
	length      uint32
	payload     []byte
}

// sendBatch sends rs in one write, as a client with many requests queued.
func (c *client) sendBatch(rs []rq) {
	c.t.Helper()
	var b []byte
	for _, r := range rs {
		if r.typ == cmdRead {
			c.mu.Lock()
			c.readLens[r.handle] = r.length
			c.mu.Unlock()
		}
		b = append(b, reqBytes(r.flags, r.typ, r.handle, r.off, r.length)...)
		b = append(b, r.payload...)
	}
	c.write(b)
}

// readReplies reads n replies (each a simple reply or a chunk with DONE),
// failing on a handle answered twice.
func (c *client) readReplies(n int) map[uint64]reply {
	c.t.Helper()
	got := map[uint64]reply{}
	for range n {
		r := c.readReply()
		if _, dup := got[r.handle]; dup {
			c.t.Fatalf("handle %d answered twice", r.handle)
		}
		if r.structured && r.flags&replyFlagDone == 0 {
			c.t.Fatalf("handle %d: chunk without DONE", r.handle)
		}
		got[r.handle] = r
	}
	return got
}

// TestPipelinedBatch sends hundreds of requests in one write and checks that
// each gets exactly one correct reply, on the inline path (FastReader) and
// on workers, with both reply kinds; the last request is DISC, so the
// replies must all go out before the connection closes. On the inline path
// the replies must share writes.
func TestPipelinedBatch(t *testing.T) {
	const n = 256 // 4 KiB blocks: 1 MiB, the whole volume
	for _, fast := range []bool{true, false} {
		both(t, func(t *testing.T, structured bool) {
			t.Run(fmt.Sprintf("fast=%v", fast), func(t *testing.T) {
				x := newTestExporter()
				x.plain["vol"] = !fast
				dev := x.devs["vol"]
				ts := startServer(t, x, Options{})
				c, writes := dialCounting(t, ts)
				c.negotiate("vol", structured, false)

				var rs []rq
				for i := range uint64(n) {
					rs = append(rs, rq{typ: cmdWrite, handle: i, off: i * 4096, length: 4096, payload: pattern(4096, byte(i))})
				}
				rs = append(rs, rq{typ: cmdFlush, handle: n})
				c.sendBatch(rs)
				for h, r := range c.readReplies(n + 1) {
					if r.errno != 0 || h > n {
						t.Fatalf("handle %d: %+v", h, r)
					}
				}
				if dev.flushes.Load() != 1 {
					t.Fatalf("%d flushes reached the device", dev.flushes.Load())
				}

				writes.Store(0)
				rs = rs[:0]
				for i := range uint64(n) {
					rs = append(rs, rq{typ: cmdRead, handle: i, off: i * 4096, length: 4096})
				}
				const whole, past, empty = n, n + 1, n + 2
				rs = append(rs,
					rq{typ: cmdRead, handle: whole, length: n * 4096}, // past maxFastRead: inline only if alone, a writev
					rq{typ: cmdRead, handle: past, off: n * 4096, length: 4096},
					rq{typ: cmdRead, handle: empty, off: 4096},
					rq{typ: cmdDisc, handle: n + 3})
				c.sendBatch(rs)
				got := c.readReplies(n + 3)
				var all []byte
				for i := range uint64(n) {
					d := readData(t, got[i])
					if !bytes.Equal(d, pattern(4096, byte(i))) {
						t.Fatalf("block %d differs", i)
					}
					all = append(all, d...)
				}
				if d := readData(t, got[whole]); !bytes.Equal(d, all) {
					t.Fatal("the 1 MiB read differs from its blocks")
				}
				if r := got[past]; r.errno != errnoInval {
					t.Fatalf("read past the end: %+v", r)
				}
				if d := readData(t, got[empty]); len(d) != 0 {
					t.Fatalf("zero-length read: %d bytes", len(d))
				}
				c.expectClosed()

				if fast {
					// The 1 MiB read is served inline too if it
					// found the small ones all done (readLoneInline).
					if f := dev.fastReads.Load(); f != n && f != n+1 {
						t.Fatalf("%d of %d reads served inline", f, n)
					}
					// Inline replies go out eight at a time
					// (inlineFlush): about n/8 writes plus the
					// others' (the 1 MiB reply takes two), not one
					// per reply.
					if w := writes.Load(); w > n/8+6 {
						t.Fatalf("%d writes for %d inline READ replies", w, n)
					}
				} else if f := dev.fastReads.Load(); f != 0 {
					t.Fatalf("%d reads served inline on a device that is no FastReader", f)
				}
				t.Logf("%d writes for %d READs", writes.Load(), n+3)
			})
		})
	}
}

// TestPipelinedTLS is the inline path under TLS, where the reader flushes
// from inside the TLS connection's Read.
func TestPipelinedTLS(t *testing.T) {
	cfg, pool := testCA(t, "")
	x := newTestExporter()
	dev := x.devs["vol"]
	for i := range int64(64) {
		dev.WriteAt(pattern(4096, byte(i)), i*4096)
	}
	ts := startServer(t, x, Options{TLS: cfg})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.upgrade(pool)
	c.goTo("vol", true, false)
	var rs []rq
	for i := range uint64(64) {
		rs = append(rs, rq{typ: cmdRead, handle: i, off: i * 4096, length: 4096})
	}
	c.sendBatch(rs)
	got := c.readReplies(64)
	for i := range uint64(64) {
		if !bytes.Equal(readData(t, got[i]), pattern(4096, byte(i))) {
			t.Fatalf("block %d differs", i)
		}
	}
	if f := dev.fastReads.Load(); f != 64 {
		t.Fatalf("%d of 64 reads served inline", f)
	}
}

// openVol serves a test exporter whose "vol" device setup prepared, and
// returns a client in transmission on vol.
func openVol(t *testing.T, opts Options, structured bool, setup func(d *memDev)) (*client, *memDev) {
	t.Helper()
	x := newTestExporter()
	dev := x.devs["vol"]
	setup(dev)
	c := dial(t, startServer(t, x, opts))
	c.negotiate("vol", structured, false)
	return c, dev
}

// TestReplyNotHeldBack: a client that sends one request and waits gets its
// reply, whoever made it (the reader inline, or a worker).
func TestReplyNotHeldBack(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		c, dev := openVol(t, Options{}, structured, func(d *memDev) {
			d.fast = func(off int64) (bool, error) { return off >= 8192, nil } // declines from 8192 on
		})
		for _, tc := range []struct {
			name       string
			cmd        uint16
			off        uint64
			length     uint32
			wantErrno  uint32
			payloadLen int
		}{
			{"inline read", cmdRead, 0, 4096, 0, 0},
			{"worker read", cmdRead, 8192, 4096, 0, 0},
			{"write", cmdWrite, 0, 4096, 0, 4096},
			{"flush", cmdFlush, 0, 0, 0, 0},
			{"trim", cmdTrim, 0, 4096, 0, 0},
			{"refused by the reader", cmdRead, 1 << 20, 4096, errnoInval, 0},
		} {
			c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			r := c.do(0, tc.cmd, tc.off, tc.length, make([]byte, tc.payloadLen))
			if r.errno != tc.wantErrno {
				t.Fatalf("%s: %+v", tc.name, r)
			}
		}
		if dev.fastReads.Load() != 1 || dev.reads.Load() != 1 {
			t.Fatalf("%d reads inline, %d on workers; want 1 and 1", dev.fastReads.Load(), dev.reads.Load())
		}
	})
}

// TestReplyNotHeldBackByLimiter: replies the reader queued go out before it
// waits in the limiter, though the request holding the only slot is stuck.
func TestReplyNotHeldBackByLimiter(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		g := newGate()
		c, _ := openVol(t, Options{MaxRequestsInFlight: 1}, structured, func(d *memDev) {
			d.hook = g.hook
			d.fast = func(off int64) (bool, error) { return off < 8192, nil } // 0 and 4096 go to workers
		})
		g.block("read", 0)
		c.sendBatch([]rq{
			{typ: cmdRead, handle: 1, off: 0, length: 4096},       // takes the only slot, then blocks
			{typ: cmdRead, handle: 2, off: 8192, length: 4096},    // inline
			{typ: cmdRead, handle: 3, off: 1 << 20, length: 4096}, // refused by the reader
			{typ: cmdRead, handle: 4, off: 4096, length: 4096},    // waits for the slot
		})
		g.waitEntered(t, "read0")
		c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := c.readReplies(2)
		if r, ok := got[2]; !ok || r.errno != 0 || len(readData(t, r)) != 4096 {
			t.Fatalf("inline read: %+v", got)
		}
		if r, ok := got[3]; !ok || r.errno != errnoInval {
			t.Fatalf("refused read: %+v", got)
		}
		g.release("read", 0)
		got = c.readReplies(2)
		for _, h := range []uint64{1, 4} {
			if r, ok := got[h]; !ok || r.errno != 0 {
				t.Fatalf("handle %d: %+v", h, got)
			}
		}
	})
}

// TestFastReadMixed: a device whose TryReadAt serves some offsets, declines
// others and fails others. Declined reads get correct data from ReadAt,
// failures become error replies, and inline replies do not wait for a
// blocked worker read: replies come in completion order.
func TestFastReadMixed(t *testing.T) {
	const n = 30
	both(t, func(t *testing.T, structured bool) {
		g := newGate()
		c, dev := openVol(t, Options{}, structured, func(d *memDev) {
			for i := range int64(n) {
				d.WriteAt(pattern(4096, byte(i)), i*4096)
			}
			d.hook = g.hook
			d.fast = func(off int64) (bool, error) {
				switch off / 4096 % 3 {
				case 1:
					return true, nil
				case 2:
					return false, errInjected
				}
				return false, nil
			}
		})
		g.block("read", 4096) // block 1: declined, and stuck in ReadAt
		var rs []rq
		for i := range uint64(n) {
			rs = append(rs, rq{typ: cmdRead, handle: i, off: i * 4096, length: 4096})
		}
		c.sendBatch(rs)
		g.waitEntered(t, "read4096")
		got := c.readReplies(n - 1)
		g.release("read", 4096)
		if _, early := got[1]; early {
			t.Fatal("the blocked read replied")
		}
		r := c.readReply()
		got[r.handle] = r
		for i := range uint64(n) {
			r, ok := got[i]
			switch {
			case !ok:
				t.Fatalf("no reply for handle %d", i)
			case i%3 == 2:
				if r.errno != errnoIO || len(r.data) != 0 && !structured || structured && r.typ != replyTypeError {
					t.Fatalf("failed read %d: %+v", i, r)
				}
			default:
				if !bytes.Equal(readData(t, r), pattern(4096, byte(i))) {
					t.Fatalf("block %d differs", i)
				}
			}
		}
		if f, s := dev.fastReads.Load(), dev.reads.Load(); f != n/3 || s != n/3 {
			t.Fatalf("%d reads inline and %d on workers, want %d each", f, s, n/3)
		}
		// The stream is in sync after the failures.
		if r := c.do(0, cmdRead, 4096, 4096, nil); !bytes.Equal(readData(t, r), pattern(4096, 1)) {
			t.Fatalf("read after failures: %+v", r)
		}
	})
}

// TestServeWithoutSyscallConn: on a connection the reader cannot probe
// (net.Pipe), it flushes before every read of the connection, and pipelined
// requests still get their replies.
func TestServeWithoutSyscallConn(t *testing.T) {
	x := newTestExporter()
	s, err := NewServer(x, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cli, srv := net.Pipe()
	done := make(chan struct{})
	go func() {
		s.ServeConn(srv)
		close(done)
	}()
	cli.SetDeadline(time.Now().Add(30 * time.Second))
	c := &client{t: t, nc: cli, br: bufio.NewReader(cli), readLens: map[uint64]uint32{}}
	c.negotiate("vol", true, false)
	if r := c.do(0, cmdWrite, 0, 4096, pattern(4096, 1)); r.errno != 0 {
		t.Fatal(r)
	}
	// A pipe's writes wait for the reader, so the batch goes from another
	// goroutine while this one reads the replies.
	var batch []byte
	for i := range uint64(32) {
		batch = append(batch, reqBytes(0, cmdRead, i, 0, 4096)...)
	}
	sent := make(chan error, 1)
	go func() {
		_, err := cli.Write(batch)
		sent <- err
	}()
	for h, r := range c.readReplies(32) {
		if !bytes.Equal(readData(t, r), pattern(4096, 1)) {
			t.Fatalf("handle %d: %+v", h, r)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	cli.Close()
	<-done
	if x.open.Load() != 0 || s.panics.Load() != 0 {
		t.Fatalf("%d exports open, %d panics", x.open.Load(), s.panics.Load())
	}
}

// recorder is an io.Writer that keeps each write; a write of more than
// gateAt bytes waits for gate to be closed (nil: no wait).
type recorder struct {
	mu      sync.Mutex
	writes  [][]byte
	gateAt  int
	gate    chan struct{}
	entered chan struct{}
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.gate != nil && len(p) > r.gateAt {
		close(r.entered)
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Join(r.writes, nil)
}

// sendConn is a connection with only what the reply path uses.
func sendConn(w io.Writer) *conn {
	a, _ := net.Pipe()
	c := &conn{nc: a, w: w, out: newReplyBuf(), lim: newLimiter(8, 64<<20)}
	c.sendDone.L = &c.wmu
	return c
}

// TestReplySend covers each way a reply enters the stream: copied into the
// buffer, sealed when it does not fit, and a large payload handed over
// without a copy, returned to the limiter once sent. The bytes come out in
// order, small buffers are reused.
func TestReplySend(t *testing.T) {
	var rec recorder
	c := sendConn(&rec)
	var want []byte
	put := func(p []byte) {
		c.write(p)
		want = append(want, p...)
	}
	c.wmu.Lock()
	put(pattern(2000, 1))
	put(pattern(maxCopied, 2))
	put(pattern(maxCopied, 3)) // does not fit: the first buffer is sealed
	if len(c.queue) != 1 || len(rec.writes) != 0 {
		t.Fatalf("%d segments queued, %d writes: want 1, 0", len(c.queue), len(rec.writes))
	}
	c.lim.acquire(1 << 20)
	data := getBuf(1 << 20)
	copy(*data, pattern(1<<20, 4))
	want = append(want, *data...)
	c.writeData(segment{data: data, cost: 1 << 20}) // seals and sends the queue: three segments (one writev on a socket)
	if len(rec.writes) != 3 || len(c.queue) != 0 || c.sending {
		t.Fatalf("%d writes, %d queued, sending %v", len(rec.writes), len(c.queue), c.sending)
	}
	if c.lim.reqs != 0 || c.lim.bytes != 0 {
		t.Fatalf("limiter holds %d requests, %d bytes after the data was sent", c.lim.reqs, c.lim.bytes)
	}
	if len(c.spare) != 2 {
		t.Fatalf("%d spare buffers after sending two, want 2", len(c.spare))
	}
	p := c.out.reserve(10)
	copy(p, "0123456789")
	c.out.commit(8)
	want = append(want, "01234567"...)
	put(pattern(5, 5))
	c.flushLocked()
	c.flushLocked()
	c.wmu.Unlock()
	if len(rec.writes) != 4 {
		t.Fatalf("%d writes, want 4 (an empty flush writes nothing)", len(rec.writes))
	}
	if !bytes.Equal(rec.bytes(), want) {
		t.Fatal("bytes out differ from bytes in")
	}
}

// While one goroutine sends a large reply into a socket that does not take
// it, others still add replies: they wait for wmu only as long as it takes
// to copy them, not for the socket. The sender sends them when it is done.
func TestReplySendDoesNotBlockOthers(t *testing.T) {
	rec := recorder{gateAt: replyBufSize, gate: make(chan struct{}), entered: make(chan struct{})}
	c := sendConn(&rec)
	c.lim.acquire(1 << 20)
	data := getBuf(1 << 20)
	copy(*data, pattern(1<<20, 9))
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		c.beginReply()
		c.write([]byte("header"))
		c.writeData(segment{data: data, cost: 1 << 20})
		c.endReply()
	}()
	<-rec.entered // the sender is in write(2), without wmu
	replied := make(chan struct{})
	go func() {
		defer close(replied)
		c.idle.Store(true) // as when the reader waits for the client: replies flush themselves
		c.beginReply()
		c.write([]byte("small reply"))
		c.endReply()
	}()
	select {
	case <-replied:
	case <-time.After(5 * time.Second):
		t.Fatal("a small reply waited for the socket behind a large one")
	}
	close(rec.gate)
	<-sent
	want := append(append([]byte("header"), pattern(1<<20, 9)...), "small reply"...)
	if !bytes.Equal(rec.bytes(), want) {
		t.Fatalf("got %d bytes, want %d in order", len(rec.bytes()), len(want))
	}
}

// A write error closes the connection; later replies are dropped, and the
// data handed over is still returned to the limiter.
func TestReplySendError(t *testing.T) {
	a, b := net.Pipe()
	b.Close()
	c := &conn{nc: a, w: a, out: newReplyBuf(), lim: newLimiter(8, 64<<20)}
	c.lim.acquire(1 << 20)
	c.wmu.Lock()
	c.write([]byte("reply"))
	c.writeData(segment{data: getBuf(1 << 20), cost: 1 << 20})
	c.write([]byte("later"))
	c.flushLocked()
	c.wmu.Unlock()
	if c.werr == nil {
		t.Fatal("no write error recorded")
	}
	if c.lim.reqs != 0 || c.lim.bytes != 0 {
		t.Fatalf("limiter holds %d requests, %d bytes", c.lim.reqs, c.lim.bytes)
	}
}

// A WRITE with nothing else in flight runs in the reader (no worker, no
// handoff), also when the client pipelines them and each finds the last
// done; one sent while a READ is in flight, and a FUA WRITE, go to
// workers. Where each ran is read off its stack.
func TestLoneWritesRunInReader(t *testing.T) {
	x := newTestExporter()
	g := newGate()
	var mu sync.Mutex
	inReader := map[int64]bool{}
	x.devs["vol"].hook = func(op string, off int64) error {
		if op == "write" {
			mu.Lock()
			inReader[off] = strings.Contains(string(debug.Stack()), "(*conn).transmit")
			mu.Unlock()
		}
		return g.hook(op, off)
	}
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	for i := range uint64(4) { // queue depth 1
		if r := c.do(0, cmdWrite, i*4096, 4096, pattern(4096, byte(i))); r.errno != 0 {
			t.Fatalf("write %d: %+v", i, r)
		}
	}
	if r := c.do(cmdFlagFUA, cmdWrite, 8*4096, 4096, pattern(4096, 8)); r.errno != 0 {
		t.Fatalf("FUA write: %+v", r)
	}
	g.block("read", 0)
	c.sendReq(0, cmdRead, 100, 0, 4096, nil)
	g.waitEntered(t, "read0")
	var rs []rq
	for i := uint64(16); i < 24; i++ {
		rs = append(rs, rq{typ: cmdWrite, handle: i, off: i * 4096, length: 4096, payload: pattern(4096, byte(i))})
	}
	c.sendBatch(rs)
	c.readReplies(len(rs))
	g.release("read", 0)
	c.readReplies(1)
	mu.Lock()
	defer mu.Unlock()
	for i := int64(0); i < 4; i++ {
		if !inReader[i*4096] {
			t.Errorf("lone write %d ran on a worker", i)
		}
	}
	if inReader[8*4096] {
		t.Error("a FUA write ran in the reader")
	}
	for i := int64(16); i < 24; i++ {
		if inReader[i*4096] {
			t.Errorf("write %d ran in the reader while a read was in flight", i)
		}
	}
	got := make([]byte, 4096)
	for _, i := range []int64{0, 3, 8, 16, 23} {
		x.devs["vol"].ReadAt(got, i*4096)
		if !bytes.Equal(got, pattern(4096, byte(i))) {
			t.Errorf("block %d differs", i)
		}
	}
}

// A large READ with nothing else in flight is served in the reader when
// the device has it in memory; one the device declines goes to a worker.
func TestLoneLargeReadInline(t *testing.T) {
	x := newTestExporter()
	dev := x.devs["vol"]
	want := pattern(1<<20, 7)
	dev.WriteAt(want, 0)
	declined := atomic.Bool{}
	dev.fast = func(off int64) (bool, error) { return declined.Load(), nil }
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	for _, decline := range []bool{false, true} {
		declined.Store(decline)
		fast, slow := dev.fastReads.Load(), dev.reads.Load()
		r := c.do(0, cmdRead, 0, 1<<20, nil)
		if d := readData(t, r); !bytes.Equal(d, want) {
			t.Fatalf("decline=%v: 1 MiB read differs", decline)
		}
		if inline := dev.fastReads.Load() - fast; inline != map[bool]int64{false: 1, true: 0}[decline] || dev.reads.Load()-slow != 1-inline {
			t.Fatalf("decline=%v: %d served inline, %d by ReadAt", decline, inline, dev.reads.Load()-slow)
		}
	}
}

// A device that serves large reads from its memory (blockdev.RefReader)
// has them sent from its slices: at queue depth 1 (in the reader) and
// pipelined (on workers), every reply carries the right data, each read's
// slices are released exactly once after it went out, and small reads
// still go through the reply buffer. A device that declines is read as
// usual.
func TestReadRefs(t *testing.T) {
	x := newTestExporter()
	dev := x.devs["vol"]
	want := pattern(1<<20, 5)
	dev.WriteAt(want, 0)
	dev.refs.Store(true)
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	if d := readData(t, c.do(0, cmdRead, 0, 1<<20, nil)); !bytes.Equal(d, want) {
		t.Fatal("1 MiB read from refs differs")
	}
	var rs []rq
	for i := uint64(0); i < 8; i++ {
		rs = append(rs, rq{typ: cmdRead, handle: 100 + i, off: i * (128 << 10), length: 128 << 10})
	}
	rs = append(rs, rq{typ: cmdRead, handle: 200, off: 4096, length: 4096})
	c.sendBatch(rs)
	got := c.readReplies(len(rs))
	for _, r := range rs {
		d := readData(t, got[r.handle])
		if !bytes.Equal(d, want[r.off:r.off+uint64(r.length)]) {
			t.Fatalf("pipelined read %d differs", r.handle)
		}
	}
	if n := dev.refReads.Load(); n != 9 {
		t.Errorf("%d reads served from refs, want 9 (the 4 KiB one is copied)", n)
	}
	// The sender releases right after its write, which the client may
	// see first.
	for deadline := time.Now().Add(5 * time.Second); dev.released.Load() != dev.refReads.Load() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if r, n := dev.released.Load(), dev.refReads.Load(); r != n || dev.doubleReleased.Load() != 0 {
		t.Errorf("%d of %d refs released after their replies, %d twice", r, n, dev.doubleReleased.Load())
	}
	dev.refs.Store(false)
	if d := readData(t, c.do(0, cmdRead, 0, 1<<20, nil)); !bytes.Equal(d, want) {
		t.Fatal("1 MiB read after refs declined differs")
	}
}

// Replies queued behind a socket that does not take them are bounded: once
// maxQueued bytes wait, a reply waits for the sender before it returns (as
// it waited for the socket before there was a queue), and goes on when the
// socket drains.
func TestReplyQueueBounded(t *testing.T) {
	rec := recorder{gateAt: replyBufSize, gate: make(chan struct{}), entered: make(chan struct{})}
	c := sendConn(&rec)
	c.lim.acquire(1 << 20)
	data := getBuf(1 << 20)
	go func() {
		c.beginReply()
		c.writeData(segment{data: data, cost: 1 << 20})
		c.endReply()
	}()
	<-rec.entered // the sender waits in write(2)
	c.idle.Store(true)
	var replies atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2*maxQueued/maxCopied; i++ {
			c.beginReply()
			c.write(pattern(maxCopied, byte(i)))
			c.endReply()
			replies.Add(1)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	if n := replies.Load(); n*maxCopied > maxQueued+replyBufSize || n == 0 {
		t.Fatalf("%d replies of %d bytes queued behind a blocked socket; want about %d bytes, then a wait", n, maxCopied, maxQueued)
	}
	close(rec.gate)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("replies still wait after the socket drained")
	}
}

type batchFunc func(ws []blockdev.BlockWrite) error

func (f batchFunc) WriteBatch(ws []blockdev.BlockWrite) error { return f(ws) }

// A batch of WRITEs replies with one write to the socket while the reader
// is idle (as it is while a mirrored volume's writes wait for the
// secondary), not one write per request, and the replies are in order.
func TestBatchRepliesGoOutTogether(t *testing.T) {
	var rec recorder
	c := sendConn(&rec)
	var got []int64
	c.batcher = batchFunc(func(ws []blockdev.BlockWrite) error {
		for _, w := range ws {
			got = append(got, w.Off)
		}
		return nil
	})
	c.readerIdle()
	var js []job
	var want []byte
	for i := 0; i < 5; i++ {
		cost := bufCost(4096)
		if !c.lim.tryAcquire(cost) {
			t.Fatal("limiter full")
		}
		js = append(js, job{req: request{typ: cmdWrite, handle: uint64(100 + i), off: uint64(i) * 4096, length: 4096}, buf: getBuf(4096), cost: cost})
		var r [simpleReplyLen]byte
		putSimple(r[:], uint64(100+i), 0)
		want = append(want, r[:]...)
	}
	c.running.Add(len(js))
	c.handleBatch(js)
	c.running.Wait()
	if len(got) != 5 {
		t.Fatalf("the device saw %d writes, want 5", len(got))
	}
	rec.mu.Lock()
	writes := len(rec.writes)
	rec.mu.Unlock()
	if writes != 1 || !bytes.Equal(rec.bytes(), want) {
		t.Fatalf("5 replies went out in %d writes (want 1); in order: %v", writes, bytes.Equal(rec.bytes(), want))
	}
}
