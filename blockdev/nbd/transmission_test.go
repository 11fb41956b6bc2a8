package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-storage/strata/blockdev"
)

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// both runs f with simple and with structured replies.
func both(t *testing.T, f func(t *testing.T, structured bool)) {
	t.Run("simple", func(t *testing.T) { f(t, false) })
	t.Run("structured", func(t *testing.T) { f(t, true) })
}

func TestReadWrite(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		ts := startServer(t, newTestExporter(), Options{})
		c := dial(t, ts)
		ei := c.negotiate("vol", structured, false)
		if got := ei.flags&tfSendDF != 0; got != structured {
			t.Errorf("SEND_DF %v with structured %v", got, structured)
		}
		for _, tc := range []struct {
			off uint64
			n   int
		}{{0, 4096}, {8192, 64 << 10}, {1 << 19, 1 << 19}, {512, 1024}} {
			data := pattern(tc.n, byte(tc.off))
			if r := c.do(0, cmdWrite, tc.off, uint32(tc.n), data); r.errno != 0 || r.structured {
				t.Fatalf("write %+v: %+v", tc, r)
			}
			r := c.do(0, cmdRead, tc.off, uint32(tc.n), nil)
			if r.structured != structured {
				t.Fatalf("structured reply %v", r.structured)
			}
			if structured && (r.typ != replyTypeOffsetData || binary.BigEndian.Uint64(r.data) != tc.off) {
				t.Fatalf("chunk type %d offset %d", r.typ, binary.BigEndian.Uint64(r.data))
			}
			if got := readData(t, r); !bytes.Equal(got, data) {
				t.Fatalf("read back %+v differs", tc)
			}
		}
		// DF is accepted with structured replies: still one chunk.
		if structured {
			r := c.do(cmdFlagDF, cmdRead, 0, 4096, nil)
			if r.typ != replyTypeOffsetData || r.flags != replyFlagDone {
				t.Fatalf("DF read: %+v", r)
			}
		}
		// Zero-length requests succeed and touch nothing.
		if r := c.do(0, cmdWrite, 0, 0, nil); r.errno != 0 {
			t.Fatalf("zero-length write: %+v", r)
		}
		if got := readData(t, c.do(0, cmdRead, 1<<20, 0, nil)); len(got) != 0 {
			t.Fatalf("zero-length read returned %d bytes", len(got))
		}
		for _, cmd := range []uint16{cmdTrim, cmdWriteZeroes, cmdCache} {
			if r := c.do(0, cmd, 4096, 0, nil); r.errno != 0 {
				t.Fatalf("zero-length %s: %+v", cmdName(cmd), r)
			}
		}
	})
}

func TestRequestErrors(t *testing.T) {
	const size = 1 << 20
	both(t, func(t *testing.T, structured bool) {
		ts := startServer(t, newTestExporter(), Options{MinBlockSize: 512})
		c := dial(t, ts)
		c.negotiate("vol", structured, false) // asks for block sizes: alignment is enforced
		dev := ts.x.devs["vol"]
		for _, tc := range []struct {
			name   string
			flags  uint16
			cmd    uint16
			off    uint64
			length uint32
			want   uint32
		}{
			{"read past end", 0, cmdRead, size - 512, 1024, errnoInval},
			{"read at end", 0, cmdRead, size, 512, errnoInval},
			{"read offset overflow", 0, cmdRead, math.MaxUint64 - 511, 1024, errnoInval},
			{"read too large", 0, cmdRead, 0, 32<<20 + 512, errnoInval},
			{"read misaligned", 0, cmdRead, 1, 512, errnoInval},
			{"read odd length", 0, cmdRead, 0, 100, errnoInval},
			{"write past end", 0, cmdWrite, size - 512, 1024, errnoNoSpc},
			{"write offset overflow", 0, cmdWrite, math.MaxUint64 - 511, 1024, errnoInval},
			{"write too large", 0, cmdWrite, 0, 32<<20 + 512, errnoInval},
			{"write misaligned", 0, cmdWrite, 100, 512, errnoInval},
			{"trim past end", 0, cmdTrim, size, 4096, errnoInval},
			{"zero past end", 0, cmdWriteZeroes, size, 4096, errnoNoSpc},
			{"cache past end", 0, cmdCache, size - 4096, 8192, errnoInval},
			{"flush with length", 0, cmdFlush, 0, 512, errnoInval},
			{"flush with offset", 0, cmdFlush, 512, 0, errnoInval},
			{"unknown command", 0, 42, 0, 512, errnoInval},
			{"resize command", 0, 8, 0, 0, errnoInval},
			{"unknown flag", 1 << 9, cmdRead, 0, 512, errnoInval},
			{"no-hole on write", cmdFlagNoHole, cmdWrite, 0, 512, errnoInval},
			{"fast-zero on trim", cmdFlagFastZero, cmdTrim, 0, 512, errnoInval},
			{"req-one on read", cmdFlagReqOne, cmdRead, 0, 512, errnoInval},
			{"df on write", cmdFlagDF, cmdWrite, 0, 512, errnoInval},
			{"block status without context", 0, cmdBlockStatus, 0, 4096, errnoInval},
		} {
			var payload []byte
			if tc.cmd == cmdWrite {
				// The payload follows even for a refused write; a
				// too-large one is discarded, not buffered.
				payload = pattern(int(tc.length), 1)
			}
			writes := dev.writes.Load()
			r := c.do(tc.flags, tc.cmd, tc.off, tc.length, payload)
			if r.errno != tc.want {
				t.Errorf("%s: errno %d, want %d", tc.name, r.errno, tc.want)
			}
			if structured && (r.typ != replyTypeError || r.msg == "") {
				t.Errorf("%s: want an error chunk with a message, got %+v", tc.name, r)
			}
			if dev.writes.Load() != writes {
				t.Errorf("%s: the device was written", tc.name)
			}
		}
		// DF without structured replies is not allowed.
		if !structured {
			if r := c.do(cmdFlagDF, cmdRead, 0, 512, nil); r.errno != errnoInval {
				t.Errorf("DF without structured replies: errno %d", r.errno)
			}
		}
		// The stream is still in sync.
		data := pattern(4096, 9)
		if r := c.do(cmdFlagFUA, cmdWrite, 4096, 4096, data); r.errno != 0 {
			t.Fatalf("write after errors: %+v", r)
		}
		if got := readData(t, c.do(cmdFlagFUA, cmdRead, 4096, 4096, nil)); !bytes.Equal(got, data) {
			t.Fatal("read after errors differs")
		}
	})
}

// TestUnalignedWithoutBlockSizeRequest: a client that did not ask for block
// sizes may send any alignment (the device handles it).
func TestUnalignedWithoutBlockSizeRequest(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.sendOpt(optGo, infoPayload("vol"))
	if _, typ := parseInfos(t, c.optReplies()); typ != repAck {
		t.Fatalf("GO: %#x", typ)
	}
	data := pattern(3000, 3)
	if r := c.do(0, cmdWrite, 1000, 3000, data); r.errno != 0 {
		t.Fatalf("unaligned write: %+v", r)
	}
	if got := readData(t, c.do(0, cmdRead, 1000, 3000, nil)); !bytes.Equal(got, data) {
		t.Fatal("unaligned read differs")
	}
}

func TestReadOnly(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		x := newTestExporter()
		x.ro["vol"] = true
		ts := startServer(t, x, Options{})
		c := dial(t, ts)
		ei := c.negotiate("vol", structured, false)
		if ei.flags&tfReadOnly == 0 {
			t.Fatalf("READ_ONLY not set: %#x", ei.flags)
		}
		if ei.flags&tfRotationalForTest != 0 {
			t.Fatalf("ROTATIONAL set")
		}
		for _, tc := range []struct {
			flags uint16
			cmd   uint16
			off   uint64
			n     uint32
		}{
			{0, cmdWrite, 0, 4096},
			{cmdFlagFUA, cmdWrite, 0, 64 << 10},
			{0, cmdWrite, 1 << 20, 4096}, // also past the end
			{0, cmdTrim, 0, 4096},
			{cmdFlagNoHole, cmdWriteZeroes, 0, 4096},
		} {
			var payload []byte
			if tc.cmd == cmdWrite {
				payload = pattern(int(tc.n), 5)
			}
			if r := c.do(tc.flags, tc.cmd, tc.off, tc.n, payload); r.errno != errnoPerm {
				t.Errorf("%s on read-only: errno %d, want EPERM", cmdName(tc.cmd), r.errno)
			}
		}
		// The WRITE payloads were consumed: reads still work.
		if got := readData(t, c.do(0, cmdRead, 0, 4096, nil)); !bytes.Equal(got, make([]byte, 4096)) {
			t.Fatal("read-only export was modified")
		}
		if r := c.do(0, cmdFlush, 0, 0, nil); r.errno != 0 {
			t.Fatalf("flush: %+v", r)
		}
	})
}

const tfRotationalForTest = uint16(1 << 4)

type extent struct{ length, flags uint32 }

func parseStatus(t testing.TB, r reply) []extent {
	t.Helper()
	if r.errno != 0 || r.typ != replyTypeBlockStatus {
		t.Fatalf("block status reply: %+v", r)
	}
	if (len(r.data)-4)%8 != 0 || len(r.data) < 12 {
		t.Fatalf("block status payload length %d", len(r.data))
	}
	if id := binary.BigEndian.Uint32(r.data); id != metaContextID {
		t.Fatalf("context id %d", id)
	}
	var out []extent
	for p := r.data[4:]; len(p) > 0; p = p[8:] {
		out = append(out, extent{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
	}
	return out
}

func TestTrimZeroBlockStatus(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	c := dial(t, ts)
	ei := c.negotiate("vol", true, true)
	want := tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfSendWriteZeroes | tfSendDF |
		tfCanMultiConn | tfSendCache | tfSendFastZero
	if ei.flags != want {
		t.Fatalf("flags %#x, want %#x", ei.flags, want)
	}
	status := func(flags uint16, off uint64, n uint32) []extent {
		return parseStatus(t, c.do(flags, cmdBlockStatus, off, n, nil))
	}
	h, z := stateHole, stateZero
	if got := status(0, 0, 1<<20); len(got) != 1 || got[0] != (extent{1 << 20, h | z}) {
		t.Fatalf("empty device: %v", got)
	}
	if r := c.do(0, cmdWrite, 0, 16384, pattern(16384, 1)); r.errno != 0 {
		t.Fatal(r)
	}
	if r := c.do(0, cmdTrim, 4096, 4096, nil); r.errno != 0 {
		t.Fatal(r)
	}
	if r := c.do(cmdFlagNoHole, cmdWriteZeroes, 8192, 4096, nil); r.errno != 0 {
		t.Fatal(r)
	}
	if r := c.do(cmdFlagFastZero, cmdWriteZeroes, 32768, 4096, nil); r.errno != 0 {
		t.Fatalf("fast zero must succeed on a Zeroer: %+v", r)
	}
	if r := c.do(0, cmdCache, 0, 1<<20, nil); r.errno != 0 {
		t.Fatal(r)
	}
	got := status(0, 0, 65536)
	wantExt := []extent{{4096, 0}, {4096, h | z}, {4096, z}, {4096, 0}, {65536 - 16384, h | z}}
	if fmt.Sprint(got) != fmt.Sprint(wantExt) {
		t.Fatalf("status %v, want %v", got, wantExt)
	}
	data := readData(t, c.do(0, cmdRead, 0, 16384, nil))
	if !bytes.Equal(data[4096:12288], make([]byte, 8192)) || bytes.Equal(data[:4096], make([]byte, 4096)) {
		t.Fatal("trim/zero contents wrong")
	}
	// REQ_ONE: exactly one descriptor, never longer than asked.
	if got := status(cmdFlagReqOne, 0, 65536); len(got) != 1 || got[0] != (extent{4096, 0}) {
		t.Fatalf("REQ_ONE: %v", got)
	}
	if got := status(cmdFlagReqOne, 16384, 512); len(got) != 1 || got[0] != (extent{512, h | z}) {
		t.Fatalf("REQ_ONE short: %v", got)
	}
	// Descriptors never cover more than asked, even mid-extent.
	if got := status(0, 0, 6144); fmt.Sprint(got) != fmt.Sprint([]extent{{4096, 0}, {2048, h | z}}) {
		t.Fatalf("partial: %v", got)
	}
	if r := c.do(0, cmdBlockStatus, 0, 0, nil); r.errno != errnoInval {
		t.Fatalf("zero-length block status: %+v", r)
	}
	if r := c.do(0, cmdBlockStatus, 1<<20-4096, 8192, nil); r.errno != errnoInval {
		t.Fatalf("block status past end: %+v", r)
	}
}

func TestBlockStatusDescriptorCap(t *testing.T) {
	x := newTestExporter()
	dev := x.add("big", newMemDev(64<<20), "")
	// Alternate data and holes: 4096 extents in 16 MiB.
	for b := int64(0); b < 4096; b += 2 {
		dev.WriteAt([]byte{1}, b*memBlock)
	}
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("big", true, true)
	got := parseStatus(t, c.do(0, cmdBlockStatus, 0, 16<<20, nil))
	if len(got) != maxDescriptors {
		t.Fatalf("%d descriptors, want the cap %d", len(got), maxDescriptors)
	}
	var sum uint32
	for _, e := range got {
		sum += e.length
	}
	if sum != maxDescriptors*memBlock {
		t.Fatalf("descriptors cover %d bytes", sum)
	}
}

func TestPlainDevice(t *testing.T) {
	x := newTestExporter()
	x.plain["vol"] = true
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	ei := c.negotiate("vol", true, true)
	if ei.flags&(tfSendTrim|tfSendWriteZeroes|tfSendFastZero) != 0 {
		t.Fatalf("flags %#x advertise trim/zero for a plain device", ei.flags)
	}
	for _, cmd := range []uint16{cmdTrim, cmdWriteZeroes} {
		if r := c.do(0, cmd, 0, 4096, nil); r.errno != errnoInval {
			t.Errorf("%s on a plain device: errno %d", cmdName(cmd), r.errno)
		}
	}
	// base:allocation without a BlockStatuser: allocated, contents unknown.
	if got := parseStatus(t, c.do(0, cmdBlockStatus, 4096, 8192, nil)); fmt.Sprint(got) != fmt.Sprint([]extent{{8192, 0}}) {
		t.Fatalf("status %v", got)
	}
}

func TestFUAFlushes(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	dev := ts.x.devs["vol"]
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	for _, tc := range []struct {
		flags uint16
		cmd   uint16
		want  int64
	}{
		{0, cmdWrite, 0},
		{cmdFlagFUA, cmdWrite, 1},
		{0, cmdTrim, 0},
		{cmdFlagFUA, cmdTrim, 1},
		{0, cmdWriteZeroes, 0},
		{cmdFlagFUA, cmdWriteZeroes, 1},
		{cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero, cmdWriteZeroes, 1},
		{0, cmdFlush, 1},
		{cmdFlagFUA, cmdFlush, 1},
		{cmdFlagFUA, cmdRead, 0},
		{cmdFlagFUA, cmdCache, 0},
	} {
		var payload []byte
		n := uint32(4096)
		if tc.cmd == cmdFlush {
			n = 0
		}
		if tc.cmd == cmdWrite {
			payload = pattern(4096, 2)
		}
		before := dev.flushes.Load()
		// The reply is read after the flush happened: a FUA write has
		// flushed by the time its reply arrives.
		if r := c.do(tc.flags, tc.cmd, 0, n, payload); r.errno != 0 {
			t.Fatalf("%s flags %#x: %+v", cmdName(tc.cmd), tc.flags, r)
		}
		if got := dev.flushes.Load() - before; got != tc.want {
			t.Errorf("%s flags %#x: %d flushes, want %d", cmdName(tc.cmd), tc.flags, got, tc.want)
		}
	}
}

// gate blocks device operations at chosen offsets until released.
type gate struct {
	mu      sync.Mutex
	blocked map[string]chan struct{}
	entered chan string
}

func newGate() *gate {
	return &gate{blocked: map[string]chan struct{}{}, entered: make(chan string, 100)}
}

func (g *gate) block(op string, off int64) {
	g.mu.Lock()
	g.blocked[fmt.Sprint(op, off)] = make(chan struct{})
	g.mu.Unlock()
}

func (g *gate) release(op string, off int64) {
	g.mu.Lock()
	ch := g.blocked[fmt.Sprint(op, off)]
	delete(g.blocked, fmt.Sprint(op, off))
	g.mu.Unlock()
	close(ch)
}

func (g *gate) hook(op string, off int64) error {
	g.mu.Lock()
	ch := g.blocked[fmt.Sprint(op, off)]
	g.mu.Unlock()
	if ch != nil {
		g.entered <- fmt.Sprint(op, off)
		<-ch
	}
	return nil
}

func (g *gate) waitEntered(t testing.TB, want string) {
	t.Helper()
	select {
	case got := <-g.entered:
		if got != want {
			t.Fatalf("entered %s, want %s", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never reached the device", want)
	}
}

func TestOutOfOrderReplies(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		x := newTestExporter()
		g := newGate()
		x.devs["vol"].hook = g.hook
		ts := startServer(t, x, Options{})
		c := dial(t, ts)
		c.negotiate("vol", structured, false)
		g.block("read", 0)
		c.sendReq(0, cmdRead, 1, 0, 4096, nil)
		g.waitEntered(t, "read0")
		c.sendReq(0, cmdWrite, 2, 8192, 4096, pattern(4096, 1))
		c.sendReq(0, cmdRead, 3, 8192, 4096, nil)
		// The blocked read must not hold back the later requests.
		seen := map[uint64]bool{}
		for len(seen) < 2 {
			r := c.readReply()
			if r.handle == 1 {
				t.Fatal("blocked read replied first")
			}
			seen[r.handle] = true
		}
		g.release("read", 0)
		if r := c.readReply(); r.handle != 1 || len(readData(t, r)) != 4096 {
			t.Fatalf("late reply %+v", r)
		}
	})
}

func TestManyConcurrentRequests(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{MaxRequestsInFlight: 4, MaxBytesInFlight: 64 << 10})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	const n = 200
	done := make(chan map[uint64]reply)
	go func() {
		got := map[uint64]reply{}
		for len(got) < 2*n {
			r := c.readReply()
			got[r.handle] = r
		}
		done <- got
	}()
	for i := range uint64(n) {
		c.sendReq(0, cmdWrite, 2*i, i*4096, 4096, pattern(4096, byte(i)))
	}
	for i := range uint64(n) {
		c.sendReq(cmdFlagDF, cmdRead, 2*i+1, i*4096, 4096, nil)
	}
	got := <-done
	for i := range uint64(n) {
		if r := got[2*i]; r.errno != 0 {
			t.Fatalf("write %d: %+v", i, r)
		}
	}
	// Reads may overtake the writes of the same block, so check contents
	// after all replies are in.
	for i := range uint64(n) {
		d := readData(t, c.do(0, cmdRead, i*4096, 4096, nil))
		if !bytes.Equal(d, pattern(4096, byte(i))) {
			t.Fatalf("block %d differs", i)
		}
	}
}

func TestRequestsInFlightBound(t *testing.T) {
	x := newTestExporter()
	g := newGate()
	x.devs["vol"].hook = g.hook
	ts := startServer(t, x, Options{MaxRequestsInFlight: 2})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	for i := range int64(3) {
		g.block("read", i*4096)
	}
	for i := range uint64(3) {
		c.sendReq(0, cmdRead, i, i*4096, 4096, nil)
	}
	// The reader starts requests in order, but their goroutines may reach
	// the device in either order.
	first := map[string]bool{}
	for range 2 {
		select {
		case op := <-g.entered:
			first[op] = true
		case <-time.After(10 * time.Second):
			t.Fatal("two reads never reached the device")
		}
	}
	if !first["read0"] || !first["read4096"] {
		t.Fatalf("first two requests in flight: %v, want read0 and read4096", first)
	}
	select {
	case op := <-g.entered:
		t.Fatalf("%s started beyond MaxRequestsInFlight", op)
	case <-time.After(100 * time.Millisecond):
	}
	g.release("read", 0)
	g.waitEntered(t, "read8192")
	g.release("read", 4096)
	g.release("read", 8192)
	for range 3 {
		if r := c.readReply(); r.errno != 0 {
			t.Fatal(r)
		}
	}
}

func TestDiscFinishesInFlight(t *testing.T) {
	x := newTestExporter()
	g := newGate()
	dev := x.devs["vol"]
	dev.hook = g.hook
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	g.block("write", 4096)
	data := pattern(4096, 4)
	c.sendReq(0, cmdWrite, 1, 4096, 4096, data)
	g.waitEntered(t, "write4096")
	c.sendReq(0, cmdDisc, 2, 0, 0, nil)
	time.Sleep(50 * time.Millisecond)
	g.release("write", 4096)
	if r := c.readReply(); r.handle != 1 || r.errno != 0 {
		t.Fatalf("in-flight write reply %+v", r)
	}
	c.expectClosed()
	got := make([]byte, 4096)
	dev.ReadAt(got, 4096)
	if !bytes.Equal(got, data) {
		t.Fatal("in-flight write lost")
	}
}

func TestDeviceErrors(t *testing.T) {
	both(t, func(t *testing.T, structured bool) {
		x := newTestExporter()
		var mu sync.Mutex
		var fail error
		x.devs["vol"].hook = func(op string, off int64) error {
			mu.Lock()
			defer mu.Unlock()
			return fail
		}
		ts := startServer(t, x, Options{})
		c := dial(t, ts)
		c.negotiate("vol", structured, structured)
		for _, tc := range []struct {
			err  error
			cmd  uint16
			want uint32
		}{
			{fmt.Errorf("checksum: %w", blockdev.ErrIO), cmdRead, errnoIO},
			{errInjected, cmdRead, errnoIO},
			{blockdev.ErrGone, cmdWrite, errnoShutdown},
			{blockdev.ErrNoSpace, cmdWrite, errnoNoSpc},
			{blockdev.ErrOutOfRange, cmdWrite, errnoNoSpc},
			{blockdev.ErrOutOfRange, cmdTrim, errnoInval},
			{blockdev.ErrReadOnly, cmdWriteZeroes, errnoPerm},
			{blockdev.ErrNotSupported, cmdWriteZeroes, errnoNotSup},
			{blockdev.ErrInvalid, cmdFlush, errnoInval},
			{errInjected, cmdBlockStatus, errnoIO},
		} {
			if tc.cmd == cmdBlockStatus && !structured {
				continue
			}
			mu.Lock()
			fail = tc.err
			mu.Unlock()
			var payload []byte
			n := uint32(4096)
			if tc.cmd == cmdWrite {
				payload = pattern(4096, 1)
			}
			if tc.cmd == cmdFlush {
				n = 0
			}
			r := c.do(0, tc.cmd, 0, n, payload)
			if r.errno != tc.want {
				t.Errorf("%v on %s: errno %d, want %d", tc.err, cmdName(tc.cmd), r.errno, tc.want)
			}
			// A failed read sends no data: a simple reply without
			// payload (the client would desync otherwise), or only an
			// error chunk.
			if tc.cmd == cmdRead && (len(r.data) != 0 && !structured || structured && r.typ != replyTypeError) {
				t.Errorf("failed read reply %+v", r)
			}
		}
		mu.Lock()
		fail = nil
		mu.Unlock()
		if r := c.do(0, cmdRead, 0, 4096, nil); r.errno != 0 {
			t.Fatalf("read after errors: %+v", r)
		}
	})
}

func TestGarbageClosesOnlyThatConnection(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	good := dial(t, ts)
	good.negotiate("vol", true, true)

	for _, garbage := range [][]byte{
		[]byte("\x00\x00\x00\x00garbage garbage garbage garbage"),
		bytes.Repeat([]byte{0xff}, 100),
	} {
		bad := dial(t, ts)
		bad.negotiate("vol", true, false)
		bad.write(garbage)
		bad.expectClosed()

		// Truncated header, then EOF.
		bad = dial(t, ts)
		bad.negotiate("vol", false, false)
		bad.write(garbage[:10])
		bad.nc.(interface{ CloseWrite() error }).CloseWrite()
		bad.expectClosed()
	}
	data := pattern(512, 'g')
	if r := good.do(0, cmdWrite, 0, 512, data); r.errno != 0 {
		t.Fatal(r)
	}
	if got := readData(t, good.do(0, cmdRead, 0, 512, nil)); !bytes.Equal(got, data) {
		t.Fatalf("read %q", got)
	}
}

func TestShutdownDrains(t *testing.T) {
	x := newTestExporter()
	g := newGate()
	x.devs["vol"].hook = g.hook
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	idle := dial(t, ts)
	idle.greet(clientFlagFixedNewstyle) // still negotiating

	g.block("write", 0)
	c.sendReq(0, cmdWrite, 1, 0, 4096, pattern(4096, 1))
	g.waitEntered(t, "write0")
	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(context.Background()) }()
	idle.expectClosed()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	g.release("write", 0)
	if r := c.readReply(); r.handle != 1 || r.errno != 0 {
		t.Fatalf("in-flight reply %+v", r)
	}
	c.expectClosed()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-ts.errc; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	ts.errc <- nil // for the cleanup
	if n := len(ts.Connections()); n != 0 {
		t.Fatalf("%d connections after Shutdown", n)
	}
}

func TestShutdownDeadline(t *testing.T) {
	x := newTestExporter()
	g := newGate()
	x.devs["vol"].hook = g.hook
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	g.block("read", 0)
	c.sendReq(0, cmdRead, 1, 0, 4096, nil)
	g.waitEntered(t, "read0")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	c.expectClosed()
	g.release("read", 0)
}

func TestConnectionsAndDisconnectExport(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	var vols []*client
	for range 2 {
		c := dial(t, ts)
		c.negotiate("", true, false) // canonical name: vol
		vols = append(vols, c)
	}
	other := dial(t, ts)
	other.negotiate("other", false, false)
	pending := dial(t, ts)
	pending.greet(clientFlagFixedNewstyle)

	// The last connection's reader may not be registered yet.
	deadline := time.Now().Add(5 * time.Second)
	var conns []ConnInfo
	for time.Now().Before(deadline) {
		if conns = ts.Connections(); len(conns) == 4 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	count := map[string]int{}
	for _, ci := range conns {
		count[ci.Export]++
		if ci.Remote == "" || ci.Since.IsZero() {
			t.Errorf("incomplete %+v", ci)
		}
	}
	if count["vol"] != 2 || count["other"] != 1 || count[""] != 1 {
		t.Fatalf("connections %+v", conns)
	}

	if n := ts.DisconnectExport("vol"); n != 2 {
		t.Fatalf("DisconnectExport: %d", n)
	}
	for _, c := range vols {
		c.expectClosed()
	}
	if r := other.do(0, cmdRead, 0, 512, nil); r.errno != 0 {
		t.Fatal(r)
	}
	if n := ts.DisconnectExport("nope"); n != 0 {
		t.Fatalf("DisconnectExport(nope): %d", n)
	}
}

// TestPanicRecovered: a device that panics, on a worker or (TryReadAt) on
// the connection's reader goroutine, closes only that connection.
func TestPanicRecovered(t *testing.T) {
	for _, tc := range []struct {
		name        string
		set         func(d *memDev)
		cmd         uint16
		off, length uint32
	}{
		{"worker", func(d *memDev) {
			d.hook = func(op string, off int64) error {
				if op == "flush" {
					panic("device bug")
				}
				return nil
			}
		}, cmdFlush, 0, 0},
		{"reader", func(d *memDev) {
			d.fast = func(off int64) (bool, error) {
				if off == 4096 {
					panic("device bug")
				}
				return true, nil
			}
		}, cmdRead, 4096, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newTestExporter()
			tc.set(x.devs["vol"])
			ts := startServer(t, x, Options{})
			c := dial(t, ts)
			c.negotiate("vol", true, false)
			c.sendReq(0, tc.cmd, 1, uint64(tc.off), tc.length, nil)
			c.expectClosed()
			other := dial(t, ts)
			other.negotiate("vol", true, false)
			if r := other.do(0, cmdRead, 0, 512, nil); r.errno != 0 {
				t.Fatal(r)
			}
			if n := ts.panics.Swap(0); n != 1 {
				t.Fatalf("recovered %d panics, want 1", n)
			}
		})
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{MinBlockSize: 3},
		{MinBlockSize: 128 << 10},
		{PreferredBlockSize: 256},
		{MinBlockSize: 8192, PreferredBlockSize: 4096},
		{MaxBlockSize: 1000},
		{MaxBlockSize: 2 << 30},
	} {
		if _, err := NewServer(newTestExporter(), o); err == nil {
			t.Errorf("NewServer(%+v) accepted invalid options", o)
		}
	}
	s, err := NewServer(newTestExporter(), Options{MinBlockSize: 1, PreferredBlockSize: 512, MaxBlockSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if s.opts.MaxRequestsInFlight != 64 || s.opts.MaxBytesInFlight != 128<<20 || s.opts.Logger == nil {
		t.Fatalf("defaults %+v", s.opts)
	}
}

// TestBatchedWrites: WRITEs a client sends back to back reach the device
// as batches (blockdev.BatchWriter), land in order, and each gets its
// reply; a failed batch fails every request in it and only those.
func TestBatchedWrites(t *testing.T) {
	x := newTestExporter()
	d := x.devs["vol"]
	var failAt atomic.Int64
	failAt.Store(-1)
	d.hook = func(op string, off int64) error {
		if op == "write" && off == failAt.Load() {
			return errInjected
		}
		return nil
	}
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("vol", true, false)
	// send writes n requests at once (block i, then block 0 again last,
	// so the batch's order decides what block 0 holds).
	send := func(n int, fill byte) {
		var b []byte
		for i := 0; i <= n; i++ {
			blk := uint64(i % n)
			h := make([]byte, 28)
			binary.BigEndian.PutUint32(h, magicRequest)
			binary.BigEndian.PutUint16(h[6:], cmdWrite)
			binary.BigEndian.PutUint64(h[8:], uint64(i+1))
			binary.BigEndian.PutUint64(h[16:], blk*4096)
			binary.BigEndian.PutUint32(h[24:], 4096)
			b = append(append(b, h...), bytes.Repeat([]byte{fill + byte(i)}, 4096)...)
		}
		c.write(b)
	}
	const n = 12
	send(n, 1)
	for i := 0; i <= n; i++ {
		if r := c.readReply(); r.errno != 0 {
			t.Fatalf("write %d: errno %d", r.handle, r.errno)
		}
	}
	if d.batches.Load() == 0 {
		t.Fatal("no batch of more than one write reached the device")
	}
	for i := 0; i < n; i++ {
		want := byte(1 + i)
		if i == 0 {
			want = 1 + n // the last request wrote block 0 again
		}
		if got := readData(t, c.do(0, cmdRead, uint64(i)*4096, 4096, nil)); !bytes.Equal(got, bytes.Repeat([]byte{want}, 4096)) {
			t.Fatalf("block %d holds %d, want %d", i, got[0], want)
		}
	}
	// A failing write fails its batch: every request gets a reply, the
	// failing one an error.
	failAt.Store(5 * 4096)
	send(n, 50)
	failed := map[uint64]bool{}
	for i := 0; i <= n; i++ {
		r := c.readReply()
		if r.errno != 0 {
			failed[r.handle] = true
		}
	}
	if !failed[6] {
		t.Fatalf("the write the device failed (handle 6) got no error; failed: %v", failed)
	}
	failAt.Store(-1)
	if r := c.do(0, cmdWrite, 0, 4096, make([]byte, 4096)); r.errno != 0 {
		t.Fatalf("a write after the failed batch: errno %d", r.errno)
	}
}

// A large WRITE with more requests behind it in the socket goes to a
// worker, so the reader reads the next one while the first is written
// (the client would otherwise wait on a full socket): with the device
// holding the first 1 MiB write, the second one reaches the device too.
func TestLargePipelinedWritesOverlap(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the socket's unread bytes cannot be told here: large writes stay in the reader")
	}
	x := newTestExporter()
	d := x.add("big", newMemDev(4<<20), "")
	g := newGate()
	d.hook = g.hook
	ts := startServer(t, x, Options{})
	c := dial(t, ts)
	c.negotiate("big", true, false)
	const n = 1 << 20
	g.block("write", 0)
	g.block("write", n)
	var b []byte
	for i := 0; i < 2; i++ {
		h := make([]byte, 28)
		binary.BigEndian.PutUint32(h, magicRequest)
		binary.BigEndian.PutUint16(h[6:], cmdWrite)
		binary.BigEndian.PutUint64(h[8:], uint64(i+1))
		binary.BigEndian.PutUint64(h[16:], uint64(i*n))
		binary.BigEndian.PutUint32(h[24:], n)
		b = append(append(b, h...), pattern(n, byte(i+1))...)
	}
	sent := make(chan error, 1)
	go func() { _, err := c.nc.Write(b); sent <- err }() // blocks while the server reads no further
	g.waitEntered(t, "write0")
	g.waitEntered(t, fmt.Sprint("write", n)) // fails if the reader sits in the first write
	g.release("write", 0)
	g.release("write", n)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if r := c.readReply(); r.errno != 0 {
			t.Fatalf("write %d: errno %d", r.handle, r.errno)
		}
	}
	for i := 0; i < 2; i++ {
		if got := readData(t, c.do(0, cmdRead, uint64(i*n), n, nil)); !bytes.Equal(got, pattern(n, byte(i+1))) {
			t.Fatalf("the write at %d MiB reads back wrong", i)
		}
	}
}
