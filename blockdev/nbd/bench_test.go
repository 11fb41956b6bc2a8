package nbd

import (
	"encoding/binary"
	"io"
	"testing"
)

// The benchmarks send 4 KiB structured requests over a Unix socket, each
// request with its own write as libnbd (fio's nbd engine) does, either
// pipelined without bound or keeping at most 32 in flight, as fio at
// iodepth=32 does. allocs/op is (nearly all) the server's per-request cost;
// writes/op counts the server's writes to the socket per reply.

// BenchmarkRead: READs served by workers (the device is no FastReader).
func BenchmarkRead(b *testing.B) {
	benchmarkCmds(b, cmdRead, false)
}

// BenchmarkReadFast: READs of a FastReader, served by the reader goroutine.
func BenchmarkReadFast(b *testing.B) {
	benchmarkCmds(b, cmdRead, true)
}

// BenchmarkWrite: WRITEs.
func BenchmarkWrite(b *testing.B) {
	benchmarkCmds(b, cmdWrite, true)
}

// BenchmarkMixed: READs of a FastReader and WRITEs, alternating.
func BenchmarkMixed(b *testing.B) {
	benchmarkCmds(b, cmdMixed, true)
}

// cmdMixed is no command: the benchmark sends READ and WRITE in turn.
const cmdMixed = uint16(0xffff)

func benchmarkCmds(b *testing.B, cmd uint16, fast bool) {
	b.Run("pipelined", func(b *testing.B) { benchmarkCmd(b, cmd, fast, 0) })
	b.Run("qd32", func(b *testing.B) { benchmarkCmd(b, cmd, fast, 32) })
}

// benchmarkCmd sends b.N requests of cmd (or READ and WRITE in turn), at
// most qd at once (0: no bound); fast false hides the device's optional
// interfaces, TryReadAt among them.
func benchmarkCmd(b *testing.B, cmd uint16, fast bool, qd int) {
	const n = 4096
	x := newMemExporter()
	x.add("vol", newMemDev(64<<20), "")
	x.plain["vol"] = !fast
	ts := startServer(b, x, Options{})
	c, writes := dialCounting(b, ts)
	c.negotiate("vol", true, false)
	read := reqBytes(0, cmdRead, 0, 0, n)
	write := append(reqBytes(0, cmdWrite, 0, 0, n), make([]byte, n)...)
	var slots chan struct{}
	if qd > 0 {
		slots = make(chan struct{}, qd)
	}
	done := make(chan error, 1)
	go func() {
		done <- readReplies(c.br, b.N, cmd, slots)
	}()
	b.SetBytes(n)
	b.ReportAllocs()
	b.ResetTimer()
	writes.Store(0)
	for i := range b.N {
		if slots != nil {
			slots <- struct{}{}
		}
		req := read
		if cmd == cmdWrite || cmd == cmdMixed && i%2 == 1 {
			req = write
		}
		binary.BigEndian.PutUint64(req[16:], uint64(i%4096)*n)
		if _, err := c.nc.Write(req); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(writes.Load())/float64(b.N), "writes/op")
}

// readReplies reads n replies to requests of cmd, freeing a slot for each.
func readReplies(r io.Reader, n int, cmd uint16, slots chan struct{}) error {
	buf := make([]byte, 20+8+4096)
	for range n {
		var err error
		switch cmd {
		case cmdRead:
			_, err = io.ReadFull(r, buf)
		case cmdWrite:
			_, err = io.ReadFull(r, buf[:16])
		case cmdMixed:
			// A simple reply (WRITE) is 16 bytes; a chunk's header, 20,
			// ends with the length of what follows.
			_, err = io.ReadFull(r, buf[:16])
			if err == nil && binary.BigEndian.Uint32(buf) == magicStructuredReply {
				_, err = io.ReadFull(r, buf[16:20])
				if err == nil {
					_, err = io.ReadFull(r, buf[20:20+binary.BigEndian.Uint32(buf[16:20])])
				}
			}
		}
		if err != nil {
			return err
		}
		if slots != nil {
			<-slots
		}
	}
	return nil
}
