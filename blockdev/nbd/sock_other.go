//go:build !unix

package nbd

import "errors"

// Elsewhere every read in transmission is taken as one that may block.
const canReadNonblock = false

// readNonblock is never called where canReadNonblock is false.
func readNonblock(fd uintptr, p []byte) (int, error) { return 0, errors.ErrUnsupported }
