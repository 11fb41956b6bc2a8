package ublk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	goublk "github.com/semistrict/go-ublk"

	"github.com/strata-storage/strata/blockdev"
)

// recDevice is a memory device that records the calls made on it, in order.
type recDevice struct {
	data  []byte
	calls []string
	err   error // returned by every call when set
}

func (d *recDevice) Size() int64 { return int64(len(d.data)) }
func (d *recDevice) ReadAt(p []byte, off int64) (int, error) {
	d.calls = append(d.calls, fmt.Sprintf("read %d+%d", off, len(p)))
	if d.err != nil {
		return 0, d.err
	}
	return copy(p, d.data[off:]), nil
}
func (d *recDevice) WriteAt(p []byte, off int64) (int, error) {
	d.calls = append(d.calls, fmt.Sprintf("write %d+%d", off, len(p)))
	if d.err != nil {
		return 0, d.err
	}
	return copy(d.data[off:], p), nil
}
func (d *recDevice) Flush() error { d.calls = append(d.calls, "flush"); return d.err }
func (d *recDevice) Trim(off, n int64) error {
	d.calls = append(d.calls, fmt.Sprintf("trim %d+%d", off, n))
	return d.err
}
func (d *recDevice) WriteZeroes(off, n int64, noHole bool) error {
	d.calls = append(d.calls, fmt.Sprintf("zero %d+%d nohole=%v", off, n, noHole))
	return d.err
}

// fakeReq is one request of a fake queue: its data buffer is a slice.
type fakeReq struct {
	o       goublk.IOOp
	f       uint32
	sector  uint64
	sectors uint32
	in, out []byte // data of a write; answer to a read
}

func (r *fakeReq) op() goublk.IOOp { return r.o }
func (r *fakeReq) flags() uint32   { return r.f }
func (r *fakeReq) offset() int64   { return int64(r.sector) * 512 }
func (r *fakeReq) length() int     { return int(r.sectors) * 512 }
func (r *fakeReq) ReadData(b []byte) (int, error) {
	return copy(b, r.in), nil
}
func (r *fakeReq) WriteData(b []byte) (int, error) {
	r.out = append([]byte(nil), b...)
	return len(b), nil
}

func TestMapping(t *testing.T) {
	for _, tc := range []struct {
		name  string
		req   fakeReq
		calls string
	}{
		{"read", fakeReq{o: goublk.OpRead, sector: 8, sectors: 8}, "read 4096+4096"},
		{"write", fakeReq{o: goublk.OpWrite, sector: 16, sectors: 1, in: bytes.Repeat([]byte{7}, 512)}, "write 8192+512"},
		{"write fua", fakeReq{o: goublk.OpWrite, f: goublk.IOFlagFUA, sector: 0, sectors: 8, in: make([]byte, 4096)}, "write 0+4096,flush"},
		{"flush", fakeReq{o: goublk.OpFlush}, "flush"},
		{"discard", fakeReq{o: goublk.OpDiscard, sector: 8, sectors: 16}, "trim 4096+8192"},
		{"write zeroes", fakeReq{o: goublk.OpWriteZeroes, sector: 0, sectors: 8}, "zero 0+4096 nohole=false"},
		{"write zeroes no unmap", fakeReq{o: goublk.OpWriteZeroes, f: goublk.IOFlagNoUnmap, sector: 0, sectors: 8}, "zero 0+4096 nohole=true"},
		{"write zeroes fua", fakeReq{o: goublk.OpWriteZeroes, f: goublk.IOFlagFUA, sector: 0, sectors: 8}, "zero 0+4096 nohole=false,flush"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := &recDevice{data: bytes.Repeat([]byte{3}, 1<<20)}
			h := NewHandler(dev)
			req := tc.req
			if err := h.handle(&req); err != nil {
				t.Fatalf("handle: %v", err)
			}
			if got := strings.Join(dev.calls, ","); got != tc.calls {
				t.Fatalf("device calls %q, want %q", got, tc.calls)
			}
			if req.o == goublk.OpRead && !bytes.Equal(req.out, bytes.Repeat([]byte{3}, 4096)) {
				t.Fatal("read answered other data")
			}
			if req.o == goublk.OpWrite && !bytes.Equal(dev.data[req.offset():req.offset()+int64(req.length())], req.in) {
				t.Fatal("write did not reach the device")
			}
		})
	}
}

func TestErrnos(t *testing.T) {
	for err, want := range map[error]syscall.Errno{
		fmt.Errorf("x: %w", blockdev.ErrReadOnly):     syscall.EROFS,
		fmt.Errorf("x: %w", blockdev.ErrNoSpace):      syscall.ENOSPC,
		fmt.Errorf("x: %w", blockdev.ErrOutOfRange):   syscall.EINVAL,
		fmt.Errorf("x: %w", blockdev.ErrGone):         syscall.ENODEV,
		fmt.Errorf("x: %w", blockdev.ErrNotSupported): syscall.EOPNOTSUPP,
		errors.New("disk on fire"):                    syscall.EIO,
	} {
		dev := &recDevice{data: make([]byte, 1<<20), err: err}
		req := fakeReq{o: goublk.OpWrite, sectors: 8, in: make([]byte, 4096)}
		if got := NewHandler(dev).handle(&req); got != want {
			t.Errorf("%v: errno %v, want %v", err, got, want)
		}
	}
	// A failed write is not followed by a flush, even with FUA.
	dev := &recDevice{data: make([]byte, 1<<20), err: blockdev.ErrNoSpace}
	req := fakeReq{o: goublk.OpWrite, f: goublk.IOFlagFUA, sectors: 8, in: make([]byte, 4096)}
	NewHandler(dev).handle(&req)
	if strings.Contains(strings.Join(dev.calls, ","), "flush") {
		t.Fatalf("flush after a failed write: %v", dev.calls)
	}
	// Operations the device cannot do.
	if err := NewHandler(&recDevice{data: make([]byte, 4096)}).handle(&fakeReq{o: goublk.OpZoneOpen}); err != syscall.EOPNOTSUPP {
		t.Fatalf("zone open: %v", err)
	}
}

// Where the kernel has no ublk driver, serving fails at once and says what
// is missing and what to do instead.
func TestUnavailable(t *testing.T) {
	old := controlPath
	controlPath = filepath.Join(t.TempDir(), "no-ublk-control")
	defer func() { controlPath = old }()
	err := Serve(context.Background(), &recDevice{data: make([]byte, 1<<20)}, Options{}, nil)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "modprobe ublk_drv") || !strings.Contains(err.Error(), "NBD") {
		t.Fatalf("want ErrUnavailable naming the module and NBD, got %v", err)
	}
}

// TestServeReal runs a device where the kernel has ublk.
func TestServeReal(t *testing.T) {
	if err := Available(); err != nil {
		t.Skipf("no ublk here: %v", err)
	}
	dev := &recDevice{data: make([]byte, 16<<20)}
	ctx, cancel := context.WithCancel(context.Background())
	paths := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, dev, Options{Queues: 1}, func(p string) { paths <- p }) }()
	select {
	case p := <-paths:
		t.Logf("serving %s", p)
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
