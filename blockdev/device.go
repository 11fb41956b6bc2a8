// Package blockdev owns the device contract that every frontend (the NBD
// server in blockdev/nbd, the ublk frontend in blockdev/ublk) serves, and the
// error classes a device reports. Frontends turn those classes into their
// protocol's errno values at their own boundary; nothing below a frontend
// knows about errno.
package blockdev

import "errors"

// Error classes. Devices wrap them with context (fmt.Errorf("...: %w", err));
// frontends classify with errors.Is.
var (
	// ErrOutOfRange: the request reaches past the end of the device.
	ErrOutOfRange = errors.New("blockdev: request out of range")
	// ErrReadOnly: a write, trim or zero on a read-only device.
	ErrReadOnly = errors.New("blockdev: device is read-only")
	// ErrIO: the data could not be read or written (checksum mismatch,
	// failed journal, failed fsync).
	ErrIO = errors.New("blockdev: I/O error")
	// ErrNoSpace: the pool is out of space.
	ErrNoSpace = errors.New("blockdev: no space left")
	// ErrGone: the device was deleted or its pool shut down while in use.
	ErrGone = errors.New("blockdev: device is gone")
	// ErrNotSupported: the device cannot do this (for example a fast zero
	// that would be slow).
	ErrNotSupported = errors.New("blockdev: operation not supported")
	// ErrNotFound: no device (export) by that name.
	ErrNotFound = errors.New("blockdev: no such device")
	// ErrInvalid: a malformed request (bad flags, bad length).
	ErrInvalid = errors.New("blockdev: invalid request")
	// ErrMoved: the device is served by another host now (a mirror's
	// failover or switchover). A frontend does not answer the request: it
	// closes the connection, so that a client that reconnects (to the
	// floating address) sends the request again where the device is.
	ErrMoved = errors.New("blockdev: device moved to another host")
)

// Device is the contract a frontend serves. All methods are safe for
// concurrent use by many goroutines and many connections.
//
// Durability: a WriteAt, Trim or WriteZeroes that has returned is visible to
// every later ReadAt on any connection, but survives a crash only once a
// later Flush has returned. Flush covers every write that completed before it
// was called, on every connection (NBD's CAN_MULTI_CONN). A frontend
// implements FUA as the write followed by Flush.
//
// Offsets and lengths are in bytes and need no alignment; the device does
// read-modify-write inside its blocks. Requests that reach past Size fail
// with ErrOutOfRange and change nothing.
type Device interface {
	// Size is the current size in bytes. It can change (resize).
	Size() int64
	// ReadAt fills p from off. It returns len(p) or an error, never a short
	// read without one.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed write durable.
	Flush() error
}

// BlockWrite is one write of a batch: Data at Off.
type BlockWrite struct {
	Off  int64
	Data []byte
	// Sums, when not nil, are the CRC32C of each 4 KiB block of Data, in
	// a journal record's table format (cdp.BlockChecksums), already
	// checked against Data by the caller (a replica verifying what it
	// received): a journal takes them instead of computing them again.
	Sums []byte
}

// BatchWriter is a Device that takes several writes at once, applied in
// order as one group (for a journal: one index commit for all of them). A
// frontend hands it writes a client sent back to back. Each write is
// applied whole or not at all, as by WriteAt; after an error, which of them
// were applied is unspecified (a frontend fails all of them).
type BatchWriter interface {
	WriteBatch(ws []BlockWrite) error
}

// Trimmer is a Device that can discard a range: afterwards the range reads
// as zeros and uses no space.
type Trimmer interface {
	Trim(off, length int64) error
}

// FastReader is a Device that can sometimes serve a read from memory without
// blocking. A frontend calls TryReadAt on the goroutine that parses requests,
// so that a read the device has in memory is answered without a goroutine
// handoff; it must therefore return quickly.
//
// TryReadAt fills p from off and returns true only if it could do so without
// blocking on I/O or on locks held for long (memory only: caches). False
// means it did nothing (the caller ignores p, which the device may have
// partly filled) and the caller must use ReadAt. A non-nil error is a real
// read error, the one ReadAt would return for the same request. It is safe
// for concurrent use with every other method.
type FastReader interface {
	TryReadAt(p []byte, off int64) (ok bool, err error)
}

// RefReader is a Device that can serve a read from memory it holds without
// copying it. A frontend calls ReadRefs where it would call TryReadAt (it
// must return as quickly), for reads large enough that the copy matters.
//
// ReadRefs returns the n bytes at off as read-only slices, in order, that
// stay unchanged until release is called; the caller sends them and then
// calls release once. ok false means it holds nothing (release is nil) and
// the caller reads another way; a non-nil error is the read error ReadAt
// would return. It is safe for concurrent use with every other method.
type RefReader interface {
	ReadRefs(off int64, n int) (bufs [][]byte, release func(), ok bool, err error)
}

// WriteWaiter is a Device whose writes may wait long (a synchronous
// mirror's wait for the other host). A frontend that would run a write on
// the goroutine reading requests, because nothing else is in flight, does
// not while WritesWait says true: the requests behind it must not queue
// for it.
type WriteWaiter interface {
	WritesWait() bool
}

// Zeroer is a Device that can zero a range without the caller sending zeros.
// With noHole the range must stay allocated (reads as zeros, reported as
// zero but not as a hole); without it the device may punch a hole.
// Zeroes on a Zeroer are always fast, so NBD's FAST_ZERO never fails.
type Zeroer interface {
	WriteZeroes(off, length int64, noHole bool) error
}

// Extent flags, as NBD's base:allocation context reports them.
const (
	// ExtentHole: the range holds no data of its own (unwritten or trimmed).
	ExtentHole uint32 = 1 << 0
	// ExtentZero: the range reads as zeros.
	ExtentZero uint32 = 1 << 1
)

// Extent is one run of a device's block status.
type Extent struct {
	Length int64
	Flags  uint32
}

// BlockStatuser is a Device that can report which ranges hold data. The
// extents start at off, are contiguous, and cover at most length bytes (they
// may cover less: the caller asks again from where they stop).
type BlockStatuser interface {
	BlockStatus(off, length int64) ([]Extent, error)
}
