//go:build !linux

package cdp

// newSlab returns chunk buffers from the Go heap (no huge pages here).
func newSlab() [][]byte { return heapChunks() }
