//go:build !windows

package wsproxy

import (
	"os"
	"syscall"
)

// OpenStdio returns the process's stdin and stdout such that closing stdin
// interrupts a pending read (the descriptors are put in non-blocking mode,
// which Go's poller then handles), so a relay can end while ssh still
// holds the pipe open.
func OpenStdio() (in, out *os.File) {
	return pollable(0, "stdin"), pollable(1, "stdout")
}

func pollable(fd int, name string) *os.File {
	syscall.SetNonblock(fd, true) // on failure the file still works, only uninterruptibly
	return os.NewFile(uintptr(fd), name)
}
