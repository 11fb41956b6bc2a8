//go:build unix

package nbd

import "syscall"

const canReadNonblock = true

func readNonblock(fd uintptr, p []byte) (int, error) { return syscall.Read(int(fd), p) }
