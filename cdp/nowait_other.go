//go:build !linux

package cdp

import "errors"

// preadNoWait is Linux's preadv2 with RWF_NOWAIT; elsewhere every read may
// block, so none is made.
func preadNoWait(fd uintptr, p []byte, off int64) (int, error) { return 0, errors.ErrUnsupported }
