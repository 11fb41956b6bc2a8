// Package ublk owns Strata's ublk frontend: it serves a blockdev.Device as a
// Linux ublk block device (/dev/ublkbN) through github.com/semistrict/go-ublk.
// Kernel requests (read, write, flush, discard, write zeroes, FUA) map onto
// the same device contract the NBD server uses, so durability and
// point-in-time behaviour are identical; device errors become errno values
// here, at this boundary, and nowhere else.
package ublk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"

	goublk "github.com/semistrict/go-ublk"

	"github.com/strata-storage/strata/blockdev"
)

// ErrUnavailable: this kernel cannot serve ublk devices.
var ErrUnavailable = errors.New("ublk: not available")

// controlPath is the ublk driver's control device.
var controlPath = "/dev/ublk-control"

// Available reports, as an error that says what is missing and what to do,
// why ublk cannot be used here (nil if it can).
func Available() error {
	if _, err := os.Stat(controlPath); err != nil {
		return fmt.Errorf("%w: %s is missing: the kernel needs the ublk driver (Linux 6.0 or newer: modprobe ublk_drv); "+
			"without it, use NBD: strata attach VOL (kernel nbd module) or nbdfuse + losetup", ErrUnavailable, controlPath)
	}
	return nil
}

// request is what the mapping needs from a kernel request: go-ublk's, or a
// fake queue's in tests.
type request interface {
	op() goublk.IOOp
	flags() uint32
	offset() int64
	length() int
	ReadData(buf []byte) (int, error)  // the data of a write
	WriteData(buf []byte) (int, error) // the answer to a read
}

type kernelRequest struct{ *goublk.Request }

func (r kernelRequest) op() goublk.IOOp { return r.Op }
func (r kernelRequest) flags() uint32   { return r.Flags }
func (r kernelRequest) offset() int64   { return int64(r.StartSector) * 512 }
func (r kernelRequest) length() int     { return int(r.NrSectors) * 512 }

// Handler maps ublk requests onto a device. Safe for concurrent use by every
// queue.
type Handler struct {
	dev  blockdev.Device
	bufs sync.Pool
}

// NewHandler returns the handler serving dev.
func NewHandler(dev blockdev.Device) *Handler { return &Handler{dev: dev} }

// HandleIO implements go-ublk's Handler.
func (h *Handler) HandleIO(r *goublk.Request) error { return h.handle(kernelRequest{r}) }

func (h *Handler) buf(n int) *[]byte {
	b, _ := h.bufs.Get().(*[]byte)
	if b == nil || cap(*b) < n {
		s := make([]byte, n)
		b = &s
	}
	*b = (*b)[:n]
	return b
}

func (h *Handler) handle(r request) error {
	off, n := r.offset(), r.length()
	fua := r.flags()&goublk.IOFlagFUA != 0
	switch r.op() {
	case goublk.OpRead:
		b := h.buf(n)
		defer h.bufs.Put(b)
		if _, err := h.dev.ReadAt(*b, off); err != nil {
			return errnoOf(err)
		}
		if _, err := r.WriteData(*b); err != nil {
			return syscall.EIO
		}
		return nil
	case goublk.OpWrite:
		b := h.buf(n)
		defer h.bufs.Put(b)
		if _, err := r.ReadData(*b); err != nil {
			return syscall.EIO
		}
		if _, err := h.dev.WriteAt(*b, off); err != nil {
			return errnoOf(err)
		}
	case goublk.OpFlush:
		return errnoOf(h.dev.Flush())
	case goublk.OpDiscard:
		t, ok := h.dev.(blockdev.Trimmer)
		if !ok {
			return syscall.EOPNOTSUPP
		}
		if err := t.Trim(off, int64(n)); err != nil {
			return errnoOf(err)
		}
	case goublk.OpWriteZeroes:
		z, ok := h.dev.(blockdev.Zeroer)
		if !ok {
			return syscall.EOPNOTSUPP
		}
		if err := z.WriteZeroes(off, int64(n), r.flags()&goublk.IOFlagNoUnmap != 0); err != nil {
			return errnoOf(err)
		}
	default:
		return syscall.EOPNOTSUPP
	}
	if fua {
		// FUA: the write is durable before it completes.
		return errnoOf(h.dev.Flush())
	}
	return nil
}

// errnoOf turns device error classes into the errno the kernel reports.
func errnoOf(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, blockdev.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, blockdev.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, blockdev.ErrOutOfRange), errors.Is(err, blockdev.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, blockdev.ErrNotSupported):
		return syscall.EOPNOTSUPP
	case errors.Is(err, blockdev.ErrGone):
		return syscall.ENODEV
	}
	return syscall.EIO
}

// Options configure a ublk device.
type Options struct {
	Queues     uint16 // default: one per CPU
	QueueDepth uint16 // default 128
	ReadOnly   bool
}

// maxIO is the largest request (the kernel splits larger ones).
const maxIO = 512 << 10

// Serve creates a ublk block device for dev and serves it until ctx is
// done; ready receives the block device path once it exists. It fails at
// once, saying what is missing, where the kernel has no ublk.
func Serve(ctx context.Context, dev blockdev.Device, opts Options, ready func(path string)) error {
	if err := Available(); err != nil {
		return err
	}
	if opts.Queues == 0 {
		opts.Queues = uint16(max(1, min(runtime.NumCPU(), 64)))
	}
	if opts.QueueDepth == 0 {
		opts.QueueDepth = 128
	}
	d, err := goublk.NewDevice(goublk.DeviceOptions{Queues: opts.Queues, QueueDepth: opts.QueueDepth, MaxIOBufBytes: maxIO})
	if err != nil {
		return fmt.Errorf("ublk: create device: %w", err)
	}
	defer d.Delete()
	attrs := uint32(goublk.AttrVolatileCache | goublk.AttrFUA)
	if opts.ReadOnly {
		attrs |= goublk.AttrReadOnly
	}
	params := &goublk.Params{
		Types: goublk.ParamTypeBasic | goublk.ParamTypeDiscard,
		Basic: goublk.ParamBasic{Attrs: attrs, LogicalBSShift: 9, PhysicalBSShift: 12, IOOptShift: 12, IOMinShift: 9,
			MaxSectors: maxIO / 512, DevSectors: uint64(dev.Size() / 512)},
		Discard: goublk.ParamDiscard{DiscardGranularity: 4096, MaxDiscardSectors: 1 << 22, MaxWriteZeroesSectors: 1 << 22, MaxDiscardSegments: 1},
	}
	if err := d.SetParams(params); err != nil {
		return fmt.Errorf("ublk: set parameters: %w", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- d.Serve(NewHandler(dev)) }()
	if ready != nil {
		ready(d.BlockDevPath())
	}
	select {
	case <-ctx.Done():
		d.Stop()
		<-errc
		return nil
	case err := <-errc:
		return err
	}
}
