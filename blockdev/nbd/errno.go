package nbd

import (
	"errors"
	"strings"
	"syscall"

	"github.com/strata-storage/strata/blockdev"
)

// errnoOf maps a device error to the NBD errno that goes on the wire. write
// is true for WRITE and WRITE_ZEROES, where the spec wants ENOSPC for a range
// past the end. expected is false for errors worth logging (the client did
// nothing wrong).
func errnoOf(err error, write bool) (errno uint32, expected bool) {
	switch {
	case errors.Is(err, blockdev.ErrOutOfRange):
		if write {
			return errnoNoSpc, true
		}
		return errnoInval, true
	case errors.Is(err, blockdev.ErrInvalid):
		return errnoInval, true
	case errors.Is(err, blockdev.ErrReadOnly):
		return errnoPerm, true
	case errors.Is(err, blockdev.ErrNotSupported):
		return errnoNotSup, true
	case errors.Is(err, blockdev.ErrNoSpace),
		// The spec asks for EDQUOT and EFBIG to be reported as ENOSPC.
		errors.Is(err, syscall.ENOSPC),
		errors.Is(err, syscall.EDQUOT),
		errors.Is(err, syscall.EFBIG):
		return errnoNoSpc, false
	case errors.Is(err, blockdev.ErrGone):
		return errnoShutdown, false
	}
	return errnoIO, false
}

// shortMessage makes an error string fit an error chunk: at most
// maxErrorMessage bytes of valid UTF-8 without NUL.
func shortMessage(s string) string {
	if len(s) > maxErrorMessage {
		s = s[:maxErrorMessage]
	}
	s = strings.ToValidUTF8(s, "")
	return strings.ReplaceAll(s, "\x00", "")
}
