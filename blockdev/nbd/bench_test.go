package nbd

import (
	"encoding/binary"
	"io"
	"testing"
)

// BenchmarkRead measures pipelined 4 KiB structured READs over a Unix
// socket; allocs/op is (nearly all) the server's per-request cost.
func BenchmarkRead(b *testing.B) {
	benchmarkCmd(b, cmdRead, 4096)
}

// BenchmarkWrite is the same for 4 KiB WRITEs.
func BenchmarkWrite(b *testing.B) {
	benchmarkCmd(b, cmdWrite, 4096)
}

func benchmarkCmd(b *testing.B, cmd uint16, n uint32) {
	x := newMemExporter()
	x.add("vol", newMemDev(64<<20), "")
	ts := startServer(b, x, Options{})
	c := dial(b, ts)
	c.negotiate("vol", true, false)
	req := make([]byte, 28, 28+n)
	binary.BigEndian.PutUint32(req, magicRequest)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint32(req[24:], n)
	if cmd == cmdWrite {
		req = req[:28+n]
	}
	replyLen := 16
	if cmd == cmdRead {
		replyLen = 20 + 8 + int(n)
	}
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, replyLen)
		for range b.N {
			if _, err := io.ReadFull(c.br, buf); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	b.SetBytes(int64(n))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		binary.BigEndian.PutUint64(req[16:], uint64(i%4096)*4096)
		if _, err := c.nc.Write(req); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
