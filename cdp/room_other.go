//go:build !linux

package cdp

import "github.com/cockroachdb/pebble/v2/vfs"

// releaseRoom does nothing here: reserved room stays until the segment is
// removed.
func releaseRoom(vfs.File) {}
